//! `viam.component.motor.v1.MotorService`.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::motor::v1::{self as pb, motor_service_server::MotorService};
use tonic::Request;

use super::{ComponentService, Reply, do_command_response, geometries_response, msg, ok, status, status_response};

#[tonic::async_trait]
impl MotorService for ComponentService {
    async fn set_power(&self, r: Request<pb::SetPowerRequest>) -> Reply<pb::SetPowerResponse> {
        let r = msg(r);
        self.motor(&r.name)?.set_power(r.power_pct, r.extra).await.map_err(status)?;
        ok(pb::SetPowerResponse {})
    }

    async fn go_for(&self, r: Request<pb::GoForRequest>) -> Reply<pb::GoForResponse> {
        let r = msg(r);
        self.motor(&r.name)?.go_for(r.rpm, r.revolutions, r.extra).await.map_err(status)?;
        ok(pb::GoForResponse {})
    }

    async fn go_to(&self, r: Request<pb::GoToRequest>) -> Reply<pb::GoToResponse> {
        let r = msg(r);
        self.motor(&r.name)?.go_to(r.rpm, r.position_revolutions, r.extra).await.map_err(status)?;
        ok(pb::GoToResponse {})
    }

    async fn set_rpm(&self, r: Request<pb::SetRpmRequest>) -> Reply<pb::SetRpmResponse> {
        let r = msg(r);
        self.motor(&r.name)?.set_rpm(r.rpm, r.extra).await.map_err(status)?;
        ok(pb::SetRpmResponse {})
    }

    async fn reset_zero_position(
        &self,
        r: Request<pb::ResetZeroPositionRequest>,
    ) -> Reply<pb::ResetZeroPositionResponse> {
        let r = msg(r);
        self.motor(&r.name)?.reset_zero_position(r.offset, r.extra).await.map_err(status)?;
        ok(pb::ResetZeroPositionResponse {})
    }

    async fn get_position(&self, r: Request<pb::GetPositionRequest>) -> Reply<pb::GetPositionResponse> {
        let r = msg(r);
        let position = self.motor(&r.name)?.position(r.extra).await.map_err(status)?;
        ok(pb::GetPositionResponse { position })
    }

    async fn get_properties(&self, r: Request<pb::GetPropertiesRequest>) -> Reply<pb::GetPropertiesResponse> {
        let r = msg(r);
        let p = self.motor(&r.name)?.properties(r.extra).await.map_err(status)?;
        ok(pb::GetPropertiesResponse { position_reporting: p.position_reporting })
    }

    async fn stop(&self, r: Request<pb::StopRequest>) -> Reply<pb::StopResponse> {
        let r = msg(r);
        self.motor(&r.name)?.stop(r.extra).await.map_err(status)?;
        ok(pb::StopResponse {})
    }

    async fn is_powered(&self, r: Request<pb::IsPoweredRequest>) -> Reply<pb::IsPoweredResponse> {
        let r = msg(r);
        let (is_on, power_pct) = self.motor(&r.name)?.is_powered(r.extra).await.map_err(status)?;
        ok(pb::IsPoweredResponse { is_on, power_pct })
    }

    async fn is_moving(&self, r: Request<pb::IsMovingRequest>) -> Reply<pb::IsMovingResponse> {
        let r = msg(r);
        let is_moving = self.motor(&r.name)?.is_moving().await.map_err(status)?;
        ok(pb::IsMovingResponse { is_moving })
    }

    async fn do_command(&self, r: Request<common::DoCommandRequest>) -> Reply<common::DoCommandResponse> {
        let r = msg(r);
        do_command_response(self.motor(&r.name)?.do_command(r.command.unwrap_or_default()).await.map_err(status)?)
    }

    async fn get_status(&self, r: Request<common::GetStatusRequest>) -> Reply<common::GetStatusResponse> {
        let r = msg(r);
        status_response(self.motor(&r.name)?.status().await.map_err(status)?)
    }

    async fn get_geometries(&self, r: Request<common::GetGeometriesRequest>) -> Reply<common::GetGeometriesResponse> {
        let r = msg(r);
        geometries_response(self.motor(&r.name)?.geometries(r.extra).await.map_err(status)?)
    }
}
