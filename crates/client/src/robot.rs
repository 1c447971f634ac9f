//! [`RobotClient`]: the connection to one machine.

use std::sync::Arc;

use tether_proto::viam::common::v1::ResourceName;
use tether_proto::viam::robot::v1 as pb;
use tether_rpc::dial::{self, HeaderStamp, SharedHeaders};

use crate::session::SessionChannel;
use crate::{DialConf, Error, Options, Result};

type RobotStub = pb::robot_service_client::RobotServiceClient<SessionChannel>;

struct Inner {
    channel: SessionChannel,
    conf: DialConf,
    webrtc: Option<tether_rpc::webrtc::dial::WebRtcConnection>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.channel.close();
        if let Some(w) = self.webrtc.take() {
            w.closed().cancel();
            tokio::spawn(async move { w.close().await });
        }
    }
}

/// A connection to a machine. Cheap to clone; clones share the connection
/// and the session. Dropping the last clone stops heartbeating.
#[derive(Clone)]
pub struct RobotClient {
    inner: Arc<Inner>,
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

impl RobotClient {
    /// Dials the machine and (with credentials) authenticates.
    pub async fn connect(conf: DialConf, options: Options) -> Result<Self> {
        let headers = SharedHeaders::default();
        let mut webrtc = None;
        let channel = match &conf {
            DialConf::Direct { address, credentials, dial_timeout, tls_ca_pem } => {
                let channel = tokio::time::timeout(*dial_timeout, async {
                    let channel = dial::connect_channel_with(address, *dial_timeout, tls_ca_pem.as_deref()).await?;
                    if let Some(creds) = credentials {
                        let token = dial::authenticate(channel.clone(), creds).await?;
                        headers
                            .set_bearer(&token)
                            .map_err(|e| tonic::Status::internal(format!("unusable access token: {e}")))?;
                    }
                    Ok::<_, Error>(channel)
                })
                .await
                .map_err(|_| Error::Dial(dial::DialError::Timeout(address.clone(), *dial_timeout)))??;
                crate::Transport::Direct(HeaderStamp::new(channel, headers))
            }
            DialConf::WebRtc(c) => {
                let connection = tether_rpc::webrtc::dial::dial(&c.options()).await?;
                webrtc = Some(connection.clone());
                crate::Transport::WebRtc(connection.channel)
            }
        };
        let channel = SessionChannel::new(channel, options.disable_sessions);
        Ok(Self { inner: Arc::new(Inner { channel, conf, webrtc }) })
    }

    /// The transport for tonic-generated clients (sessions handled).
    pub fn channel(&self) -> SessionChannel {
        self.inner.channel.clone()
    }

    fn robot(&self) -> RobotStub {
        pb::robot_service_client::RobotServiceClient::new(self.channel())
            .max_decoding_message_size(tether_rpc::MAX_MESSAGE_SIZE)
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
        self.inner.channel.close();
        if let Some(w) = &self.inner.webrtc {
            w.close().await;
        }
    }

    /// The WebRTC connection, when dialed over WebRTC.
    pub fn webrtc(&self) -> Option<&tether_rpc::webrtc::dial::WebRtcConnection> {
        self.inner.webrtc.as_ref()
    }
}
