//! [`RobotClient`]: the connection to one machine.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tether_proto::proto::rpc::v1::auth_service_client::AuthServiceClient;
use tether_proto::proto::rpc::v1::{AuthenticateRequest, Credentials as PbCredentials};
use tether_proto::viam::common::v1::ResourceName;
use tether_proto::viam::robot::v1 as pb;
use tether_signaling::caller::WebRtcConnection;
use tether_transport::dial::{DirectConnection, DirectOptions, HeaderStamp, SharedHeaders};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::events::{ConnectionEvent, ConnectionState, Method};
use crate::metrics::ClientMetrics;
use crate::session::SessionChannel;
use crate::transport::{Link, Transport};
use crate::{DialConf, Error, Options, Result};

type RobotStub = pb::robot_service_client::RobotServiceClient<SessionChannel>;

/// A live connection and what tells us it died.
struct Connection {
    transport: Transport,
    closed: CancellationToken,
    webrtc: Option<WebRtcConnection>,
    method: Method,
}

struct Inner {
    channel: SessionChannel,
    link: Link,
    conf: DialConf,
    events: Events,
    webrtc: Mutex<Option<WebRtcConnection>>,
    /// Cancelled by `close()`: stops the supervisor and the session.
    closing: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closing.cancel();
        self.channel.close();
        if let Some(w) = self.webrtc.lock().take() {
            w.closed().cancel();
            tokio::spawn(async move { w.close().await });
        }
    }
}

/// A connection to a machine that survives network drops: it notices a dead
/// link (HTTP/2 PINGs, or ICE/data-channel state), fails calls in flight with
/// UNAVAILABLE, redials with every original option and backoff, and resumes
/// the session. Cheap to clone; clones share the connection and the session.
/// Dropping the last clone (or [`RobotClient::close`]) ends it.
#[derive(Clone)]
pub struct RobotClient {
    inner: Arc<Inner>,
    wait: bool,
}

impl std::fmt::Debug for RobotClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RobotClient").field("conf", &self.inner.conf).finish_non_exhaustive()
    }
}

/// Converts a tonic response into the message or our error.
pub(crate) fn reply<T>(r: std::result::Result<tonic::Response<T>, tonic::Status>) -> Result<T> {
    r.map(tonic::Response::into_inner).map_err(Error::from)
}

/// Emits `event` on `robot`'s event channel (for the client's own tasks).
pub(crate) fn emit_event(robot: &RobotClient, event: ConnectionEvent) {
    emit(&robot.inner.events, event);
}

/// Where a client's connection events go: its subscribers and its counters.
#[derive(Clone)]
struct Events {
    tx: broadcast::Sender<ConnectionEvent>,
    metrics: Arc<ClientMetrics>,
}

fn emit(events: &Events, event: ConnectionEvent) {
    tracing::info!(event = event.name(), details = ?event, "connection event");
    events.metrics.count(&event);
    let _ = events.tx.send(event);
}

/// Dials once with every option of `conf`.
/// Dials once with every option of `conf`. While reconnecting, the TCP
/// connect of one attempt is capped (at the liveness timeout, at least 1 s):
/// a SYN lost while the link was still down is otherwise retried by the
/// kernel only after 1 s, then 3 s, long after the link came back.
async fn dial(conf: &DialConf, options: &Options, headers: &SharedHeaders, reconnecting: bool) -> Result<Connection> {
    match conf {
        DialConf::Direct { address, credentials, dial_timeout, tls_ca_pem } => {
            let direct = DirectOptions::default()
                .with_connect_timeout(if reconnecting {
                    (*dial_timeout).min(options.liveness.timeout.max(Duration::from_secs(1)))
                } else {
                    *dial_timeout
                })
                .with_keepalive_interval(options.liveness.interval)
                .with_keepalive_timeout(options.liveness.timeout)
                .with_tls_ca_pem(tls_ca_pem.clone());
            let work = async {
                let conn = DirectConnection::connect(address, &direct).await?;
                if let Some(creds) = credentials {
                    headers.remove(tether_wire::metadata::AUTHORIZATION);
                    let mut auth = AuthServiceClient::new(conn.clone());
                    let token = auth
                        .authenticate(AuthenticateRequest {
                            entity: creds.entity.clone(),
                            credentials: Some(PbCredentials {
                                r#type: creds.r#type.clone(),
                                payload: creds.payload.clone(),
                            }),
                        })
                        .await?
                        .into_inner()
                        .access_token;
                    headers
                        .set_bearer(&token)
                        .map_err(|e| tonic::Status::internal(format!("unusable access token: {e}")))?;
                }
                Ok::<_, Error>(conn)
            };
            let conn = tokio::time::timeout(*dial_timeout, work).await.map_err(|_| {
                Error::Dial(tether_transport::dial::DialError::Timeout(address.clone(), *dial_timeout))
            })??;
            probe(Transport::Direct(HeaderStamp::new(conn.clone(), headers.clone())), *dial_timeout).await?;
            Ok(Connection {
                closed: conn.closed().clone(),
                transport: Transport::Direct(HeaderStamp::new(conn, headers.clone())),
                webrtc: None,
                method: Method::Grpc,
            })
        }
        DialConf::WebRtc(c) => {
            let mut o = c.options();
            o.peer.keepalive = options.liveness.interval;
            o.peer.disconnected_timeout = options.liveness.timeout;
            o.peer.failed_timeout = options.liveness.timeout + Duration::from_secs(2);
            let connection = tether_signaling::caller::dial(&o).await?;
            if let Err(e) = probe(Transport::WebRtc(connection.channel.clone()), c.dial_timeout).await {
                connection.close().await;
                return Err(e);
            }
            Ok(Connection {
                transport: Transport::WebRtc(connection.channel.clone()),
                closed: connection.closed().clone(),
                webrtc: Some(connection),
                method: Method::Webrtc,
            })
        }
    }
}

