//! The driver API of tether: one Rust trait per component kind, fake models
//! of each, the model registry and the named set of a machine's components.
//!
//! A driver author depends on this crate only: it has no gRPC, HTTP, TLS or
//! WebRTC in it. The machine (`tether-machine`) serves the traits over the
//! Viam component APIs, so a driver never sees protobuf framing or status
//! codes: it returns [`Error`]s, whose [`ErrorKind`] the client sees as the
//! status code and whose message it sees as it is.
//!
//! # Writing a driver
//!
//! Implement the trait of the component's kind ([`Motor`], [`Arm`],
//! [`Camera`], …; every kind is in [`for_each_kind!`]). The traits are
//! async, with [`async_trait`](macro@async_trait) (re-exported here);
//! methods that most models answer the same way (`do_command`, `status`,
//! `geometries`, …) have defaults. Validate arguments with [`finite`] and
//! [`in_range`], and answer a call the hardware cannot do with
//! [`unimplemented()`]. Stop methods must be quick and safe to call at any
//! time: the machine calls them (with no `extra`) when a client's session
//! lapses.
//!
//! # Registering a model
//!
//! A model is a constructor from the component's JSON `attributes` to a
//! [`Component`], registered under the kind's subtype and a model name in a
//! [`Models`] registry. The machine builds each component of its config
//! with [`Models::construct`]. The `attr_*` helpers read attributes and say
//! which one is wrong.
//!
//! ```
//! use std::sync::Arc;
//! use parking_lot::Mutex;
//! use tether_components::{Component, Error, Extra, Models, Motor, MotorProperties, Result, attr_f64, finite};
//!
//! /// A motor that only remembers its power.
//! struct Stepper {
//!     max_rpm: f64,
//!     power: Mutex<f64>,
//! }
//!
//! #[tether_components::async_trait]
//! impl Motor for Stepper {
//!     async fn set_power(&self, power_pct: f64, _extra: Extra) -> Result<()> {
//!         *self.power.lock() = tether_components::in_range("power_pct", power_pct, -1.0..=1.0)?;
//!         Ok(())
//!     }
//!     async fn go_for(&self, rpm: f64, _revolutions: f64, _extra: Extra) -> Result<()> {
//!         if finite("rpm", rpm)?.abs() > self.max_rpm {
//!             return Err(Error::out_of_range(format!("rpm must be at most {}", self.max_rpm)));
//!         }
//!         Ok(())
//!     }
//!     async fn go_to(&self, _rpm: f64, _position: f64, _extra: Extra) -> Result<()> {
//!         Err(tether_components::unimplemented("GoTo"))
//!     }
//!     async fn set_rpm(&self, _rpm: f64, _extra: Extra) -> Result<()> {
//!         Err(tether_components::unimplemented("SetRPM"))
//!     }
//!     async fn reset_zero_position(&self, _offset: f64, _extra: Extra) -> Result<()> {
//!         Ok(())
//!     }
//!     async fn position(&self, _extra: Extra) -> Result<f64> {
//!         Ok(0.0)
//!     }
//!     async fn properties(&self, _extra: Extra) -> Result<MotorProperties> {
//!         Ok(MotorProperties { position_reporting: false })
//!     }
//!     async fn stop(&self, _extra: Extra) -> Result<()> {
//!         *self.power.lock() = 0.0;
//!         Ok(())
//!     }
//!     async fn is_powered(&self, _extra: Extra) -> Result<(bool, f64)> {
//!         let p = *self.power.lock();
//!         Ok((p != 0.0, p))
//!     }
//!     async fn is_moving(&self) -> Result<bool> {
//!         Ok(*self.power.lock() != 0.0)
//!     }
//! }
//!
//! let mut models = Models::builtin();
//! models.register("motor", "acme:motors:stepper", |attributes| {
//!     let max_rpm = attr_f64(attributes, "max_rpm", 200.0)?;
//!     Ok(Component::Motor(Arc::new(Stepper { max_rpm, power: Mutex::new(0.0) })))
//! });
//! let motor = models.construct("motor", "acme:motors:stepper", &serde_json::json!({"max_rpm": 60})).unwrap();
//! assert_eq!(motor.subtype(), "motor");
//! let wrong = models.construct("motor", "acme:motors:stepper", &serde_json::json!({"max_rpm": "fast"}));
//! assert_eq!(wrong.unwrap_err().to_string(), "attribute \"max_rpm\" must be a number");
//! ```
//!
//! A machine is then started with the registry (in `tether-machine`:
//! `Machine::from_config(&config, &models)`), and a config entry
//! `{"name": "m1", "api": "rdk:component:motor", "model": "acme:motors:stepper"}`
//! builds the driver. [`Resources`] is the named set of components the
//! machine serves; a program can also fill one by hand.

use std::collections::BTreeMap;

