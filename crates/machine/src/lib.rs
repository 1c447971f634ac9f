//! A Viam-compatible machine: components behind traits (fake models built
//! in), the robot service with sessions, safety stops and operations, served
//! over gRPC (HTTP/2) and gRPC-Web by one tonic router.
//!
//! The component traits, the fakes and the model registry live in
//! `tether-components` (the crate a driver author depends on) and are
//! re-exported here as [`components`], [`models`] and [`resource`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tether_machine::{Machine, config::Config, models::Models};
//! let machine = Machine::from_config(&Config::fake(), &Models::builtin())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! machine.serve(listener, Default::default(), tokio_util::sync::CancellationToken::new()).await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_proto::viam::component as comp;
use tether_proto::viam::robot::v1::robot_service_server::RobotServiceServer;
pub use tether_signaling::answerer::RemoteStatus;
use tether_signaling::answerer::{PeerEvent, PeerEvents};
use tether_transport::auth::{ApiKey, AuthLayer, AuthOptions, AuthServer, AuthStats, Authority};
use tether_transport::server::{HttpService, ServeOptions};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

pub mod config;
pub mod metrics;
pub mod monitor;
pub mod operations;
pub mod page;
pub mod services;
pub mod session;
pub mod status;
pub mod video;
pub mod webrtc;

pub use tether_components as components;
pub use tether_components::{models, resource};

use config::{Config, ConfigError};
use models::Models;
use monitor::{MonitorLayer, MonitorState};
use operations::Operations;
use resource::Resources;
use services::ComponentService;
use services::robot::RobotServer;
use session::{Expired, SessionManager};

/// gRPC path prefix of the embedded signaler's calls.
const SIGNALING_PREFIX: &str = "/proto.rpc.webrtc.v1.SignalingService/";

/// A safety stop issued because a session lapsed or a peer connection died.
#[derive(Clone, Debug)]
pub struct SafetyStop {
    /// The lapsed session (for session expiry).
    pub session: Option<uuid::Uuid>,
    /// The dead peer connection (for sessionless WebRTC callers).
    pub connection: Option<u64>,
    /// The resource that was stopped.
    pub resource: String,
    /// How long after the session's deadline (or the connection's death
    /// being noticed) the stop completed.
    pub delay: Duration,
}

/// Stops `names` (each on its own task) for a lapsed session or a dead peer
/// connection, and reports each stop with its delay since `since`.
fn spawn_safety_stops(
    resources: &Arc<Resources>,
    stops: &broadcast::Sender<SafetyStop>,
    metrics: &Arc<metrics::MachineMetrics>,
    names: Vec<String>,
    session: Option<uuid::Uuid>,
    connection: Option<u64>,
    since: tokio::time::Instant,
) {
    for name in names {
        let resources = resources.clone();
        let stops = stops.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if resources.stop(&name).await {
                let delay = tokio::time::Instant::now().saturating_duration_since(since);
                let cause =
                    if session.is_some() { metrics::cause::SESSION_EXPIRED } else { metrics::cause::CONNECTION_LOST };
                metrics.safety_stop(cause, delay);
                match session {
                    Some(id) => tracing::warn!(session = %id, resource = %name, ?delay, "safety stop: session lapsed"),
                    None => tracing::warn!(?connection, resource = %name, ?delay, "safety stop: peer connection lost"),
                }
                let _ = stops.send(SafetyStop { session, connection, resource: name, delay });
            }
        });
    }
}

/// Settings of a [`Machine`] that are not components.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MachineOptions {
    /// Window of every session.
    pub heartbeat_window: Duration,
    /// API keys; empty means no authentication.
    pub api_keys: Vec<ApiKey>,
    /// Name used as the token audience when `webrtc.hosts` is empty (tokens
    /// are for the machine's host names).
    pub name: String,
    /// Token lifetime, signing secret and `Authenticate` throttling.
    pub auth: AuthOptions,
    /// WebRTC: the embedded signaler and the answerers.
    pub webrtc: webrtc::WebRtcSettings,
}

impl Default for MachineOptions {
    fn default() -> Self {
        Self {
            heartbeat_window: session::DEFAULT_WINDOW,
            api_keys: Vec::new(),
            name: "tether-machine".into(),
            auth: AuthOptions::default(),
            webrtc: webrtc::WebRtcSettings::default(),
        }
    }
}