fn method_of(conf: &DialConf) -> Method {
    match conf {
        DialConf::Direct { .. } => Method::Grpc,
        DialConf::WebRtc(_) => Method::Webrtc,
    }
}

fn aborted(options: &Options) -> bool {
    options.abort.as_ref().is_some_and(|a| a.is_aborted())
}

fn abort_error() -> Error {
    tonic::Status::cancelled("dial aborted").into()
}

/// Dials on the reconnection schedule until an attempt connects, the
/// attempts run out, [`Options::retry`] says an error cannot heal, the dial
/// is aborted or `closing` fires. The error is the last attempt's, with the
/// number of attempts made.
async fn dial_retrying(
    conf: &DialConf,
    options: &Options,
    headers: &SharedHeaders,
    events: &Events,
    reconnecting: bool,
    closing: &CancellationToken,
) -> std::result::Result<Connection, (Error, u32)> {
    let attempts = if options.reconnect.no_reconnect { 1 } else { options.reconnect.max_attempts.max(1) };
    let abort = options.abort.clone().unwrap_or_default();
    let method = method_of(conf);
    let mut last = abort_error();
    for attempt in 1..=attempts {
        if abort.is_aborted() {
            return Err((abort_error(), attempt - 1));
        }
        if attempt > 1 {
            let delay = options.reconnect.delay(attempt);
            emit(events, ConnectionEvent::RetryScheduled { attempt, delay_ms: delay.as_millis() as u64 });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = abort.aborted() => return Err((abort_error(), attempt - 1)),
                _ = closing.cancelled() => return Err((last, attempt - 1)),
            }
        }
        emit(events, ConnectionEvent::Dialing { method, attempt });
        let dialed = tokio::select! {
            d = dial(conf, options, headers, reconnecting) => d,
            _ = abort.aborted() => return Err((abort_error(), attempt)),
            _ = closing.cancelled() => return Err((last, attempt)),
        };
        match dialed {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::debug!(attempt, "dial attempt failed: {e}");
                let retry = options.retry(&e);
                last = e;
                if !retry {
                    tracing::debug!(attempt, "not retrying: {last}");
                    return Err((last, attempt));
                }
            }
        }
    }
    Err((last, attempts))
}

/// One round trip on a fresh connection: a TCP connect can succeed against a
/// dying machine's listener, so a dial only counts once a call came back. Any
/// answer from the machine (even UNIMPLEMENTED from a server without
/// GetVersion) proves the connection; UNAVAILABLE does not.
async fn probe(transport: Transport, limit: Duration) -> Result<()> {
    let mut robot = pb::robot_service_client::RobotServiceClient::new(transport);
    match tokio::time::timeout(limit, robot.get_version(pb::GetVersionRequest {})).await {
        Err(_) => Err(tonic::Status::unavailable("the machine did not answer after connecting").into()),
        Ok(Err(s)) if s.code() == tonic::Code::Unavailable => Err(s.into()),
        Ok(_) => Ok(()),
    }
}

