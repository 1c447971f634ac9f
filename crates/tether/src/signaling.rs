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
    /// signaling is open to anyone (see docs/SECURITY.md).
    #[arg(long, value_name = "FILE")]
    pub auth: Option<std::path::PathBuf>,
    /// Most TCP connections open at once (default: three quarters of the
    /// open-files limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Most unanswered calls per host at once; more are refused with
    /// RESOURCE_EXHAUSTED (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = tether_signaling::DEFAULT_MAX_PENDING_PER_HOST)]
    pub max_pending_per_host: usize,
    /// Most calls in progress per caller address (IPv4 address or IPv6 /64) at
    /// once; more are refused with RESOURCE_EXHAUSTED (0 = unlimited; raise it
    /// behind a proxy, where every caller has the proxy's address).
    #[arg(long, value_name = "N", default_value_t = tether_signaling::DEFAULT_MAX_PENDING_PER_ADDRESS)]
    pub max_pending_per_address: usize,
    /// Serve Prometheus metrics at GET /metrics on this ip:port.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

/// Audience of the access tokens minted by a standalone signaler.
const AUDIENCE: &str = "tether-signaling";

/// `--auth` file: `{"keys":[{"id":"…","key":"…","call":["bot"],"answer":["bot"]}],
/// "rate_limit_per_minute":60,"max_pending_per_host":8,"max_pending_per_address":16}`;
/// the limits given here replace the command line's.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    keys: Vec<AuthKey>,
    #[serde(default)]
    rate_limit_per_minute: Option<u32>,
    #[serde(default)]
    max_pending_per_host: Option<usize>,
    #[serde(default)]
    max_pending_per_address: Option<usize>,
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

/// `0` = unlimited.
fn cap(n: usize) -> Option<usize> {
    (n > 0).then_some(n)
}

fn load_auth(path: &std::path::Path, limits: CallLimits) -> anyhow::Result<SignalingAuth> {
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
    let mut limits = limits.with_rate_per_minute(file.rate_limit_per_minute);
    if let Some(n) = file.max_pending_per_host {
        limits = limits.with_max_pending_per_host(cap(n));
    }
    if let Some(n) = file.max_pending_per_address {
        limits = limits.with_max_pending_per_address(cap(n));
    }
    Ok(SignalingAuth { authority: Arc::new(Authority::new(AUDIENCE, keys)), grants, limits })
}

fn ice_server(url: &str) -> tether_proto::proto::rpc::webrtc::v1::IceServer {
    (&tether_transport::webrtc::peer::IceServer::parse(url)).into()
}

/// The warning for a signaler without `--auth` listening on `addr` (`None`
/// on a loopback address, which only this host can reach).
fn open_warning(addr: std::net::SocketAddr) -> Option<String> {
    if addr.ip().is_loopback() {
        return None;
    }
    Some(format!(
        "signaling on {addr} is open (no --auth): anyone who can reach it can call every machine answering \
         here and can register Answer streams for any host name, receiving the offers meant for that machine; \
         give it --auth FILE (see docs/SECURITY.md)"
    ))
}

pub(crate) async fn run(args: SignalingArgs) -> anyhow::Result<ExitCode> {
    // Before anything opens files: the connection cap is derived from it.
    tether_transport::limits::raise_nofile().context("reading the open-files limit")?;
    let limits = CallLimits::default()
        .with_max_pending_per_host(cap(args.max_pending_per_host))
        .with_max_pending_per_address(cap(args.max_pending_per_address));
    let auth = args.auth.as_deref().map(|path| load_auth(path, limits)).transpose()?;
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
    } else {
        builder = builder.call_limits(limits);
    }
    let signaling = builder.build();
    let server_metrics = tether_transport::metrics::ServerMetrics::default();
    let mut registry = tether_transport::metrics::prometheus_client::registry::Registry::default();
    signaling.register_metrics(&mut registry);
    server_metrics.register(&mut registry);
    let mut routes = tonic::service::Routes::new(
        signaling
            .into_service()
            .max_decoding_message_size(tether_transport::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(tether_transport::MAX_MESSAGE_SIZE),
    );
    let authority = auth.map(|a| a.authority);
    let open = authority.is_none();
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
    if let Some(warning) = open_warning(local).filter(|_| open) {
        tracing::warn!("{warning}");
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    // Before "listening on": whoever waits for that line can scrape at once.
    if let Some(addr) = &args.metrics_listen {
        crate::metrics::serve(addr, registry, shutdown.clone()).await?;
    }
    println!("listening on {local}");
    let options = ServeOptions::default()
        .with_max_connections(args.max_connections.map(|n| n as usize))
        .with_metrics(server_metrics);
    tether_transport::server::serve(listener, svc, options, shutdown).await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_signaler_warns_off_loopback() {
        let warn = |a: &str| open_warning(a.parse().unwrap());
        assert_eq!(warn("127.0.0.1:8081"), None);
        assert_eq!(warn("[::1]:8081"), None);
        for a in ["0.0.0.0:8081", "192.168.1.5:8081", "[::]:8081"] {
            let w = warn(a).unwrap_or_else(|| panic!("no warning for {a}"));
            assert!(w.contains("open (no --auth)") && w.contains(&a.to_string()), "{w}");
        }
    }

    #[test]
    fn auth_file_limits_replace_the_command_lines() {
        let cli = CallLimits::default().with_max_pending_per_address(Some(5));
        let file = temp(r#"{"keys": [], "max_pending_per_host": 0}"#);
        let auth = load_auth(file.path(), cli).unwrap();
        assert_eq!(auth.limits.max_pending_per_host, None);
        assert_eq!(auth.limits.max_pending_per_address, Some(5));
        let file = temp(r#"{"keys": [], "max_pending_per_address": 7, "rate_limit_per_minute": 60}"#);
        let auth = load_auth(file.path(), cli).unwrap();
        assert_eq!(auth.limits.max_pending_per_address, Some(7));
        assert_eq!(auth.limits.max_pending_per_host, Some(tether_signaling::DEFAULT_MAX_PENDING_PER_HOST));
        assert_eq!(auth.limits.rate_per_minute, Some(60));
    }

    fn temp(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }
}
