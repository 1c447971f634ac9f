//! Gantry client.

use tether_proto::viam::component::gantry::v1::{self as pb, gantry_service_client::GantryServiceClient};

use super::{component_client, shared_rpcs};
use crate::robot::reply;
use crate::{Result, SessionChannel};

component_client!(
    /// A gantry on a machine: one linear axis per entry, in millimetres.
    Gantry,
    GantryServiceClient<SessionChannel>,
    GantryServiceClient::new
);

impl Gantry {
    /// The position of each axis, in millimetres.
    pub async fn position(&self) -> Result<Vec<f64>> {
        let req = pb::GetPositionRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().get_position(req).await)?.positions_mm)
    }

    /// Moves each axis to `positions_mm` at `speeds_mm_per_sec` (one per
    /// axis; empty for the model's default speed); returns when there.
    pub async fn move_to_position(&self, positions_mm: &[f64], speeds_mm_per_sec: &[f64]) -> Result<()> {
        let req = pb::MoveToPositionRequest {
            name: self.name.clone(),
            positions_mm: positions_mm.to_vec(),
            speeds_mm_per_sec: speeds_mm_per_sec.to_vec(),
            extra: None,
        };
        reply(self.client.clone().move_to_position(req).await).map(drop)
    }

    /// Runs the homing sequence; returns whether the gantry is homed.
    pub async fn home(&self) -> Result<bool> {
        let req = pb::HomeRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().home(req).await)?.homed)
    }

    /// The length of each axis, in millimetres.
    pub async fn lengths(&self) -> Result<Vec<f64>> {
        let req = pb::GetLengthsRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().get_lengths(req).await)?.lengths_mm)
    }

    /// Stops the gantry.
    pub async fn stop(&self) -> Result<()> {
        let req = pb::StopRequest { name: self.name.clone(), extra: None };
        reply(self.client.clone().stop(req).await).map(drop)
    }

    /// Whether the gantry is moving.
    pub async fn is_moving(&self) -> Result<bool> {
        let req = pb::IsMovingRequest { name: self.name.clone() };
        Ok(reply(self.client.clone().is_moving(req).await)?.is_moving)
    }

    shared_rpcs!(do_command, status, geometries, kinematics);
}