impl RobotClient {
    /// Dials the machine and, with credentials, authenticates. The first
    /// dial is retried on the reconnection schedule ([`Options::reconnect`]:
    /// `max_attempts` counts the first attempt; `no_reconnect` makes it a
    /// single one) while [`Options::should_retry`] allows it; errors that
    /// cannot heal end it at once. A WebRTC dial that fails falls back to a
    /// direct one as [`crate::WebRtcConf::direct_fallback`] says.
    pub async fn connect(conf: DialConf, options: Options) -> Result<Self> {
        let (tx, _) = broadcast::channel(256);
        let events = Events { tx, metrics: Arc::default() };
        emit(&events, ConnectionEvent::Connecting);
        let headers = SharedHeaders::default();
        let never = CancellationToken::new();
        let first = dial_retrying(&conf, &options, &headers, &events, false, &never).await;
        let (connection, conf) = match first {
            Ok(c) => (c, conf),
            Err((e, _)) => {
                let fallback = match &conf {
                    DialConf::WebRtc(w) if !aborted(&options) => w.fallback(),
                    _ => None,
                };
                let Some((direct, address)) = fallback else {
                    emit(&events, ConnectionEvent::Disconnected { error: Some(e.to_string()) });
                    return Err(e);
                };
                tracing::info!(%address, "the WebRTC dial failed ({e}); falling back to a direct dial");
                match dial_retrying(&direct, &options, &headers, &events, false, &never).await {
                    Ok(c) => (c, direct),
                    Err((d, _)) => {
                        let error = tonic::Status::new(
                            e.code(),
                            format!("WebRTC: {}; direct fallback to {address}: {}", e.message(), d.message()),
                        );
                        emit(&events, ConnectionEvent::Disconnected { error: Some(error.message().to_owned()) });
                        return Err(error.into());
                    }
                }
            }
        };
        let link = Link::new(connection.transport.clone());
        let tokens = match &conf {
            DialConf::Direct { credentials: Some(creds), .. } => {
                Some(crate::reauth::Tokens::new(creds.clone(), headers.clone(), link.clone()))
            }
            _ => None,
        };
        let channel =
            SessionChannel::new(crate::reauth::Authed::new(link.clone(), tokens.clone()), options.disable_sessions);
        let inner = Arc::new(Inner {
            channel,
            link,
            conf,
            events,
            webrtc: Mutex::new(connection.webrtc.clone()),
            closing: CancellationToken::new(),
        });
        if let Some(tokens) = &tokens {
            tokens.spawn_refresher(inner.closing.clone());
        }
        let robot = Self { inner: inner.clone(), wait: false };
        let (candidate_pair, rtt_ms) = robot.measure(&connection).await;
        let method = connection.method;
        emit(&inner.events, ConnectionEvent::Connected { method, candidate_pair, rtt_ms, reconnected: false });
        tokio::spawn(supervise(Arc::downgrade(&inner), connection.closed, options, headers));
        Ok(robot)
    }

    /// The candidate pair and a small call's round trip on a fresh connection.
    async fn measure(&self, connection: &Connection) -> (Option<String>, Option<f64>) {
        let pair = match &connection.webrtc {
            Some(w) => w.selected_pair().await.map(|p| format!("{}/{}", p.local_type, p.remote_type)),
            None => None,
        };
        let started = std::time::Instant::now();
        let rtt = self.version().await.ok().map(|_| started.elapsed().as_secs_f64() * 1e3);
        (pair, rtt)
    }

