//! `viam.component.arm.v1.ArmService`.

use futures::StreamExt;
use futures::future::ready;
use futures::stream::BoxStream;
use tether_proto::viam::common::v1 as common;
use tether_proto::viam::component::arm::v1::move_through_joint_positions_streamed_request::Message as In;
use tether_proto::viam::component::arm::v1::move_through_joint_positions_streamed_response::{
    BatchAck, Message as Out,
};
use tether_proto::viam::component::arm::v1::{self as pb, arm_service_server::ArmService};
use tonic::{Request, Status, Streaming};

use super::{
    ComponentService, Reply, do_command_response, driver_error, geometries_response, kinematics_response, msg, ok,
    status, status_response,
};
use crate::components::{Error, MoveOptions, TrajectoryPoint};
use crate::monitor::CallContext;

fn values(p: Option<pb::JointPositions>) -> Vec<f64> {
    p.map(|p| p.values).unwrap_or_default()
}

fn move_options(o: Option<pb::MoveOptions>) -> MoveOptions {
    let o = o.unwrap_or_default();
    MoveOptions {
        max_vel_degs_per_sec: o.max_vel_degs_per_sec,
        max_acc_degs_per_sec2: o.max_acc_degs_per_sec2,
        max_vel_degs_per_sec_joints: o.max_vel_degs_per_sec_joints,
        max_acc_degs_per_sec2_joints: o.max_acc_degs_per_sec2_joints,
        max_tcp_speed: o.max_tcp_speed,
    }
}

fn trajectory_point(p: pb::TrajectoryPoint) -> tether_components::Result<TrajectoryPoint> {
    let time = match p.time {
        None => std::time::Duration::ZERO,
        Some(d) => std::time::Duration::try_from(d)
            .map_err(|e| Error::invalid_argument(format!("trajectory point time is invalid: {e}")))?,
    };
    let (velocities, accelerations) = match p.constraints {
        None => (None, None),
        Some(c) => (c.velocities.map(|v| v.values), c.accelerations.map(|a| a.values)),
    };
    Ok(TrajectoryPoint { time, positions: values(p.positions), velocities, accelerations })
}

type Responses = BoxStream<'static, Result<pb::MoveThroughJointPositionsStreamedResponse, Status>>;

#[tonic::async_trait]
impl ArmService for ComponentService {
    async fn get_end_position(&self, r: Request<pb::GetEndPositionRequest>) -> Reply<pb::GetEndPositionResponse> {
        let r = msg(r);
        let pose = self.arm(&r.name)?.end_position(r.extra).await.map_err(status)?;
        ok(pb::GetEndPositionResponse { pose: Some(pose) })
    }

    async fn move_to_position(&self, r: Request<pb::MoveToPositionRequest>) -> Reply<pb::MoveToPositionResponse> {
        let r = msg(r);
        let arm = self.arm(&r.name)?;
        let pose = r.to.ok_or_else(|| Status::invalid_argument("the target pose `to` is missing"))?;
        arm.move_to_position(pose, r.extra).await.map_err(status)?;
        ok(pb::MoveToPositionResponse {})
    }

    async fn get_joint_positions(
        &self,
        r: Request<pb::GetJointPositionsRequest>,
    ) -> Reply<pb::GetJointPositionsResponse> {
        let r = msg(r);
        let values = self.arm(&r.name)?.joint_positions(r.extra).await.map_err(status)?;
        ok(pb::GetJointPositionsResponse { positions: Some(pb::JointPositions { values }) })
    }

    async fn move_to_joint_positions(
        &self,
        r: Request<pb::MoveToJointPositionsRequest>,
    ) -> Reply<pb::MoveToJointPositionsResponse> {
        let r = msg(r);
        self.arm(&r.name)?.move_to_joint_positions(values(r.positions), r.extra).await.map_err(status)?;
        ok(pb::MoveToJointPositionsResponse {})
    }

    async fn move_through_joint_positions(
        &self,
        r: Request<pb::MoveThroughJointPositionsRequest>,
    ) -> Reply<pb::MoveThroughJointPositionsResponse> {
        let r = msg(r);
        let positions = r.positions.into_iter().map(|p| p.values).collect();
        self.arm(&r.name)?
            .move_through_joint_positions(positions, move_options(r.options), r.extra)
            .await
            .map_err(status)?;
        ok(pb::MoveThroughJointPositionsResponse {})
    }