/// A running machine's state; cheap to clone.
#[derive(Clone)]
pub struct Machine {
    resources: Arc<Resources>,
    sessions: SessionManager,
    operations: Operations,
    authority: Option<Arc<Authority>>,
    stops: broadcast::Sender<SafetyStop>,
    started: SystemTime,
    webrtc: Arc<webrtc::WebRtc>,
    video: Arc<video::VideoHub>,
    status: status::Status,
    metrics: Arc<metrics::MachineMetrics>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").field("resources", &self.resources).field("sessions", &self.sessions).finish()
    }
}

impl Machine {
    /// A machine over `resources`. Must be called inside a tokio runtime
    /// (it starts the session expiry task).
    pub fn new(resources: Resources, options: MachineOptions) -> Self {
        let resources = Arc::new(resources);
        let (stops, _) = broadcast::channel(1024);
        let metrics = Arc::new(metrics::MachineMetrics::default());
        let on_expiry = {
            let resources = resources.clone();
            let stops = stops.clone();
            let metrics = metrics.clone();
            Arc::new(move |e: Expired| {
                metrics.sessions_expired.inc();
                spawn_safety_stops(&resources, &stops, &metrics, e.resources, Some(e.id), None, e.deadline);
            })
        };
        let sessions = SessionManager::new(options.heartbeat_window, on_expiry);
        let audience =
            if options.webrtc.hosts.is_empty() { vec![options.name.clone()] } else { options.webrtc.hosts.clone() };
        let authority = (!options.api_keys.is_empty())
            .then(|| Arc::new(Authority::with_options(audience, options.api_keys, options.auth.clone())));
        let webrtc = Arc::new(webrtc::WebRtc::new(options.webrtc));
        let video = video::VideoHub::new(resources.clone());
        let status = status::Status::default();
        let mut recorded = stops.subscribe();
        let record = status.clone();
        tokio::spawn(async move {
            loop {
                match recorded.recv().await {
                    Ok(stop) => record.record_stop(&stop),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Self {
            resources,
            sessions,
            operations: Operations::default(),
            authority,
            stops,
            started: SystemTime::now(),
            webrtc,
            video,
            status,
            metrics,
        }
    }

    /// Builds the components a config lists with `models`, and the machine.
    pub fn from_config(cfg: &Config, models: &Models) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let resources = cfg.build(models)?;
        let options = MachineOptions {
            heartbeat_window: cfg.heartbeat_window(),
            api_keys: cfg.api_keys(),
            auth: cfg.auth_options(),
            webrtc: cfg.webrtc_settings(),
            ..Default::default()
        };
        Ok(Self::new(resources, options))
    }

    /// The components.
    pub fn resources(&self) -> &Arc<Resources> {
        &self.resources
    }

    /// Camera streams (encoders and tracks).
    pub fn video(&self) -> &Arc<video::VideoHub> {
        &self.video
    }

    /// The session manager.
    pub fn sessions(&self) -> &SessionManager {
        &self.sessions
    }

    /// Running operations.
    pub fn operations(&self) -> &Operations {
        &self.operations
    }

    /// Counters of the machine's authentication (`None` without API keys):
    /// key checks, throttled `Authenticate`s, tokens minted.
    pub fn auth_stats(&self) -> Option<AuthStats> {
        self.authority.as_ref().map(|a| a.stats())
    }

    /// The lifetime of the access tokens the machine mints (`None` without
    /// API keys).
    pub fn token_lifetime(&self) -> Option<Duration> {
        self.authority.as_ref().map(|a| a.token_lifetime())
    }

    /// The machine's metrics (counting whether or not registered).
    pub fn metrics(&self) -> &Arc<metrics::MachineMetrics> {
        &self.metrics
    }

    /// Registers every metric of the machine in `registry`: sessions, safety
    /// stops, WebRTC peers and offers, the listener's connections and the
    /// embedded signaler (not the process's: see
    /// `tether_transport::metrics::register_process`).
    pub fn register_metrics(&self, registry: &mut tether_transport::metrics::prometheus_client::registry::Registry) {
        use tether_transport::metrics::GaugeFn;
        self.metrics.register(registry);
        let sessions = self.sessions.clone();
        GaugeFn::new("tether_sessions_active", "Sessions alive now", move || {
            i64::try_from(sessions.len()).unwrap_or(i64::MAX)
        })
        .register(registry);
        let webrtc = self.webrtc.clone();
        GaugeFn::new("tether_webrtc_offers_answering", "WebRTC offers being answered (signaling and ICE)", move || {
            i64::try_from(webrtc.stats.snapshot().0).unwrap_or(i64::MAX)
        })
        .register(registry);
        let webrtc = self.webrtc.clone();
        GaugeFn::counter(
            "tether_webrtc_offers_shed",
            "WebRTC offers dropped in negotiation (RESOURCE_EXHAUSTED) for newer ones, over the machine's bound",
            move || webrtc.stats.shed.load(std::sync::atomic::Ordering::Relaxed),
        )
        .register(registry);
        let budget = tether_transport::webrtc::serve::PartialBudget::machine();
        let dropped = budget.clone();
        GaugeFn::counter(
            "tether_webrtc_partial_messages_dropped",
            "Partially received request messages on data channels dropped over the peer's or the process's budget \
             (RESOURCE_EXHAUSTED)",
            move || dropped.dropped.load(std::sync::atomic::Ordering::Relaxed),
        )
        .register(registry);
        GaugeFn::counter(
            "tether_webrtc_partial_messages_stalled",
            "Partially received request messages on data channels reset after no progress for 30 s",
            move || budget.stalled.load(std::sync::atomic::Ordering::Relaxed),
        )
        .register(registry);
        self.webrtc.signaling.register_metrics(registry);
    }

    /// Safety stops as they happen.
    pub fn safety_stops(&self) -> broadcast::Receiver<SafetyStop> {
        self.stops.subscribe()
    }

    /// The gRPC router with tether's layers (auth, operations, sessions and
    /// safety): the one service every transport serves.
    pub fn grpc_service(&self) -> HttpService {
        const MAX: usize = tether_transport::MAX_MESSAGE_SIZE;
        macro_rules! limits {
            ($s:expr) => {
                $s.max_decoding_message_size(MAX).max_encoding_message_size(MAX)
            };
        }
        let cs = ComponentService::new(self.resources.clone());
        let robot = RobotServer {
            resources: self.resources.clone(),
            sessions: self.sessions.clone(),
            operations: self.operations.clone(),
            started: self.started,
            metrics: self.metrics.clone(),
        };
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tether_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the compiled descriptor set is valid");
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tether_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("the compiled descriptor set is valid");
        // One route per component kind, from the list in tether-components.
        macro_rules! component_routes {
            ($( $kind:ident => $module:ident, $subtype:literal, $service:literal, $stub:ident :: $server:ident; )*) => {
                tonic::service::Routes::new(limits!(RobotServiceServer::new(robot)))
                    $( .add_service(limits!(comp::$module::v1::$stub::$server::new(cs.clone()))) )*
            };
        }
        let mut routes = tether_components::for_each_kind!(component_routes)
            .add_service(limits!(tether_proto::proto::stream::v1::stream_service_server::StreamServiceServer::new(
                services::stream::StreamServer { resources: self.resources.clone(), hub: self.video.clone() }
            )))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(limits!(self.webrtc.signaling.clone().into_service()));
        if let Some(authority) = &self.authority {
            routes = routes.add_service(AuthServer::new(authority.clone()).into_service());
        }
        let monitor = MonitorLayer::new(MonitorState {
            operations: self.operations.clone(),
            sessions: self.sessions.clone(),
            resources: self.resources.clone(),
        });
        let svc = ServiceBuilder::new()
            .layer(tether_transport::grpc::StatusHygieneLayer)
            .layer(AuthLayer::new(self.authority.clone()))
            .layer(monitor)
            .map_request({
                let status = self.status.clone();
                move |req: http::Request<tonic::body::Body>| {
                    // A signaling exchange is not a client yet; the peer connection it makes is.
                    if !req.uri().path().starts_with(SIGNALING_PREFIX)
                        && let Some(info) = req.extensions().get::<tether_transport::server::ConnectionInfo>()
                    {
                        status.record_call(info);
                    }
                    req
                }
            })
            .service(routes);
        tower::util::BoxCloneSyncService::new(svc)
    }

    /// [`Self::grpc_service`] plus gRPC-Web and CORS, as served on TCP; every
    /// other request (a browser's `GET /`) goes to the control page
    /// ([`page`]).
    pub fn http_service(&self) -> HttpService {
        let grpc = tether_transport::server::grpc_web(self.grpc_service());
        let page =
            page::service(self.status.clone(), self.sessions.clone(), self.authority.clone(), self.webrtc.clone());
        tether_transport::server::with_fallback(grpc, page)
    }

    /// The clients and safety stops the control page shows.
    pub fn status(&self) -> &status::Status {
        &self.status
    }

    /// Serves gRPC and gRPC-Web on `listener` until `shutdown`; with WebRTC
    /// enabled (the default) it also serves the embedded signaler on the same
    /// port and answers WebRTC calls for the machine's names. The answerers
    /// start when this is called (so [`Self::webrtc_hosts`] and
    /// [`Self::signaling_status`] are filled in at once); the returned future
    /// serves the listener. Call it inside a tokio runtime. The listener
    /// counts into the machine's metrics (`options.metrics` is replaced; see
    /// [`Self::register_metrics`]).
    pub fn serve(
        &self,
        listener: TcpListener,
        options: ServeOptions,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        if let Ok(local) = listener.local_addr() {
            self.start_webrtc(local, shutdown.clone());
        }
        let options = options.with_metrics(self.metrics.server.clone());
        tether_transport::server::serve(listener, self.http_service(), options, shutdown)
    }

    /// `(offers being answered, WebRTC peers being served)` right now.
    pub fn webrtc_stats(&self) -> (usize, usize) {
        self.webrtc.stats.snapshot()
    }

    /// The embedded signaling service (e.g. to inspect its queue).
    pub fn signaling(&self) -> &tether_signaling::SignalingServer {
        &self.webrtc.signaling
    }

    /// The host names the embedded signaler answers for.
    pub fn webrtc_hosts(&self) -> Vec<String> {
        self.webrtc.allowed.hosts()
    }

    /// Starts the answerers (embedded signaler on `local`, plus external
    /// signalers) unless WebRTC is disabled.
    fn start_webrtc(&self, local: std::net::SocketAddr, shutdown: CancellationToken) {
        let machine = self.clone();
        let events: PeerEvents = Arc::new(move |event| machine.on_peer_event(event));
        let machine = self.clone();
        let in_use: tether_signaling::slots::InUse = Arc::new(move |info| machine.webrtc_in_use(info));
        self.webrtc.start(local, self.authority.is_some(), self.grpc_service(), events, in_use, shutdown);
    }

    /// Each external signaling service (`--signaling`) with whether the
    /// machine answers through it now ([`RemoteStatus::Unreachable`] carries
    /// the reason: TLS, credentials, DNS, a refused `Answer`, …). Empty until
    /// [`Self::serve`] has started.
    pub fn signaling_status(&self) -> Vec<(String, tokio::sync::watch::Receiver<RemoteStatus>)> {
        self.webrtc.remote_status()
    }

    /// Whether a WebRTC peer must not be closed to make room for another
    /// caller: a live session's heartbeats arrive over it, or it is the last
    /// (sessionless) caller of a resource.
    fn webrtc_in_use(&self, info: &tether_transport::ConnectionInfo) -> bool {
        let holds_session = self
            .sessions
            .list()
            .iter()
            .any(|s| s.peer.webrtc && s.peer.remote == info.remote && s.peer.local == info.local);
        holds_session
            || self
                .resources
                .names()
                .iter()
                .any(|n| self.sessions.last_caller_of(&n.name) == Some(session::Caller::Connection(info.id)))
    }

    fn on_peer_event(&self, event: PeerEvent) {
        self.status.peer_event(&event);
        match event {
            PeerEvent::Opened(info, pair) => self.metrics.peer_opened(info.id, pair.as_ref()),
            PeerEvent::Closed(info) => {
                self.metrics.peer_closed(info.id);
                let lost = self.sessions.connection_closed(info.id);
                let now = tokio::time::Instant::now();
                spawn_safety_stops(&self.resources, &self.stops, &self.metrics, lost, None, Some(info.id), now);
            }
        }
    }
}
