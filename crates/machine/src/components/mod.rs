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
pub use tether_proto::viam::common::v1::Geometry;

pub mod motor;

pub use motor::{FakeMotor, Motor, MotorProperties};

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
