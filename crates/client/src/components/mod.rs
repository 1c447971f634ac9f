//! Typed component clients. Each wraps the tonic-generated stub of its API
//! over the robot's [`SessionChannel`](crate::SessionChannel), so sessions,
//! credentials and status codes behave the same for every component.

use prost_types::Struct;

use crate::RobotClient;

pub mod motor;

pub use motor::Motor;

/// Creates a client for a named component of a robot.
pub trait FromRobot: Sized {
    /// The client for the component called `name`.
    fn from_robot(robot: &RobotClient, name: &str) -> Self;
}

/// Extra driver parameters for calls that take them.
pub type Extra = Option<Struct>;
