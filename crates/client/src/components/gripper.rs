//! Gripper client.

use tether_proto::viam::component::gripper::v1::{self as pb, gripper_service_client::GripperServiceClient};

use super::{component_client, shared_rpcs};
use crate::robot::reply;
use crate::{Result, SessionChannel};

component_client!(
    /// A gripper on a machine.
    Gripper,
    GripperServiceClient<SessionChannel>,
    GripperServiceClient::new
);

impl Gripper {
    /// Opens the gripper; returns when open.
    pub async fn open(&self) -> Result<()> {
        let req = pb::OpenRequest { name: self.name.clone(), extra: None };
        reply(self.client.clone().open(req).await).map(drop)
    }

    /// Closes the gripper; returns whether it grabbed something.
    pub async fn grab(&self) -> Result<bool> {
        let req = pb::GrabRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().grab(req).await)?.success)
    }

    /// Stops the gripper.
    pub async fn stop(&self) -> Result<()> {
        let req = pb::StopRequest { name: self.name.clone(), extra: None };
        reply(self.client.clone().stop(req).await).map(drop)
    }

    /// Whether the gripper is moving.
    pub async fn is_moving(&self) -> Result<bool> {
        let req = pb::IsMovingRequest { name: self.name.clone() };
        Ok(reply(self.client.clone().is_moving(req).await)?.is_moving)
    }

    /// Whether the gripper holds something.
    pub async fn is_holding_something(&self) -> Result<bool> {
        let req = pb::IsHoldingSomethingRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().is_holding_something(req).await)?.is_holding_something)
    }

    /// The gripper's input values (e.g. finger positions).
    pub async fn current_inputs(&self) -> Result<Vec<f64>> {
        let req = pb::GetCurrentInputsRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().get_current_inputs(req).await)?.values)
    }

    /// Moves the gripper's inputs to `values`; returns when there.
    pub async fn go_to_inputs(&self, values: &[f64]) -> Result<()> {
        let req = pb::GoToInputsRequest { name: self.name.clone(), values: values.to_vec(), extra: None };
        reply(self.client.clone().go_to_inputs(req).await).map(drop)
    }

    shared_rpcs!(do_command, status, geometries, kinematics);
}
