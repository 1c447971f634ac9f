//! `viam.robot.v1.RobotService`: resources, operations, sessions, status.

use std::sync::Arc;
use std::time::SystemTime;

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::robot::v1::{self as pb, robot_service_server::RobotService};
use tonic::{Request, Status};

use super::{Reply, ok};
use crate::monitor::CallContext;
use crate::operations::Operations;
use crate::resource::Resources;
use crate::session::{PeerInfo, SessionManager};

/// API version tether's protos follow.
pub const API_VERSION: &str = "v0.1.577";

/// The robot service of one machine.
#[derive(Clone, Debug)]
pub struct RobotServer {
    pub(crate) resources: Arc<Resources>,
    pub(crate) sessions: SessionManager,
    pub(crate) operations: Operations,
    pub(crate) started: SystemTime,
    pub(crate) metrics: Arc<crate::metrics::MachineMetrics>,
}

fn owner<T>(r: &Request<T>) -> String {
    crate::monitor::identity(r.extensions().get(), r.extensions().get())
}

fn peer<T>(r: &Request<T>) -> PeerInfo {
    match r.extensions().get::<tether_transport::ConnectionInfo>() {
        Some(c) => {
            PeerInfo { webrtc: c.kind == tether_transport::TransportKind::WebRtc, remote: c.remote, local: c.local }
        }
        None => PeerInfo::default(),
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn unimplemented<T>(method: &str) -> Reply<T> {
    Err(Status::unimplemented(format!("RobotService/{method} is not implemented by tether")))
}

type BoxStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RobotService for RobotServer {
    async fn get_operations(&self, r: Request<pb::GetOperationsRequest>) -> Reply<pb::GetOperationsResponse> {
        // A session id is a secret of its owner: other callers see the
        // operation without it.
        let caller = owner(&r);
        let operations = self
            .operations
            .list()
            .into_iter()
            .map(|o| pb::Operation {
                id: o.id.to_string(),
                method: o.method,
                arguments: Some(prost_types::Struct::default()),
                started: Some(timestamp(o.started)),
                session_id: o.session.filter(|s| self.sessions.is_owner(*s, &caller)).map(|s| s.to_string()),
            })
            .collect();
        ok(pb::GetOperationsResponse { operations })
    }

    async fn get_sessions(&self, r: Request<pb::GetSessionsRequest>) -> Reply<pb::GetSessionsResponse> {
        // Every live session is listed with its peer, but only the caller's
        // own with its id: an id is what heartbeats and resumes a session.
        let caller = owner(&r);
        let sessions = self
            .sessions
            .list()
            .into_iter()
            .map(|s| pb::Session {
                id: if crate::session::owners_match(&s.owner, &caller) { s.id.to_string() } else { String::new() },
                peer_connection_info: Some(pb::PeerConnectionInfo {
                    r#type: if s.peer.webrtc {
                        pb::PeerConnectionType::Webrtc as i32
                    } else {
                        pb::PeerConnectionType::Grpc as i32
                    },
                    remote_address: s.peer.remote.map(|a| a.to_string()),
                    local_address: s.peer.local.map(|a| a.to_string()),
                }),
            })
            .collect();
        ok(pb::GetSessionsResponse { sessions })
    }

    async fn resource_names(&self, _r: Request<pb::ResourceNamesRequest>) -> Reply<pb::ResourceNamesResponse> {
        ok(pb::ResourceNamesResponse { resources: self.resources.names() })
    }

    async fn resource_rpc_subtypes(
        &self,
        _r: Request<pb::ResourceRpcSubtypesRequest>,
    ) -> Reply<pb::ResourceRpcSubtypesResponse> {
        let mut seen = std::collections::BTreeMap::new();
        for (_, c) in self.resources.iter() {
            seen.insert(c.subtype(), c.service());
        }
        let resource_rpc_subtypes = seen
            .into_iter()
            .map(|(subtype, service)| pb::ResourceRpcSubtype {
                subtype: Some(common::ResourceName {
                    namespace: "rdk".into(),
                    r#type: "component".into(),
                    subtype: subtype.into(),
                    name: String::new(),
                }),
                proto_service: service.into(),
            })
            .collect();
        ok(pb::ResourceRpcSubtypesResponse { resource_rpc_subtypes })
    }

    async fn cancel_operation(&self, r: Request<pb::CancelOperationRequest>) -> Reply<pb::CancelOperationResponse> {
        self.operations.cancel(&r.into_inner().id);
        ok(pb::CancelOperationResponse {})
    }

    async fn block_for_operation(
        &self,
        r: Request<pb::BlockForOperationRequest>,
    ) -> Reply<pb::BlockForOperationResponse> {
        self.operations.wait(&r.into_inner().id).await;
        ok(pb::BlockForOperationResponse {})
    }

    async fn get_models_from_modules(
        &self,
        _r: Request<pb::GetModelsFromModulesRequest>,
    ) -> Reply<pb::GetModelsFromModulesResponse> {
        ok(pb::GetModelsFromModulesResponse { models: Vec::new() })
    }

    async fn get_status(&self, _r: Request<pb::GetStatusRequest>) -> Reply<pb::GetStatusResponse> {
        unimplemented("GetStatus")
    }

    type StreamStatusStream = BoxStream<pb::StreamStatusResponse>;

    async fn stream_status(&self, _r: Request<pb::StreamStatusRequest>) -> Reply<Self::StreamStatusStream> {
        unimplemented("StreamStatus")
    }

    async fn stop_all(&self, r: Request<pb::StopAllRequest>) -> Reply<pb::StopAllResponse> {
        let own = r.extensions().get::<CallContext>().and_then(|c| c.operation);
        self.operations.cancel_all_except(own);
        let extras: std::collections::HashMap<String, prost_types::Struct> = r
            .into_inner()
            .extra
            .into_iter()
            .filter_map(|e| Some((e.name?.name, e.params.unwrap_or_default())))
            .collect();
        let mut failures = Vec::new();
        for (name, c) in self.resources.iter() {
            let extra = extras.get(name).cloned();
            if let Some(Err(e)) = c.stop(extra).await {
                failures.push(format!("{name}: {}", e.message()));
            }
        }
        if failures.is_empty() {
            ok(pb::StopAllResponse {})
        } else {
            Err(Status::internal(format!("failed to stop: {}", failures.join("; "))))
        }
    }

    async fn start_session(&self, r: Request<pb::StartSessionRequest>) -> Reply<pb::StartSessionResponse> {
        let (owner, peer) = (owner(&r), peer(&r));
        let resume = r.into_inner().resume;
        let (id, window) = self.sessions.start(&owner, &resume, peer)?;
        if !resume.is_empty() && resume == id.to_string() {
            self.metrics.sessions_resumed.inc();
        } else {
            self.metrics.sessions_started.inc();
        }
        let heartbeat_window = prost_types::Duration::try_from(window)
            .map_err(|e| Status::internal(format!("window out of range: {e}")))?;
        ok(pb::StartSessionResponse { id: id.to_string(), heartbeat_window: Some(heartbeat_window) })
    }

    async fn send_session_heartbeat(
        &self,
        r: Request<pb::SendSessionHeartbeatRequest>,
    ) -> Reply<pb::SendSessionHeartbeatResponse> {
        let (owner, peer) = (owner(&r), peer(&r));
        self.sessions.heartbeat(&r.into_inner().id, &owner, Some(peer))?;
        ok(pb::SendSessionHeartbeatResponse {})
    }

    async fn log(&self, r: Request<pb::LogRequest>) -> Reply<pb::LogResponse> {
        for entry in r.into_inner().logs {
            tracing::info!(target: "remote", logger = %entry.logger_name, level = %entry.level, "{}", entry.message);
        }
        ok(pb::LogResponse {})
    }

    async fn get_cloud_metadata(
        &self,
        _r: Request<pb::GetCloudMetadataRequest>,
    ) -> Reply<pb::GetCloudMetadataResponse> {
        Err(Status::failed_precondition("this machine has no cloud configuration"))
    }

    async fn restart_module(&self, _r: Request<pb::RestartModuleRequest>) -> Reply<pb::RestartModuleResponse> {
        unimplemented("RestartModule")
    }

    async fn shutdown(&self, _r: Request<pb::ShutdownRequest>) -> Reply<pb::ShutdownResponse> {
        unimplemented("Shutdown")
    }

    async fn get_machine_status(
        &self,
        _r: Request<pb::GetMachineStatusRequest>,
    ) -> Reply<pb::GetMachineStatusResponse> {
        let started = Some(timestamp(self.started));
        let resources = self
            .resources
            .names()
            .into_iter()
            .map(|name| pb::ResourceStatus {
                name: Some(name),
                state: pb::resource_status::State::Ready as i32,
                last_updated: started,
                revision: String::new(),
                error: String::new(),
                cloud_metadata: None,
            })
            .collect();
        ok(pb::GetMachineStatusResponse {
            resources,
            config: Some(pb::ConfigStatus { revision: String::new(), last_updated: started }),
            state: pb::get_machine_status_response::State::Running as i32,
            job_statuses: Vec::new(),
            modules: Vec::new(),
            packages: Vec::new(),
        })
    }

    async fn get_version(&self, _r: Request<pb::GetVersionRequest>) -> Reply<pb::GetVersionResponse> {
        ok(pb::GetVersionResponse {
            platform: "tether".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: API_VERSION.into(),
        })
    }

    type TunnelStream = BoxStream<pb::TunnelResponse>;

    async fn tunnel(&self, _r: Request<tonic::Streaming<pb::TunnelRequest>>) -> Reply<Self::TunnelStream> {
        unimplemented("Tunnel")
    }

    async fn list_tunnels(&self, _r: Request<pb::ListTunnelsRequest>) -> Reply<pb::ListTunnelsResponse> {
        ok(pb::ListTunnelsResponse { tunnels: Vec::new() })
    }

    async fn frame_system_config(
        &self,
        _r: Request<pb::FrameSystemConfigRequest>,
    ) -> Reply<pb::FrameSystemConfigResponse> {
        unimplemented("FrameSystemConfig")
    }

    async fn get_pose(&self, _r: Request<pb::GetPoseRequest>) -> Reply<pb::GetPoseResponse> {
        unimplemented("GetPose")
    }

    async fn transform_pose(&self, _r: Request<pb::TransformPoseRequest>) -> Reply<pb::TransformPoseResponse> {
        unimplemented("TransformPose")
    }

    async fn transform_pcd(&self, _r: Request<pb::TransformPcdRequest>) -> Reply<pb::TransformPcdResponse> {
        unimplemented("TransformPCD")
    }

    async fn send_traces(&self, _r: Request<pb::SendTracesRequest>) -> Reply<pb::SendTracesResponse> {
        unimplemented("SendTraces")
    }

    async fn upload_data_from_path(
        &self,
        _r: Request<pb::UploadDataFromPathRequest>,
    ) -> Reply<pb::UploadDataFromPathResponse> {
        unimplemented("UploadDataFromPath")
    }
}
