//! `viam.component.gantry.v1.GantryService`.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::gantry::v1::{self as pb, gantry_service_server::GantryService};
use tonic::Request;

use super::{
    ComponentService, Reply, do_command_response, geometries_response, kinematics_response, msg, ok, status,
    status_response,
};

#[tonic::async_trait]
impl GantryService for ComponentService {
    async fn get_position(&self, r: Request<pb::GetPositionRequest>) -> Reply<pb::GetPositionResponse> {
        let r = msg(r);
        let positions_mm = self.gantry(&r.name)?.position(r.extra).await.map_err(status)?;
        ok(pb::GetPositionResponse { positions_mm })
    }

    async fn move_to_position(&self, r: Request<pb::MoveToPositionRequest>) -> Reply<pb::MoveToPositionResponse> {
        let r = msg(r);
        self.gantry(&r.name)?.move_to_position(r.positions_mm, r.speeds_mm_per_sec, r.extra).await.map_err(status)?;
        ok(pb::MoveToPositionResponse {})
    }

    async fn home(&self, r: Request<pb::HomeRequest>) -> Reply<pb::HomeResponse> {
        let r = msg(r);
        let homed = self.gantry(&r.name)?.home(r.extra).await.map_err(status)?;
        ok(pb::HomeResponse { homed })
    }

    async fn get_lengths(&self, r: Request<pb::GetLengthsRequest>) -> Reply<pb::GetLengthsResponse> {
        let r = msg(r);
        let lengths_mm = self.gantry(&r.name)?.lengths(r.extra).await.map_err(status)?;
        ok(pb::GetLengthsResponse { lengths_mm })
    }

    async fn stop(&self, r: Request<pb::StopRequest>) -> Reply<pb::StopResponse> {
        let r = msg(r);
        self.gantry(&r.name)?.stop(r.extra).await.map_err(status)?;
        ok(pb::StopResponse {})
    }

    async fn is_moving(&self, r: Request<pb::IsMovingRequest>) -> Reply<pb::IsMovingResponse> {
        let r = msg(r);
        let is_moving = self.gantry(&r.name)?.is_moving().await.map_err(status)?;
        ok(pb::IsMovingResponse { is_moving })
    }

    async fn do_command(&self, r: Request<common::DoCommandRequest>) -> Reply<common::DoCommandResponse> {
        let r = msg(r);
        do_command_response(self.gantry(&r.name)?.do_command(r.command.unwrap_or_default()).await.map_err(status)?)
    }

    async fn get_status(&self, r: Request<common::GetStatusRequest>) -> Reply<common::GetStatusResponse> {
        let r = msg(r);
        status_response(self.gantry(&r.name)?.status().await.map_err(status)?)
    }

    async fn get_kinematics(&self, r: Request<common::GetKinematicsRequest>) -> Reply<common::GetKinematicsResponse> {
        let r = msg(r);
        kinematics_response(self.gantry(&r.name)?.kinematics(r.extra).await.map_err(status)?)
    }

    async fn get_geometries(&self, r: Request<common::GetGeometriesRequest>) -> Reply<common::GetGeometriesResponse> {
        let r = msg(r);
        geometries_response(self.gantry(&r.name)?.geometries(r.extra).await.map_err(status)?)
    }
}
