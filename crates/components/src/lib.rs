//! Component APIs as Rust traits, one per kind, and fake models of each.
//!
//! A real driver implements the trait of its kind (e.g. [`Motor`]) and is
//! registered with a [`crate::resource::Resources`]; the gRPC services call
//! the trait, so drivers never see protobuf framing. Errors are
//! [`tonic::Status`] values so a driver chooses the code the client sees.

use std::collections::BTreeMap;

pub use prost_types::Struct;
use prost_types::Value;
use prost_types::value::Kind;
pub use tether_proto::viam::common::v1::{Geometry, KinematicsFileFormat, Mesh, Pose, Vector3};

pub mod arm;
pub mod base;
pub mod button;
pub mod camera;
pub mod gantry;
pub mod generic;
pub mod gripper;
pub mod motor;
pub mod sensor;
pub mod servo;
pub(crate) mod sim;
pub mod switch;

pub use arm::{Arm, FakeArm, MoveOptions, TrajectoryBatches, TrajectoryPoint};
pub use base::{Base, BaseProperties, FakeBase};
pub use button::{Button, FakeButton};
pub use camera::{Camera, CameraProperties, FakeCamera, Image, Images};
pub use gantry::{FakeGantry, Gantry};
pub use generic::{FakeGeneric, Generic};
pub use gripper::{FakeGripper, Gripper, HoldingStatus};
pub use motor::{FakeMotor, Motor, MotorProperties};
pub use sensor::{FakeSensor, Readings, Sensor};
pub use servo::{FakeServo, Servo};
pub use switch::{FakeSwitch, Switch, SwitchPositions};

/// A kinematic model, as `GetKinematics` returns it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Kinematics {
    /// SVA (Viam's JSON) or URDF.
    pub format: KinematicsFileFormat,
    /// The model file.
    pub data: Vec<u8>,
    /// Meshes a URDF refers to, by file path.
    pub meshes_by_urdf_filepath: std::collections::HashMap<String, Mesh>,
}

/// The `extra` argument of most calls: free-form driver parameters.
pub type Extra = Option<Struct>;

/// Result of a driver call.
pub type Result<T> = std::result::Result<T, tonic::Status>;

/// The status a driver returns for a method it does not support.
pub fn unimplemented(what: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!("{what} is not supported by this model"))
}

/// Rejects NaN and infinities in a numeric argument.
pub fn finite(name: &str, v: f64) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(tonic::Status::invalid_argument(format!("{name} must be a finite number, got {v}")))
    }
}

/// Builds a `Struct` from `(key, value)` pairs.
pub fn to_struct<I, K>(fields: I) -> Struct
where
    I: IntoIterator<Item = (K, Value)>,
    K: Into<String>,
{
    Struct { fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect::<BTreeMap<_, _>>() }
}

/// A number value.
pub fn num(v: f64) -> Value {
    Value { kind: Some(Kind::NumberValue(v)) }
}

/// A boolean value.
pub fn boolean(v: bool) -> Value {
    Value { kind: Some(Kind::BoolValue(v)) }
}

/// A string value.
pub fn string(v: impl Into<String>) -> Value {
    Value { kind: Some(Kind::StringValue(v.into())) }
}

/// A list value.
pub fn list(v: impl IntoIterator<Item = Value>) -> Value {
    Value { kind: Some(Kind::ListValue(prost_types::ListValue { values: v.into_iter().collect() })) }
}

/// A nested object value.
pub fn object(v: Struct) -> Value {
    Value { kind: Some(Kind::StructValue(v)) }
}

/// Reads a number attribute from a JSON config object.
pub fn attr_f64(attrs: &serde_json::Value, key: &str, default: f64) -> std::result::Result<f64, String> {
    match attrs.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => v.as_f64().filter(|f| f.is_finite()).ok_or_else(|| format!("attribute {key:?} must be a number")),
    }
}

/// A default `DoCommand`: echoes the command back, which is what Viam's fakes
/// do and is handy for testing a round trip.
pub fn echo(cmd: Struct) -> Result<Struct> {
    Ok(cmd)
}

/// Reads a non-negative integer attribute from a JSON config object.
pub fn attr_u32(attrs: &serde_json::Value, key: &str, default: u32) -> std::result::Result<u32, String> {
    match attrs.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("attribute {key:?} must be a whole number from 0 to {}", u32::MAX)),
    }
}

/// Reads a list-of-numbers attribute from a JSON config object.
pub fn attr_f64_list(attrs: &serde_json::Value, key: &str, default: &[f64]) -> std::result::Result<Vec<f64>, String> {
    match attrs.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default.to_vec()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| format!("attribute {key:?}: element {i} must be a number"))
            })
            .collect(),
        Some(_) => Err(format!("attribute {key:?} must be a list of numbers")),
    }
}

/// Reads a list-of-strings attribute from a JSON config object; `None` when
/// absent.
pub fn attr_strings(attrs: &serde_json::Value, key: &str) -> std::result::Result<Option<Vec<String>>, String> {
    match attrs.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_owned).ok_or_else(|| format!("attribute {key:?}: element {i} must be a string"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(format!("attribute {key:?} must be a list of strings")),
    }
}

/// Reads a number attribute that must be strictly positive.
pub fn attr_positive(attrs: &serde_json::Value, key: &str, default: f64) -> std::result::Result<f64, String> {
    let v = attr_f64(attrs, key, default)?;
    if v > 0.0 { Ok(v) } else { Err(format!("attribute {key:?} must be greater than 0, got {v}")) }
}

/// Rejects a number outside `range`, naming the argument.
pub fn in_range(name: &str, v: f64, range: std::ops::RangeInclusive<f64>) -> Result<f64> {
    let v = finite(name, v)?;
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(tonic::Status::invalid_argument(format!(
            "{name} must be within [{}, {}], got {v}",
            range.start(),
            range.end()
        )))
    }
}
