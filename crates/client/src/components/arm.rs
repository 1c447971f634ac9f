//! Arm client.

use futures::StreamExt;
use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::arm::v1::{
    self as pb, arm_service_client::ArmServiceClient, move_through_joint_positions_streamed_request as streamed,
    move_through_joint_positions_streamed_response as streamed_response,
};

use super::{component_client, shared_rpcs};
use crate::robot::reply;
use crate::{Result, SessionChannel};

component_client!(
    /// An arm on a machine: end-effector poses in millimetres and degrees,
    /// joint positions in degrees (revolute) or millimetres (prismatic).
    Arm,
    ArmServiceClient<SessionChannel>,
    ArmServiceClient::new
);

impl Arm {
    /// The pose of the end effector.
    pub async fn get_end_position(&self) -> Result<common::Pose> {
        let req = pb::GetEndPositionRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().get_end_position(req).await)?.pose.unwrap_or_default())
    }

    /// Moves the end effector to `pose`; returns when there.
    pub async fn move_to_position(&self, pose: common::Pose) -> Result<()> {
        let req = pb::MoveToPositionRequest { name: self.name.clone(), to: Some(pose), extra: None };
        reply(self.client.clone().move_to_position(req).await).map(drop)
    }

    /// The current joint positions.
    pub async fn joint_positions(&self) -> Result<Vec<f64>> {
        let req = pb::GetJointPositionsRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().get_joint_positions(req).await)?.positions.unwrap_or_default().values)
    }

    /// Moves the joints to `positions`; returns when there.
    pub async fn move_to_joint_positions(&self, positions: &[f64]) -> Result<()> {
        let req = pb::MoveToJointPositionsRequest {
            name: self.name.clone(),
            positions: Some(pb::JointPositions { values: positions.to_vec() }),
            extra: None,
        };
        reply(self.client.clone().move_to_joint_positions(req).await).map(drop)
    }

    /// Moves the joints through each of `waypoints` in order; returns at the
    /// last one. `options` limits speeds and accelerations.
    pub async fn move_through_joint_positions(
        &self,
        waypoints: &[Vec<f64>],
        options: Option<pb::MoveOptions>,
    ) -> Result<()> {
        let req = pb::MoveThroughJointPositionsRequest {
            name: self.name.clone(),
            positions: waypoints.iter().map(|w| pb::JointPositions { values: w.clone() }).collect(),
            options,
            extra: None,
        };
        reply(self.client.clone().move_through_joint_positions(req).await).map(drop)
    }

    /// Streams a timed trajectory (`MoveThroughJointPositionsStreamed`): an
    /// `Init` message, then one message per batch of points, then the end of
    /// the stream. Returns when the machine closes its side, which it does
    /// once the trajectory is done, with the number of batch acknowledgements
    /// it sent (machines may send none).
    pub async fn move_through_joint_positions_streamed(&self, batches: Vec<Vec<pb::TrajectoryPoint>>) -> Result<usize> {
        let name = self.name.clone();
        let first = pb::MoveThroughJointPositionsStreamedRequest {
            name: name.clone(),
            message: Some(streamed::Message::Init(streamed::Init { extra: None })),
        };
        let rest = batches.into_iter().map(move |points| pb::MoveThroughJointPositionsStreamedRequest {
            name: name.clone(),
            message: Some(streamed::Message::Batch(streamed::TrajectoryBatch { points })),
        });
        let requests = futures::stream::iter(std::iter::once(first).chain(rest));
        let mut responses = reply(self.client.clone().move_through_joint_positions_streamed(requests).await)?;
        let mut acks = 0;
        while let Some(msg) = responses.next().await {
            if let Some(streamed_response::Message::Ack(_)) = msg?.message {
                acks += 1;
            }
        }
        Ok(acks)
    }

    /// Stops the arm.
    pub async fn stop(&self) -> Result<()> {
        let req = pb::StopRequest { name: self.name.clone(), extra: None };
        reply(self.client.clone().stop(req).await).map(drop)
    }

    /// Whether the arm is moving.
    pub async fn is_moving(&self) -> Result<bool> {
        let req = pb::IsMovingRequest { name: self.name.clone() };
        Ok(reply(self.client.clone().is_moving(req).await)?.is_moving)
    }

    /// 3D models of the arm's links, by name.
    pub async fn models_3d(&self) -> Result<std::collections::HashMap<String, common::Mesh>> {
        let req = common::Get3DModelsRequest { name: self.name.clone(), extra: None };
        Ok(reply(self.client.clone().get3_d_models(req).await)?.models)
    }

    shared_rpcs!(do_command, status, geometries, kinematics);
}