    /// Connection events (a new subscriber sees the events from now on).
    pub fn events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.inner.events.tx.subscribe()
    }

    /// Counters of this client's connection (drops, reconnections, resumed
    /// and lapsed sessions) to register with a Prometheus registry.
    pub fn metrics(&self) -> &Arc<ClientMetrics> {
        &self.inner.events.metrics
    }

    /// The connection state, as a `watch` channel.
    pub fn state(&self) -> tokio::sync::watch::Receiver<ConnectionState> {
        self.inner.link.state()
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        *self.inner.link.state().borrow() == ConnectionState::Connected
    }

    /// A handle whose calls (and the component clients made from it) wait
    /// for the connection while reconnecting, instead of failing fast with
    /// UNAVAILABLE. Bound them with a deadline.
    pub fn wait_for_ready(&self) -> Self {
        Self { inner: self.inner.clone(), wait: true }
    }

    /// The transport for tonic-generated clients (sessions handled).
    pub fn channel(&self) -> SessionChannel {
        self.inner.channel.waiting(self.wait)
    }

    fn robot(&self) -> RobotStub {
        pb::robot_service_client::RobotServiceClient::new(self.channel())
            .max_decoding_message_size(tether_transport::MAX_MESSAGE_SIZE)
    }

    /// The current session id (none before the first monitored call, or with
    /// sessions disabled).
    pub fn session_id(&self) -> Option<String> {
        self.inner.channel.session_id()
    }

    /// Starts (or resumes) a session now instead of on the first monitored call.
    pub async fn start_session(&self) -> Result<Option<String>> {
        Ok(self.inner.channel.ensure_session().await?)
    }

    /// Every resource on the machine.
    pub async fn resource_names(&self) -> Result<Vec<ResourceName>> {
        Ok(reply(self.robot().resource_names(pb::ResourceNamesRequest {}).await)?.resources)
    }

    /// The machine's status (state, resources).
    pub async fn machine_status(&self) -> Result<pb::GetMachineStatusResponse> {
        reply(self.robot().get_machine_status(pb::GetMachineStatusRequest {}).await)
    }

    /// Platform and version of the machine.
    pub async fn version(&self) -> Result<pb::GetVersionResponse> {
        reply(self.robot().get_version(pb::GetVersionRequest {}).await)
    }

    /// Running operations.
    pub async fn operations(&self) -> Result<Vec<pb::Operation>> {
        Ok(reply(self.robot().get_operations(pb::GetOperationsRequest {}).await)?.operations)
    }

    /// Cancels an operation by id.
    pub async fn cancel_operation(&self, id: &str) -> Result<()> {
        reply(self.robot().cancel_operation(pb::CancelOperationRequest { id: id.into() }).await).map(drop)
    }

    /// Waits until an operation is finished.
    pub async fn block_for_operation(&self, id: &str) -> Result<()> {
        reply(self.robot().block_for_operation(pb::BlockForOperationRequest { id: id.into() }).await).map(drop)
    }

    /// Stops every actuator and cancels every operation.
    pub async fn stop_all(&self) -> Result<()> {
        reply(self.robot().stop_all(pb::StopAllRequest { extra: Vec::new() }).await).map(drop)
    }

    /// The machine's sessions.
    pub async fn sessions(&self) -> Result<Vec<pb::Session>> {
        Ok(reply(self.robot().get_sessions(pb::GetSessionsRequest {}).await)?.sessions)
    }

    /// Stops heartbeating (the session then lapses on the machine) and
    /// releases the session state. Calls still work afterwards but start no
    /// new session.
    pub async fn close(&self) {
        if !self.inner.closing.is_cancelled() {
            emit(&self.inner.events, ConnectionEvent::Disconnecting);
        }
        self.inner.closing.cancel();
        self.inner.channel.close();
        let webrtc = self.inner.webrtc.lock().take();
        if let Some(w) = webrtc {
            w.close().await;
        }
    }

    /// The current WebRTC connection, when connected over WebRTC.
    pub fn webrtc(&self) -> Option<WebRtcConnection> {
        self.inner.webrtc.lock().clone()
    }
}

/// Resolves when the addresses of this host differ from those `webrtc`
/// gathered on, or the machine has been silent for
/// [`IceRestartOptions::silence`](crate::IceRestartOptions::silence) (never
/// without a WebRTC connection), with what happened.
async fn network_change(webrtc: Option<WebRtcConnection>, options: &Options) -> String {
    let Some(conn) = webrtc else { return std::future::pending().await };
    watch(&conn, options.ice_restart.poll, Some(options.ice_restart.silence)).await
}

/// Polls `conn` every `poll` until its addresses change or (with `silence`)
/// the machine has been silent that long; never while `conn` is closed.
async fn watch(conn: &WebRtcConnection, poll: Duration, silence: Option<Duration>) -> String {
    loop {
        tokio::time::sleep(poll).await;
        if conn.closed().is_cancelled() {
            return std::future::pending().await;
        }
        if let Some(reason) = conn.peer().network_change() {
            return reason;
        }
        let quiet = conn.peer().silence();
        if silence.is_some_and(|limit| quiet >= limit) {
            return format!("the machine was silent for {:.1} s", quiet.as_secs_f64());
        }
    }
}

/// How many times a restart starts over because the addresses changed again.
const MAX_RESTARTS_PER_CHANGE: usize = 3;

