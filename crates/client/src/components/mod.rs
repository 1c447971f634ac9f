//! Typed component clients. Each wraps the tonic-generated stub of its API
//! over the robot's [`SessionChannel`](crate::SessionChannel), so sessions,
//! credentials and status codes behave the same for every component.
//!
//! Every client is built the same way, from a connected robot and the
//! component's name, and has one async method per RPC:
//!
//! ```no_run
//! # async fn run(robot: tether_client::RobotClient) -> Result<(), tether_client::Error> {
//! use tether_client::components::{Arm, Sensor};
//! let arm = Arm::from_robot(&robot, "arm1");
//! arm.move_to_joint_positions(&[10.0, 20.0, 30.0, 0.0, 0.0, 0.0]).await?;
//! println!("joints: {:?}", arm.joint_positions().await?);
//! let sensor = Sensor::from_robot(&robot, "sensor1");
//! println!("readings: {}", sensor.readings_json().await?);
//! # Ok(()) }
//! ```

use prost_types::Struct;

use crate::RobotClient;

pub mod arm;
pub mod base;
pub mod button;
pub mod camera;
pub mod convert;
pub mod gantry;
pub mod generic;
pub mod gripper;
pub mod motor;
pub mod sensor;
pub mod servo;
pub mod switch;

pub use arm::Arm;
pub use base::Base;
pub use button::Button;
pub use camera::Camera;
pub use gantry::Gantry;
pub use generic::Generic;
pub use gripper::Gripper;
pub use motor::Motor;
pub use sensor::Sensor;
pub use servo::Servo;
pub use switch::Switch;

/// Creates a client for a named component of a robot.
pub trait FromRobot: Sized {
    /// The client for the component called `name`.
    fn from_robot(robot: &RobotClient, name: &str) -> Self;
}

/// Extra driver parameters for calls that take them.
pub type Extra = Option<Struct>;

/// Defines a component client: the struct, its constructor, [`FromRobot`]
/// and `name()`. The stub is any tonic-generated `…ServiceClient`.
macro_rules! component_client {
    ($(#[$doc:meta])* $client:ident, $stub:ty, $stub_new:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $client {
            name: String,
            client: $stub,
        }

        impl $crate::components::FromRobot for $client {
            fn from_robot(robot: &$crate::RobotClient, name: &str) -> Self {
                Self::from_robot(robot, name)
            }
        }

        impl $client {
            /// The client for the component called `name` on `robot`.
            pub fn from_robot(robot: &$crate::RobotClient, name: &str) -> Self {
                Self {
                    name: name.to_owned(),
                    client: $stub_new(robot.channel()).max_decoding_message_size(tether_transport::MAX_MESSAGE_SIZE),
                }
            }

            /// The component name.
            pub fn name(&self) -> &str {
                &self.name
            }
        }
    };
}

/// Methods whose messages live in `viam.common.v1` and that several
/// component APIs share (`DoCommand`, `GetStatus`, `GetGeometries`,
/// `GetKinematics`), generated inside a client's `impl` block.
macro_rules! shared_rpcs {
    ($($rpc:ident),* $(,)?) => { $( shared_rpcs!(@ $rpc); )* };
    (@ do_command) => {
        /// Sends a model-specific command and returns the model's answer.
        pub async fn do_command(&self, command: prost_types::Struct) -> $crate::Result<prost_types::Struct> {
            let req = tether_proto::viam::common::v1::DoCommandRequest {
                name: self.name.clone(),
                command: Some(command),
            };
            Ok($crate::robot::reply(self.client.clone().do_command(req).await)?.result.unwrap_or_default())
        }

        /// [`do_command`](Self::do_command) with JSON in and out. The command
        /// must be a JSON object (`INVALID_ARGUMENT` otherwise, without a call).
        pub async fn do_command_json(&self, command: &serde_json::Value) -> $crate::Result<serde_json::Value> {
            let command = $crate::components::convert::json_to_struct(command).ok_or_else(|| {
                $crate::Error::Status(tonic::Status::invalid_argument("a command must be a JSON object"))
            })?;
            Ok($crate::components::convert::struct_to_json(&self.do_command(command).await?))
        }
    };
    (@ status) => {
        /// The component's free-form status (`GetStatus`).
        pub async fn status(&self) -> $crate::Result<prost_types::Struct> {
            let req = tether_proto::viam::common::v1::GetStatusRequest { name: self.name.clone() };
            Ok($crate::robot::reply(self.client.clone().get_status(req).await)?.result.unwrap_or_default())
        }
    };
    (@ geometries) => {
        /// The component's geometries, in its own frame.
        pub async fn geometries(&self) -> $crate::Result<Vec<tether_proto::viam::common::v1::Geometry>> {
            let req = tether_proto::viam::common::v1::GetGeometriesRequest { name: self.name.clone(), extra: None };
            Ok($crate::robot::reply(self.client.clone().get_geometries(req).await)?.geometries)
        }
    };
    (@ kinematics) => {
        /// The component's kinematics model (SVA or URDF data).
        pub async fn kinematics(&self) -> $crate::Result<tether_proto::viam::common::v1::GetKinematicsResponse> {
            let req = tether_proto::viam::common::v1::GetKinematicsRequest { name: self.name.clone(), extra: None };
            $crate::robot::reply(self.client.clone().get_kinematics(req).await)
        }
    };
}

pub(crate) use {component_client, shared_rpcs};

#[cfg(test)]
mod tests;
