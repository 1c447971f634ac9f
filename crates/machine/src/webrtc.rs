//! WebRTC for a machine: the embedded signaling service (on the machine's own
//! port, answering only for the machine's own names) and the answerers that
//! hold `Answer` streams to it and to any external signaling services.

use std::net::SocketAddr;
use std::sync::Arc;

use tether_proto::proto::rpc::webrtc::v1 as pb;
use tether_signaling::{Authorizer, HostAllowList, MAX_HOSTS, MemoryQueue, Role, SignalingServer, TurnRestConfig};
use tether_transport::auth::AuthEntity;
use tether_transport::dial::Credentials;
use tether_transport::identity::VouchKey;
use tether_transport::server::HttpService;
use tether_transport::webrtc::answerer::{self, AnswererConfig, PeerEvents};
use tether_transport::webrtc::peer::{IceServer, PeerOptions};
use tokio_util::sync::CancellationToken;

/// WebRTC settings of a machine.
#[derive(Clone, Debug)]
pub struct WebRtcSettings {
    /// Answer WebRTC calls at all.
    pub enabled: bool,
    /// Names this machine answers for (besides every `ip:port` it listens
    /// on); default: the system host name.
    pub hosts: Vec<String>,
    /// External signaling services to hold `Answer` streams to.
    pub signaling: Vec<String>,
    /// ICE servers the machine gathers with (STUN for a server-reflexive
    /// candidate).
    pub ice_servers: Vec<IceServer>,
    /// ICE servers the embedded signaler hands to callers.
    pub caller_ice_servers: Vec<IceServer>,
    /// TURN servers with shared-secret credentials handed to callers.
    pub turn: Option<TurnRestConfig>,
    /// The machine's API key at the external signaling services: it
    /// authenticates the answerers there and verifies the services' caller
    /// assertions (see [`tether_transport::identity`]).
    pub signaling_credentials: Option<Credentials>,
}

impl Default for WebRtcSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            hosts: vec![system_host_name()],
            signaling: Vec::new(),
            ice_servers: vec![IceServer::url(tether_transport::webrtc::peer::DEFAULT_STUN)],
            caller_ice_servers: Vec::new(),
            turn: None,
            signaling_credentials: None,
        }
    }
}

/// The system's host name (`localhost` if unknown).
pub fn system_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Every `ip:port` a listener on `local` can be reached at.
pub fn listen_hosts(local: SocketAddr) -> Vec<String> {
    if !local.ip().is_unspecified() {
        return vec![local.to_string()];
    }
    let mut hosts: Vec<String> = if_addrs::get_if_addrs()
        .map(|ifs| {
            ifs.into_iter()
                .filter(|i| i.ip().is_ipv4())
                .map(|i| SocketAddr::new(i.ip(), local.port()).to_string())
                .collect()
        })
        .unwrap_or_default();
    if hosts.is_empty() {
        hosts.push(SocketAddr::from(([127, 0, 0, 1], local.port())).to_string());
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The machine's WebRTC state.
pub struct WebRtc {
    pub(crate) settings: WebRtcSettings,
    pub(crate) allowed: HostAllowList,
    pub(crate) signaling: SignalingServer,
    pub(crate) stats: Arc<answerer::AnswererStats>,
    /// Signs (embedded signaler) and verifies (own answerers) caller
    /// assertions between the machine's two halves.
    internal_vouch: VouchKey,
}

/// Entity of the machine's own answerers at its embedded signaler.
pub(crate) const INTERNAL_ANSWERER: &str = "machine:answerer";

/// On a machine with auth, only the machine's own answerers may answer at
/// its embedded signaler (otherwise any key holder could take its calls).
struct EmbeddedAuthorizer;

#[async_trait::async_trait]
impl Authorizer for EmbeddedAuthorizer {
    async fn authorize(&self, entity: Option<&AuthEntity>, host: &str, role: Role) -> Result<(), tonic::Status> {
        match (role, entity) {
            (Role::Answerer, Some(AuthEntity(e))) if e != INTERNAL_ANSWERER => {
                Err(tonic::Status::permission_denied(format!("{e:?} may not answer for host {host:?}")))
            }
            _ => Ok(()),
        }
    }
}

impl std::fmt::Debug for WebRtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtc").field("settings", &self.settings).field("hosts", &self.allowed.hosts()).finish()
    }
}

impl WebRtc {
    pub(crate) fn new(settings: WebRtcSettings) -> Self {
        let allowed = HostAllowList::new(Vec::<String>::new());
        let internal_vouch = VouchKey::random();
        let vouch = internal_vouch.clone();
        let mut builder = SignalingServer::builder(Arc::new(MemoryQueue::new()))
            .allowed_hosts(allowed.clone())
            .ice_servers(settings.caller_ice_servers.iter().map(pb::IceServer::from))
            .authorizer(Arc::new(EmbeddedAuthorizer))
            .vouch_keys(Arc::new(move |answerer: &str| (answerer == INTERNAL_ANSWERER).then(|| vouch.clone())));
        if let Some(turn) = &settings.turn {
            builder = builder.turn(turn.clone());
        }
        Self { signaling: builder.build(), allowed, settings, stats: Arc::default(), internal_vouch }
    }

    /// Starts the answerers for a listener on `local`.
    pub(crate) fn start(
        &self,
        local: SocketAddr,
        tls: bool,
        token: Option<String>,
        svc: HttpService,
        events: PeerEvents,
        shutdown: CancellationToken,
    ) {
        if !self.settings.enabled {
            return;
        }
        let mut hosts = self.settings.hosts.clone();
        hosts.extend(listen_hosts(local));
        hosts.dedup();
        self.allowed.replace(hosts.clone());
        let entity = Some(self.settings.hosts.join(":"));
        // With auth on, every WebRTC caller must be one the signaler
        // authenticated and vouched for.
        let require_vouched = token.is_some();
        let peer = PeerOptions { ice_servers: self.settings.ice_servers.clone(), ..Default::default() };
        let loopback =
            if local.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], local.port())) } else { local };
        let scheme = if tls { "https" } else { "http" };
        // The embedded signaler; one answerer group per five names (the
        // protocol's limit per Answer stream).
        for group in hosts.chunks(MAX_HOSTS) {
            let mut config = AnswererConfig::new(format!("{scheme}://{loopback}"), group.to_vec());
            config.token = token.clone();
            config.peer = peer.clone();
            config.entity = entity.clone();
            config.vouch = Some(self.internal_vouch.clone());
            config.require_vouched = require_vouched;
            config.stats = self.stats.clone();
            answerer::spawn(config, svc.clone(), events.clone(), shutdown.clone());
        }
        for url in &self.settings.signaling {
            for group in self.settings.hosts.chunks(MAX_HOSTS) {
                let mut config = AnswererConfig::new(url.clone(), group.to_vec());
                config.peer = peer.clone();
                config.entity = entity.clone();
                config.credentials = self.settings.signaling_credentials.clone();
                config.require_vouched = require_vouched;
                config.stats = self.stats.clone();
                answerer::spawn(config, svc.clone(), events.clone(), shutdown.clone());
            }
        }
        tracing::info!(hosts = ?hosts, external = ?self.settings.signaling, "answering WebRTC calls");
    }
}