/// Restarts ICE on `conn` after a network change; on failure closes it (the
/// supervisor then reconnects).
async fn restart_ice(weak: &Weak<Inner>, conn: &WebRtcConnection, reason: String, options: &Options) {
    let (signaling, events) = match weak.upgrade() {
        Some(inner) => match &inner.conf {
            DialConf::WebRtc(c) => (c.options(), inner.events.clone()),
            DialConf::Direct { .. } => return,
        },
        None => return,
    };
    tracing::info!(%reason, "network change: restarting ICE");
    let started = std::time::Instant::now();
    let mut reason = reason;
    let result;
    let mut changes = 0;
    loop {
        // A change can come in steps (a new address first, the old one
        // gone a moment later, then the route): a restart begun halfway may
        // hang on a path that went away. Another change starts it over.
        tokio::select! {
            r = tether_signaling::caller::restart_ice(&signaling, conn, options.ice_restart.limit) => {
                result = r;
                break;
            }
            more = watch(conn, options.ice_restart.poll, None), if changes < MAX_RESTARTS_PER_CHANGE => {
                tracing::info!(reason = %more, "the network changed again: restarting ICE again");
                reason = format!("{reason}, then {more}");
                changes += 1;
            }
        }
    }
    match result {
        Ok(()) => {
            let took_ms = started.elapsed().as_secs_f64() * 1e3;
            let candidate_pair = conn.selected_pair().await.map(|p| format!("{}/{}", p.local_type, p.remote_type));
            emit(&events, ConnectionEvent::IceRestarted { reason, took_ms, candidate_pair });
        }
        Err(e) => {
            emit(&events, ConnectionEvent::IceRestartFailed { reason, error: e.to_string() });
            conn.close().await;
        }
    }
}

/// Watches the connection; on a drop, reconnects per the options.
async fn supervise(weak: Weak<Inner>, mut closed: CancellationToken, options: Options, headers: SharedHeaders) {
    loop {
        let closing = match weak.upgrade() {
            Some(inner) => inner.closing.clone(),
            None => return,
        };
        let webrtc = match weak.upgrade() {
            Some(inner) if options.ice_restart.enabled => inner.webrtc.lock().clone(),
            _ => None,
        };
        tokio::select! {
            _ = closed.cancelled() => {}
            _ = closing.cancelled() => {
                if let Some(inner) = weak.upgrade() {
                    inner.link.set(None, ConnectionState::Disconnected);
                    emit(&inner.events, ConnectionEvent::Disconnected { error: None });
                }
                return;
            }
            reason = network_change(webrtc.clone(), &options) => {
                if let Some(conn) = webrtc {
                    restart_ice(&weak, &conn, reason, &options).await;
                }
                // Restarted: watch again. Failed: the connection is closed
                // and the next round reconnects.
                continue;
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        // The connection is gone: calls in flight have failed (UNAVAILABLE);
        // new ones fail fast (or wait) until we are back.
        inner.link.set(None, ConnectionState::Reconnecting);
        *inner.webrtc.lock() = None;
        // The session to resume: the last one started, even if it is no
        // longer marked active. A heartbeat in flight when the link died
        // fails with the connection and resets the active session, often
        // before we get here; and a reconnection that failed before it could
        // resume leaves none active for the next one.
        let had_session = inner.channel.last_session_id();
        inner.channel.reset();
        if options.reconnect.no_reconnect {
            inner.link.set(None, ConnectionState::Disconnected);
            emit(&inner.events, ConnectionEvent::Disconnected { error: Some("connection lost".into()) });
            return;
        }
        emit(&inner.events, ConnectionEvent::Reconnecting { error: Some("connection lost".into()) });
        let conf = inner.conf.clone();
        let events = inner.events.clone();
        drop(inner);
        let dialed = dial_retrying(&conf, &options, &headers, &events, true, &closing).await;
        let Some(inner) = weak.upgrade() else { return };
        let connection = match dialed {
            Ok(c) => c,
            Err((e, attempts)) => {
                inner.link.set(None, ConnectionState::Disconnected);
                if closing.is_cancelled() {
                    emit(&inner.events, ConnectionEvent::Disconnected { error: None });
                } else {
                    emit(&inner.events, ConnectionEvent::ReconnectionFailed { error: e.to_string(), attempts });
                }
                return;
            }
        };
        inner.link.set(Some(connection.transport.clone()), ConnectionState::Connected);
        *inner.webrtc.lock() = connection.webrtc.clone();
        let robot = RobotClient { inner: inner.clone(), wait: false };
        let (candidate_pair, rtt_ms) = robot.measure(&connection).await;
        let method = connection.method;
        emit(&inner.events, ConnectionEvent::Connected { method, candidate_pair, rtt_ms, reconnected: true });
        // Resume the session that was active before the drop.
        if let Some(old) = had_session {
            match inner.channel.ensure_session().await {
                Ok(Some(new)) if new == old => emit(&inner.events, ConnectionEvent::SessionResumed { id: new }),
                Ok(Some(new)) => emit(&inner.events, ConnectionEvent::SessionLapsed { old, new }),
                Ok(None) => {}
                Err(e) => tracing::warn!("could not resume the session after reconnecting: {e}"),
            }
        }
        closed = connection.closed;
        drop(robot);
    }
}