pub use async_trait::async_trait;
pub use prost_types::Struct;
use prost_types::Value;
use prost_types::value::Kind;
pub use tether_proto::viam::common::v1::{Geometry, KinematicsFileFormat, Mesh, Pose, Vector3};

pub mod arm;
pub mod base;
pub mod button;
pub mod camera;
pub mod error;
pub mod frame_code;
pub mod gantry;
pub mod generic;
pub mod gripper;
pub mod models;
pub mod motor;
pub mod resource;
pub mod sensor;
pub mod servo;
pub(crate) mod sim;
pub mod switch;

pub use arm::{Arm, FakeArm, MoveOptions, TrajectoryBatches, TrajectoryPoint};
pub use base::{Base, BaseProperties, FakeBase};
pub use button::{Button, FakeButton};
pub use camera::{Camera, CameraProperties, FakeCamera, Image, Images, VideoFrame};
pub use error::{Error, ErrorKind, Result};
pub use gantry::{FakeGantry, Gantry};
pub use generic::{FakeGeneric, Generic};
pub use gripper::{FakeGripper, Gripper, HoldingStatus};
pub use models::{ConstructError, Constructor, FAKE, Models};
pub use motor::{FakeMotor, Motor, MotorProperties};
pub use resource::{Component, Resources, SUBTYPES};
pub use sensor::{FakeSensor, Readings, Sensor};
pub use servo::{FakeServo, Servo};
pub use switch::{FakeSwitch, Switch, SwitchPositions};

/// The component kinds, listed once: calls `$callback! { … }` with one
/// entry per kind,
///
/// ```text
/// Kind => module, "subtype", "fully.qualified.Service", stub_module::StubServer;
/// ```
///
/// where `Kind` is both the [`Component`] variant and the trait (e.g.
/// [`Motor`]), `module` is the kind's module here and in `tether-proto`
/// (`tether_proto::viam::component::<module>::v1`), and the last two
/// identifiers name the tonic server `tether-proto` generates for the kind
/// with its `grpc` feature (relative to that `v1` module). This crate
/// derives [`Component`], [`SUBTYPES`] and the typed lookups of
/// [`Resources`] from it; the machine derives its gRPC routes.
///
/// ```
/// macro_rules! subtypes {
///     ($( $kind:ident => $module:ident, $subtype:literal, $service:literal, $stub:ident :: $server:ident; )*) => {
///         [$( $subtype ),*]
///     };
/// }
/// let all = tether_components::for_each_kind!(subtypes);
/// assert_eq!(all.len(), tether_components::SUBTYPES.len());
/// assert!(all.contains(&"motor"));
/// ```
#[macro_export]
macro_rules! for_each_kind {
    ($callback:ident) => {
        $callback! {
            Arm => arm, "arm", "viam.component.arm.v1.ArmService", arm_service_server::ArmServiceServer;
            Base => base, "base", "viam.component.base.v1.BaseService", base_service_server::BaseServiceServer;
            Button => button, "button", "viam.component.button.v1.ButtonService", button_service_server::ButtonServiceServer;
            Camera => camera, "camera", "viam.component.camera.v1.CameraService", camera_service_server::CameraServiceServer;
            Gantry => gantry, "gantry", "viam.component.gantry.v1.GantryService", gantry_service_server::GantryServiceServer;
            Generic => generic, "generic", "viam.component.generic.v1.GenericService", generic_service_server::GenericServiceServer;
            Gripper => gripper, "gripper", "viam.component.gripper.v1.GripperService", gripper_service_server::GripperServiceServer;
            Motor => motor, "motor", "viam.component.motor.v1.MotorService", motor_service_server::MotorServiceServer;
            Sensor => sensor, "sensor", "viam.component.sensor.v1.SensorService", sensor_service_server::SensorServiceServer;
            Servo => servo, "servo", "viam.component.servo.v1.ServoService", servo_service_server::ServoServiceServer;
            Switch => switch, "switch", "viam.component.switch.v1.SwitchService", switch_service_server::SwitchServiceServer;
        }
    };
}

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

/// The error a driver returns for a method it does not support
/// (UNIMPLEMENTED, "`what` is not supported by this model").
pub fn unimplemented(what: &str) -> Error {
    Error::unimplemented(format!("{what} is not supported by this model"))
}

/// Rejects NaN and infinities in a numeric argument (INVALID_ARGUMENT).
pub fn finite(name: &str, v: f64) -> Result<f64> {
    if v.is_finite() { Ok(v) } else { Err(Error::invalid_argument(format!("{name} must be a finite number, got {v}"))) }
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

/// Rejects a number outside `range`, naming the argument
/// (INVALID_ARGUMENT).
pub fn in_range(name: &str, v: f64, range: std::ops::RangeInclusive<f64>) -> Result<f64> {
    let v = finite(name, v)?;
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(Error::invalid_argument(format!("{name} must be within [{}, {}], got {v}", range.start(), range.end())))
    }
}