    type MoveThroughJointPositionsStreamedStream = Responses;

    /// The first message must carry `name` and `init`; every later message a
    /// batch. Each batch is acknowledged when the arm's driver takes it; the
    /// response stream ends (OK) once the client has half-closed and the arm
    /// has reached the last point. Cancelling the call (or the operation)
    /// stops the arm.
    async fn move_through_joint_positions_streamed(
        &self,
        r: Request<Streaming<pb::MoveThroughJointPositionsStreamedRequest>>,
    ) -> Reply<Responses> {
        let cancel = r.extensions().get::<CallContext>().map(|c| c.cancel.clone()).unwrap_or_default();
        let mut inbound = r.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its init message"))?;
        let arm = self.arm(&first.name)?;
        let extra = match first.message {
            Some(In::Init(init)) => init.extra,
            _ => return Err(Status::invalid_argument("the first message must carry init")),
        };

        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
        let batches = inbound
            .filter_map(move |m| {
                ready(match m {
                    Err(e) => Some(Err(driver_error(&e))),
                    Ok(m) => match m.message {
                        None => None,
                        Some(In::Init(_)) => Some(Err(Error::invalid_argument("init may only be sent once, first"))),
                        Some(In::Batch(b)) => {
                            let points = b.points.into_iter().map(trajectory_point).collect::<Result<Vec<_>, _>>();
                            if points.is_ok() {
                                let _ = ack_tx.send(pb::MoveThroughJointPositionsStreamedResponse {
                                    message: Some(Out::Ack(BatchAck { extra: None })),
                                });
                            }
                            Some(points)
                        }
                    },
                })
            })
            .boxed();
        let follow = async move {
            tokio::select! {
                r = arm.follow_trajectory(batches, extra) => r.map_err(status),
                _ = cancel.cancelled() => Err(Status::cancelled("operation cancelled")),
            }
        };
        let done = futures::stream::once(follow).filter_map(|r: Result<(), Status>| ready(r.err().map(Err)));
        let acks = futures::stream::poll_fn(move |cx| ack_rx.poll_recv(cx)).map(Ok);
        ok(futures::stream::select(acks, done).boxed())
    }

    async fn stop(&self, r: Request<pb::StopRequest>) -> Reply<pb::StopResponse> {
        let r = msg(r);
        self.arm(&r.name)?.stop(r.extra).await.map_err(status)?;
        ok(pb::StopResponse {})
    }

    async fn is_moving(&self, r: Request<pb::IsMovingRequest>) -> Reply<pb::IsMovingResponse> {
        let r = msg(r);
        let is_moving = self.arm(&r.name)?.is_moving().await.map_err(status)?;
        ok(pb::IsMovingResponse { is_moving })
    }

    async fn do_command(&self, r: Request<common::DoCommandRequest>) -> Reply<common::DoCommandResponse> {
        let r = msg(r);
        do_command_response(self.arm(&r.name)?.do_command(r.command.unwrap_or_default()).await.map_err(status)?)
    }

    async fn get_status(&self, r: Request<common::GetStatusRequest>) -> Reply<common::GetStatusResponse> {
        let r = msg(r);
        status_response(self.arm(&r.name)?.status().await.map_err(status)?)
    }

    async fn get_kinematics(&self, r: Request<common::GetKinematicsRequest>) -> Reply<common::GetKinematicsResponse> {
        let r = msg(r);
        kinematics_response(self.arm(&r.name)?.kinematics(r.extra).await.map_err(status)?)
    }

    async fn get_geometries(&self, r: Request<common::GetGeometriesRequest>) -> Reply<common::GetGeometriesResponse> {
        let r = msg(r);
        geometries_response(self.arm(&r.name)?.geometries(r.extra).await.map_err(status)?)
    }

    async fn get3_d_models(&self, r: Request<common::Get3DModelsRequest>) -> Reply<common::Get3DModelsResponse> {
        let r = msg(r);
        let models = self.arm(&r.name)?.models_3d(r.extra).await.map_err(status)?;
        ok(common::Get3DModelsResponse { models })
    }
}
