//! `viam.component.gripper.v1.GripperService`.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::gripper::v1::{self as pb, gripper_service_server::GripperService};
use tonic::Request;

use super::{
    ComponentService, Reply, do_command_response, geometries_response, kinematics_response, msg, ok, status,
    status_response,
};

#[tonic::async_trait]
impl GripperService for ComponentService {
    async fn open(&self, r: Request<pb::OpenRequest>) -> Reply<pb::OpenResponse> {
        let r = msg(r);
        self.gripper(&r.name)?.open(r.extra).await.map_err(status)?;
        ok(pb::OpenResponse {})
    }

    async fn grab(&self, r: Request<pb::GrabRequest>) -> Reply<pb::GrabResponse> {
        let r = msg(r);
        let success = self.gripper(&r.name)?.grab(r.extra).await.map_err(status)?;
        ok(pb::GrabResponse { success, extra: None })
    }

    async fn stop(&self, r: Request<pb::StopRequest>) -> Reply<pb::StopResponse> {
        let r = msg(r);
        self.gripper(&r.name)?.stop(r.extra).await.map_err(status)?;
        ok(pb::StopResponse {})
    }

    async fn is_moving(&self, r: Request<pb::IsMovingRequest>) -> Reply<pb::IsMovingResponse> {
        let r = msg(r);
        let is_moving = self.gripper(&r.name)?.is_moving().await.map_err(status)?;
        ok(pb::IsMovingResponse { is_moving })
    }

    async fn is_holding_something(
        &self,
        r: Request<pb::IsHoldingSomethingRequest>,
    ) -> Reply<pb::IsHoldingSomethingResponse> {
        let r = msg(r);
        let h = self.gripper(&r.name)?.is_holding_something(r.extra).await.map_err(status)?;
        ok(pb::IsHoldingSomethingResponse { is_holding_something: h.is_holding_something, meta: h.meta })
    }

    async fn get_current_inputs(&self, r: Request<pb::GetCurrentInputsRequest>) -> Reply<pb::GetCurrentInputsResponse> {
        let r = msg(r);
        let values = self.gripper(&r.name)?.current_inputs(r.extra).await.map_err(status)?;
        ok(pb::GetCurrentInputsResponse { values })
    }

    async fn go_to_inputs(&self, r: Request<pb::GoToInputsRequest>) -> Reply<pb::GoToInputsResponse> {
        let r = msg(r);
        self.gripper(&r.name)?.go_to_inputs(r.values, r.extra).await.map_err(status)?;
        ok(pb::GoToInputsResponse {})
    }

    async fn do_command(&self, r: Request<common::DoCommandRequest>) -> Reply<common::DoCommandResponse> {
        let r = msg(r);
        do_command_response(self.gripper(&r.name)?.do_command(r.command.unwrap_or_default()).await.map_err(status)?)
    }

    async fn get_status(&self, r: Request<common::GetStatusRequest>) -> Reply<common::GetStatusResponse> {
        let r = msg(r);
        status_response(self.gripper(&r.name)?.status().await.map_err(status)?)
    }

    async fn get_geometries(&self, r: Request<common::GetGeometriesRequest>) -> Reply<common::GetGeometriesResponse> {
        let r = msg(r);
        geometries_response(self.gripper(&r.name)?.geometries(r.extra).await.map_err(status)?)
    }

    async fn get_kinematics(&self, r: Request<common::GetKinematicsRequest>) -> Reply<common::GetKinematicsResponse> {
        let r = msg(r);
        kinematics_response(self.gripper(&r.name)?.kinematics(r.extra).await.map_err(status)?)
    }
}
