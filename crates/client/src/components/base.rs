//! Base (mobile platform) client.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::base::v1::{self as pb, base_service_client::BaseServiceClient};

use super::{component_client, shared_rpcs};
use crate::robot::reply;
use crate::{Result, SessionChannel};

component_client!(
    /// A mobile base on a machine. By Viam convention +Y of `linear` is
    /// forward and +Z of `angular` turns counter-clockwise.
    Base,
    BaseServiceClient<SessionChannel>,
    BaseServiceClient::new
);

impl Base {
    /// Drives `distance_mm` (negative: backwards) at `mm_per_sec`; returns
    /// when done.
    pub async fn move_straight(&self, distance_mm: i64, mm_per_sec: f64) -> Result<()> {
        let req = pb::MoveStraightRequest { name: self.name.clone(), distance_mm, mm_per_sec, extra: None };
        reply(self.client.clone().move_straight(req).await).map(drop)
    }

    /// Turns in place by `angle_deg` at `degs_per_sec`; returns when done.
    pub async fn spin(&self, angle_deg: f64, degs_per_sec: f64) -> Result<()> {
        let req = pb::SpinRequest { name: self.name.clone(), angle_deg, degs_per_sec, extra: None };
        reply(self.client.clone().spin(req).await).map(drop)
    }

    /// Sets linear and angular power, as fractions in −1..=1, until stopped.
    pub async fn set_power(&self, linear: common::Vector3, angular: common::Vector3) -> Result<()> {
        let req =
            pb::SetPowerRequest { name: self.name.clone(), linear: Some(linear), angular: Some(angular), extra: None };
        reply(self.client.clone().set_power(req).await).map(drop)
    }

    /// Sets linear (mm/s) and angular (deg/s) velocity until stopped.
    pub async fn set_velocity(&self, linear: common::Vector3, angular: common::Vector3) -> Result<()> {
        let req = pb::SetVelocityRequest {
            name: self.name.clone(),
            linear: Some(linear),
            angular: Some(angular),
            extra: None,
        };
        reply(self.client.clone().set_velocity(req).await).map(drop)
    }

    /// Stops the base.
    pub async fn stop(&self) -> Result<()> {
        let req = pb::StopRequest { name: self.name.clone(), extra: None };
        reply(self.client.clone().stop(req).await).map(drop)
    }

    /// Whether the base is moving.
    pub async fn is_moving(&self) -> Result<bool> {
        let req = pb::IsMovingRequest { name: self.name.clone() };
        Ok(reply(self.client.clone().is_moving(req).await)?.is_moving)
    }

    /// Width, turning radius and wheel circumference, in metres.
    pub async fn properties(&self) -> Result<pb::GetPropertiesResponse> {
        let req = pb::GetPropertiesRequest { name: self.name.clone(), extra: None };
        reply(self.client.clone().get_properties(req).await)
    }

    shared_rpcs!(do_command, status, geometries);
}
