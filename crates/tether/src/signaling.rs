//! `tether signaling`: a standalone signaling service; with `--redis`, one of
//! many instances sharing their call queue through Redis (see
//! docs/signaling-redis.md).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tether_signaling::{
    CallLimits, CallQueue, KeyGrants, MemoryQueue, RedisQueue, RedisQueueOptions, SignalingServer, TurnRestConfig,
};
use tether_transport::auth::{ApiKey, AuthLayer, AuthServer, Authority};
use tether_transport::server::ServeOptions;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub(crate) struct SignalingArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8081")]
    pub listen: String,
    /// STUN/TURN URL handed to callers (repeatable); `turn:user:pass@host:port` for credentials.
    #[arg(long = "ice-server", value_name = "URL")]
    pub ice_servers: Vec<String>,
    /// TURN URL whose credentials are derived from --turn-secret (repeatable).
    #[arg(long = "turn", value_name = "URL")]
    pub turn: Vec<String>,
    /// The secret shared with the TURN server (coturn `static-auth-secret`).
    #[arg(long, value_name = "SECRET")]
    pub turn_secret: Option<String>,
    /// Share the call queue with other instances through this Redis
    /// (`redis://[user:pass@]host[:port][/db]`); without it the queue is in memory.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// This instance's unique id among those sharing the Redis (default: hostname + random suffix).
    #[arg(long, value_name = "ID", requires = "redis")]
    pub instance_id: Option<String>,
    /// Require authentication: JSON file with API keys and the hosts each may
    /// call / answer for, plus call limits (see [`AuthFile`]). Without it
    /// signaling is open to anyone.
    #[arg(long, value_name = "FILE")]
    pub auth: Option<std::path::PathBuf>,
    /// Most TCP connections open at once (default: three quarters of the
    /// open-files limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
}

/// Audience of the access tokens minted by a standalone signaler.
const AUDIENCE: &str = "tether-signaling";

/// `--auth` file: `{"keys":[{"id":"…","key":"…","call":["bot"],"answer":["bot"]}],
/// "rate_limit_per_minute":60,"max_pending_per_host":8}`.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    keys: Vec<AuthKey>,
    #[serde(default)]
    rate_limit_per_minute: Option<u32>,
    #[serde(default)]
    max_pending_per_host: Option<usize>,
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AuthKey {
    id: String,
    key: String,
    #[serde(default)]
    call: Vec<String>,
    #[serde(default)]
    answer: Vec<String>,
}

struct SignalingAuth {
    authority: Arc<Authority>,
    grants: KeyGrants,
    limits: CallLimits,
}

fn load_auth(path: &std::path::Path) -> anyhow::Result<SignalingAuth> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--auth {}", path.display()))?;
    let file: AuthFile = serde_json::from_str(&text).with_context(|| format!("--auth {}", path.display()))?;
    let mut grants = KeyGrants::new();
    let mut keys = Vec::with_capacity(file.keys.len());
    let mut seen = std::collections::HashSet::new();
    for k in file.keys {
        anyhow::ensure!(!k.id.is_empty() && !k.key.is_empty(), "--auth: keys need a non-empty id and key");
        anyhow::ensure!(seen.insert(k.id.clone()), "--auth: duplicate key id {:?}", k.id);
        grants = grants.grant_call(k.id.clone(), k.call).grant_answer(k.id.clone(), k.answer);
        keys.push(ApiKey { id: k.id, key: k.key });
    }
    let limits = CallLimits::default()
        .with_rate_per_minute(file.rate_limit_per_minute)
        .with_max_pending_per_host(file.max_pending_per_host);
    Ok(SignalingAuth { authority: Arc::new(Authority::new(AUDIENCE, keys)), grants, limits })
}

fn ice_server(url: &str) -> tether_proto::proto::rpc::webrtc::v1::IceServer {
    (&tether_transport::webrtc::peer::IceServer::parse(url)).into()
}

pub(crate) async fn run(args: SignalingArgs) -> anyhow::Result<ExitCode> {
    // Before anything opens files: the connection cap is derived from it.
    tether_transport::limits::raise_nofile().context("reading the open-files limit")?;
    let auth = args.auth.as_deref().map(load_auth).transpose()?;
    let queue: Arc<dyn CallQueue> = match &args.redis {
        Some(url) => {
            let mut options = RedisQueueOptions::default();
            if let Some(id) = &args.instance_id {
                options.instance_id = id.clone();
            }
            let queue = RedisQueue::connect(url, options).await.context("--redis")?;
            tracing::info!(instance = queue.instance_id(), "call queue in redis");
            Arc::new(queue)
        }
        None => Arc::new(MemoryQueue::new()),
    };
    let mut builder = SignalingServer::builder(queue).ice_servers(args.ice_servers.iter().map(|u| ice_server(u)));
    match (&args.turn_secret, args.turn.is_empty()) {
        (Some(secret), false) => builder = builder.turn(TurnRestConfig::new(args.turn.clone(), secret.clone())),
        (None, false) => anyhow::bail!("--turn needs --turn-secret"),
        _ => {}
    }
    if let Some(auth) = &auth {
        // Vouch for each authenticated caller to the machine, with a key
        // derived from the answering machine's own API key secret.
        let authority = auth.authority.clone();
        builder = builder
            .authorizer(Arc::new(auth.grants.clone()))
            .call_limits(auth.limits)
            .vouch_keys(Arc::new(move |answerer: &str| authority.vouch_key(answerer)));
        tracing::info!(limits = ?auth.limits, "signaling requires authentication (--auth)");
    }
    let signaling = builder.build();
    let mut routes = tonic::service::Routes::new(
        signaling
            .into_service()
            .max_decoding_message_size(tether_transport::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(tether_transport::MAX_MESSAGE_SIZE),
    );
    let authority = auth.map(|a| a.authority);
    if let Some(authority) = &authority {
        routes = routes.add_service(AuthServer::new(authority.clone()).into_service());
    }
    let svc = tower::ServiceBuilder::new()
        .layer(tether_transport::grpc::StatusHygieneLayer)
        .layer(AuthLayer::new(authority))
        .service(routes);
    let svc = tether_transport::server::grpc_web(tower::util::BoxCloneSyncService::new(svc));
    let listener = tether_transport::server::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "signaling service (gRPC and gRPC-Web)");
    println!("listening on {local}");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    let options = ServeOptions::default().with_max_connections(args.max_connections.map(|n| n as usize));
    tether_transport::server::serve(listener, svc, options, shutdown).await;
    Ok(ExitCode::SUCCESS)
}
