//! `viam.component.servo.v1.ServoService`.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::servo::v1::{self as pb, servo_service_server::ServoService};
use tonic::Request;

use super::{ComponentService, Reply, do_command_response, geometries_response, msg, ok, status, status_response};

#[tonic::async_trait]
impl ServoService for ComponentService {
    async fn r#move(&self, r: Request<pb::MoveRequest>) -> Reply<pb::MoveResponse> {
        let r = msg(r);
        self.servo(&r.name)?.move_to(r.angle_deg, r.extra).await.map_err(status)?;
        ok(pb::MoveResponse {})
    }

    async fn get_position(&self, r: Request<pb::GetPositionRequest>) -> Reply<pb::GetPositionResponse> {
        let r = msg(r);
        let position_deg = self.servo(&r.name)?.position(r.extra).await.map_err(status)?;
        ok(pb::GetPositionResponse { position_deg })
    }

    async fn stop(&self, r: Request<pb::StopRequest>) -> Reply<pb::StopResponse> {
        let r = msg(r);
        self.servo(&r.name)?.stop(r.extra).await.map_err(status)?;
        ok(pb::StopResponse {})
    }

    async fn is_moving(&self, r: Request<pb::IsMovingRequest>) -> Reply<pb::IsMovingResponse> {
        let r = msg(r);
        let is_moving = self.servo(&r.name)?.is_moving().await.map_err(status)?;
        ok(pb::IsMovingResponse { is_moving })
    }

    async fn do_command(&self, r: Request<common::DoCommandRequest>) -> Reply<common::DoCommandResponse> {
        let r = msg(r);
        do_command_response(self.servo(&r.name)?.do_command(r.command.unwrap_or_default()).await.map_err(status)?)
    }

    async fn get_status(&self, r: Request<common::GetStatusRequest>) -> Reply<common::GetStatusResponse> {
        let r = msg(r);
        status_response(self.servo(&r.name)?.status().await.map_err(status)?)
    }

    async fn get_geometries(&self, r: Request<common::GetGeometriesRequest>) -> Reply<common::GetGeometriesResponse> {
        let r = msg(r);
        geometries_response(self.servo(&r.name)?.geometries(r.extra).await.map_err(status)?)
    }
}
