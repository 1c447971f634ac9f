//! Motor client.

use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::motor::v1::{self as pb, motor_service_client::MotorServiceClient};

use crate::robot::reply;
use crate::{Result, RobotClient, SessionChannel};

/// A motor on a machine.
#[derive(Clone, Debug)]
pub struct Motor {
    name: String,
    client: MotorServiceClient<SessionChannel>,
}

impl super::FromRobot for Motor {
    fn from_robot(robot: &RobotClient, name: &str) -> Self {
        Self::from_robot(robot, name)
    }
}

impl Motor {
    /// The motor called `name` on `robot`.
    pub fn from_robot(robot: &RobotClient, name: &str) -> Self {
        Self { name: name.to_owned(), client: MotorServiceClient::new(robot.channel()) }
    }

    /// The component name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the power fraction (−1..=1).
    pub async fn set_power(&self, power_pct: f64) -> Result<()> {
        let req = pb::SetPowerRequest { name: self.name.clone(), power_pct, extra: None };
        reply(self.client.clone().set_power(req).await).map(drop)
    }

    /// Turns `revolutions` at `rpm`; returns when done.
    pub async fn go_for(&self, rpm: f64, revolutions: f64) -> Result<()> {
        let req = pb::GoForRequest { name: self.name.clone(), rpm, revolutions, extra: None };
        reply(self.client.clone().go_for(req).await).map(drop)
    }

    /// Moves to `position_revolutions` at `rpm`; returns when there.
    pub async fn go_to(&self, rpm: f64, position_revolutions: f64) -> Result<()> {
        let req = pb::GoToRequest { name: self.name.clone(), rpm, position_revolutions, extra: None };
        reply(self.client.clone().go_to(req).await).map(drop)
    }

    /// Runs at `rpm` until stopped.
    pub async fn set_rpm(&self, rpm: f64) -> Result<()> {
        let req = pb::SetRpmRequest { name: self.name.clone(), rpm, extra: None };
        reply(self.client.clone().set_rpm(req).await).map(drop)
    }

    /// Makes the current position read as `offset`.
    pub async fn reset_zero_position(&self, offset: f64) -> Result<()> {
        let req = pb::ResetZeroPositionRequest { name: self.name.clone(), offset, extra: None };
        reply(self.client.clone().reset_zero_position(req).await).map(drop)
    }

    /// Position in revolutions.
    pub async fn position(&self) -> Result<f64> {
        let req = pb::GetPositionRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().get_position(req).await)?.position)
    }

    /// Whether the motor reports its position.
    pub async fn properties(&self) -> Result<pb::GetPropertiesResponse> {
        let req = pb::GetPropertiesRequest { name: self.name.clone(), extra: None };
        reply(self.client.clone().get_properties(req).await)
    }

    /// Stops the motor.
    pub async fn stop(&self) -> Result<()> {
        let req = pb::StopRequest { name: self.name.clone(), extra: None };
        reply(self.client.clone().stop(req).await).map(drop)
    }

    /// `(is_on, power_pct)`.
    pub async fn is_powered(&self) -> Result<(bool, f64)> {
        let req = pb::IsPoweredRequest { name: self.name.clone(), extra: None };
        let r = reply(self.client.clone().is_powered(req).await)?;
        Ok((r.is_on, r.power_pct))
    }

    /// Whether the motor is turning.
    pub async fn is_moving(&self) -> Result<bool> {
        let req = pb::IsMovingRequest { name: self.name.clone() };
        Ok(reply(self.client.clone().is_moving(req).await)?.is_moving)
    }

    /// Model-specific command.
    pub async fn do_command(&self, command: prost_types::Struct) -> Result<prost_types::Struct> {
        let req = common::DoCommandRequest { name: self.name.clone(), command: Some(command) };
        Ok(reply(self.client.clone().do_command(req).await)?.result.unwrap_or_default())
    }

    /// [`do_command`](Self::do_command) with JSON in and out. The command
    /// must be a JSON object (`INVALID_ARGUMENT` otherwise, without a call).
    pub async fn do_command_json(&self, command: &serde_json::Value) -> Result<serde_json::Value> {
        let command = super::convert::json_to_struct(command)
            .ok_or_else(|| crate::Error::Status(tonic::Status::invalid_argument("a command must be a JSON object")))?;
        Ok(super::convert::struct_to_json(&self.do_command(command).await?))
    }

    /// Free-form status.
    pub async fn status(&self) -> Result<prost_types::Struct> {
        let req = common::GetStatusRequest { name: self.name.clone() };
        Ok(reply(self.client.clone().get_status(req).await)?.result.unwrap_or_default())
    }

    /// Geometries.
    pub async fn geometries(&self) -> Result<Vec<common::Geometry>> {
        let req = common::GetGeometriesRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().get_geometries(req).await)?.geometries)
    }
}
