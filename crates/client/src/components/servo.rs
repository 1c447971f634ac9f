//! Servo client.

use tether_proto::viam::component::servo::v1::{self as pb, servo_service_client::ServoServiceClient};

use super::{component_client, shared_rpcs};
use crate::robot::reply;
use crate::{Result, SessionChannel};

component_client!(
    /// A hobby servo on a machine: whole degrees.
    Servo,
    ServoServiceClient<SessionChannel>,
    ServoServiceClient::new
);

impl Servo {
    /// Moves to `angle_deg`; returns when there.
    pub async fn move_to(&self, angle_deg: u32) -> Result<()> {
        let req = pb::MoveRequest { name: self.name.clone(), angle_deg, extra: None };
        reply(self.client.clone().r#move(req).await).map(drop)
    }

    /// The current angle in degrees.
    pub async fn position(&self) -> Result<u32> {
        let req = pb::GetPositionRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().get_position(req).await)?.position_deg)
    }

    /// Stops the servo.
    pub async fn stop(&self) -> Result<()> {
        let req = pb::StopRequest { name: self.name.clone(), extra: None };
        reply(self.client.clone().stop(req).await).map(drop)
    }

    /// Whether the servo is moving.
    pub async fn is_moving(&self) -> Result<bool> {
        let req = pb::IsMovingRequest { name: self.name.clone() };
        Ok(reply(self.client.clone().is_moving(req).await)?.is_moving)
    }

    shared_rpcs!(do_command, status, geometries);
}
