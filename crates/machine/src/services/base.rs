//! `viam.component.base.v1.BaseService`.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::base::v1::{self as pb, base_service_server::BaseService};
use tonic::Request;

use super::{ComponentService, Reply, do_command_response, geometries_response, msg, ok, status, status_response};

#[tonic::async_trait]
impl BaseService for ComponentService {
    async fn move_straight(&self, r: Request<pb::MoveStraightRequest>) -> Reply<pb::MoveStraightResponse> {
        let r = msg(r);
        self.base(&r.name)?.move_straight(r.distance_mm, r.mm_per_sec, r.extra).await.map_err(status)?;
        ok(pb::MoveStraightResponse {})
    }

    async fn spin(&self, r: Request<pb::SpinRequest>) -> Reply<pb::SpinResponse> {
        let r = msg(r);
        self.base(&r.name)?.spin(r.angle_deg, r.degs_per_sec, r.extra).await.map_err(status)?;
        ok(pb::SpinResponse {})
    }

    async fn set_power(&self, r: Request<pb::SetPowerRequest>) -> Reply<pb::SetPowerResponse> {
        let r = msg(r);
        self.base(&r.name)?
            .set_power(r.linear.unwrap_or_default(), r.angular.unwrap_or_default(), r.extra)
            .await
            .map_err(status)?;
        ok(pb::SetPowerResponse {})
    }

    async fn set_velocity(&self, r: Request<pb::SetVelocityRequest>) -> Reply<pb::SetVelocityResponse> {
        let r = msg(r);
        self.base(&r.name)?
            .set_velocity(r.linear.unwrap_or_default(), r.angular.unwrap_or_default(), r.extra)
            .await
            .map_err(status)?;
        ok(pb::SetVelocityResponse {})
    }

    async fn stop(&self, r: Request<pb::StopRequest>) -> Reply<pb::StopResponse> {
        let r = msg(r);
        self.base(&r.name)?.stop(r.extra).await.map_err(status)?;
        ok(pb::StopResponse {})
    }

    async fn is_moving(&self, r: Request<pb::IsMovingRequest>) -> Reply<pb::IsMovingResponse> {
        let r = msg(r);
        let is_moving = self.base(&r.name)?.is_moving().await.map_err(status)?;
        ok(pb::IsMovingResponse { is_moving })
    }

    async fn get_properties(&self, r: Request<pb::GetPropertiesRequest>) -> Reply<pb::GetPropertiesResponse> {
        let r = msg(r);
        let p = self.base(&r.name)?.properties(r.extra).await.map_err(status)?;
        ok(pb::GetPropertiesResponse {
            width_meters: p.width_meters,
            turning_radius_meters: p.turning_radius_meters,
            wheel_circumference_meters: p.wheel_circumference_meters,
        })
    }

    async fn do_command(&self, r: Request<common::DoCommandRequest>) -> Reply<common::DoCommandResponse> {
        let r = msg(r);
        do_command_response(self.base(&r.name)?.do_command(r.command.unwrap_or_default()).await.map_err(status)?)
    }

    async fn get_status(&self, r: Request<common::GetStatusRequest>) -> Reply<common::GetStatusResponse> {
        let r = msg(r);
        status_response(self.base(&r.name)?.status().await.map_err(status)?)
    }

    async fn get_geometries(&self, r: Request<common::GetGeometriesRequest>) -> Reply<common::GetGeometriesResponse> {
        let r = msg(r);
        geometries_response(self.base(&r.name)?.geometries(r.extra).await.map_err(status)?)
    }
}
