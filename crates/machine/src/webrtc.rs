//! WebRTC for a machine: the embedded signaling service (on the machine's own
//! port, for the machine's own names only), the in-process answerer that
//! takes its offers straight from its call queue, and the answerers that hold
//! `Answer` streams to any external signaling services.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tether_proto::proto::rpc::webrtc::v1 as pb;
use tether_signaling::answerer::{self, AnswererConfig, PeerEvents, RemoteSignaler, RemoteStatus};
use tether_signaling::slots::{ConnectionSlots, InUse};
use tether_signaling::{HostAllowList, MAX_HOSTS, MemoryQueue, SignalingServer, TurnRestConfig};
use tether_transport::dial::Credentials;
use tether_transport::server::HttpService;
use tether_transport::webrtc::peer::{IceServer, PeerOptions, TurnOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// WebRTC settings of a machine.
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// Extra CA certificate (PEM) for `https://` external signaling services
    /// (besides the web PKI roots).
    pub signaling_ca_pem: Option<Vec<u8>>,
    /// Most WebRTC connections at once (`None`: no limit); see
    /// [`tether_signaling::slots`].
    pub max_connections: Option<usize>,
    /// TURN filter and rewrites applied to the servers the machine gathers
    /// with: from `TURN_URI`, `TURN_SCHEME`, `TURN_TRANSPORT`, `TURN_PORT`
    /// in the machine's environment (read by the config loader).
    pub turn_overrides: TurnOptions,
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
            signaling_ca_pem: None,
            max_connections: None,
            turn_overrides: TurnOptions::default(),
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
    /// Whether each external signaling service is reachable, once started.
    remote: Mutex<Vec<(String, watch::Receiver<RemoteStatus>)>>,
}

impl std::fmt::Debug for WebRtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtc").field("settings", &self.settings).field("hosts", &self.allowed.hosts()).finish()
    }
}

impl WebRtc {
    pub(crate) fn new(settings: WebRtcSettings) -> Self {
        let allowed = HostAllowList::new(Vec::<String>::new());
        // The embedded signaler's only answerer is the machine itself, in
        // this process: nobody may register an Answer stream with it.
        let mut builder = SignalingServer::builder(Arc::new(MemoryQueue::new()))
            .allowed_hosts(allowed.clone())
            .ice_servers(settings.caller_ice_servers.iter().map(pb::IceServer::from))
            .in_process_answerers_only();
        if let Some(turn) = &settings.turn {
            builder = builder.turn(turn.clone());
        }
        Self { signaling: builder.build(), allowed, settings, stats: Arc::default(), remote: Mutex::default() }
    }

    /// Starts the answerers for a listener on `local`; `require_caller`
    /// when the machine has API keys (every WebRTC caller must then be one a
    /// signaler authenticated).
    pub(crate) fn start(
        &self,
        local: SocketAddr,
        require_caller: bool,
        svc: HttpService,
        events: PeerEvents,
        in_use: InUse,
        shutdown: CancellationToken,
    ) {
        if !self.settings.enabled {
            return;
        }
        let mut hosts = self.settings.hosts.clone();
        hosts.extend(listen_hosts(local));
        hosts.dedup();
        self.allowed.replace(hosts.clone());
        // No shared identity for callers nobody authenticated: the machine
        // tells them apart by address (crate::monitor::identity_of).
        let mut config = AnswererConfig::new(hosts.clone());
        config.require_caller = require_caller;
        // Remote callers never get a loopback candidate (see
        // PeerOptions::loopback_only_for_local_peers).
        config.peer = PeerOptions::default()
            .with_ice_servers(self.settings.ice_servers.clone())
            .with_turn(self.settings.turn_overrides.clone())
            .with_loopback_only_for_local_peers(true);
        config.slots = self.settings.max_connections.map(|limit| ConnectionSlots::new(limit, in_use));
        config.stats = self.stats.clone();
        // Calls through the embedded signaler gather with what it hands its
        // callers too (its TURN servers, credentials minted per call).
        let mut local = config.clone();
        let signaling = self.signaling.clone();
        local.signaler_ice = Some(answerer::SignalerIce::new(move |host| signaling.core().ice_servers(host)));
        answerer::spawn_local(self.signaling.queue().clone(), local, svc.clone(), events.clone(), shutdown.clone());
        let mut remote = self.remote.lock();
        for url in &self.settings.signaling {
            let mut signaler = RemoteSignaler::new(url.clone());
            signaler.credentials = self.settings.signaling_credentials.clone();
            signaler.connection.tls_ca_pem = self.settings.signaling_ca_pem.clone();
            // One answerer group per five names (the protocol's limit per
            // Answer stream).
            for group in self.settings.hosts.chunks(MAX_HOSTS) {
                let mut config = config.clone();
                config.hosts = group.to_vec();
                let status =
                    answerer::spawn_remote(signaler.clone(), config, svc.clone(), events.clone(), shutdown.clone());
                remote.push((url.clone(), status));
            }
        }
        tracing::info!(hosts = ?hosts, external = ?self.settings.signaling, "answering WebRTC calls");
    }

    /// Each external signaling service with whether the machine answers
    /// through it now.
    pub(crate) fn remote_status(&self) -> Vec<(String, watch::Receiver<RemoteStatus>)> {
        self.remote.lock().clone()
    }
}
