//! Conversions between protobuf's JSON-like types (`google.protobuf.Value`,
//! `Struct`) and [`serde_json::Value`], plus small constructors for common
//! geometry messages.
//!
//! ```
//! use tether_client::components::convert::{json_to_struct, struct_to_json};
//! let cmd = serde_json::json!({"speed": 2, "mode": "fast", "ok": true, "list": [1, "a"]});
//! let s = json_to_struct(&cmd).expect("an object");
//! assert_eq!(struct_to_json(&s), cmd);
//! ```

use std::collections::{BTreeMap, HashMap};

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use tether_proto::viam::common::v1 as common;

/// Largest integer an `f64` holds exactly (2^53); integral numbers up to this
/// size are rendered as JSON integers.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// Converts a protobuf `Value` into JSON. Integral numbers become JSON
/// integers, NaN and infinities (which JSON cannot represent) become `null`,
/// and a value with no kind set is `null`.
pub fn value_to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// A JSON number for `n`: an integer when `n` is integral and exactly
/// representable, `null` when `n` is not finite.
pub fn number_to_json(n: f64) -> serde_json::Value {
    if n.is_finite() && n.fract() == 0.0 && n.abs() <= MAX_EXACT_INT {
        // In range and integral, so the cast is exact.
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
    }
}

/// Converts a protobuf `Struct` into a JSON object.
pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

/// Converts a map of values (e.g. sensor readings) into a JSON object,
/// with keys in sorted order.
pub fn map_to_json(map: &HashMap<String, Value>) -> serde_json::Value {
    let sorted: BTreeMap<&String, &Value> = map.iter().collect();
    serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

/// Converts JSON into a protobuf `Value`. Numbers become doubles (large
/// 64-bit integers lose precision, as in every protobuf JSON mapping).
pub fn json_to_value(json: &serde_json::Value) -> Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue { values: a.iter().map(json_to_value).collect() }),
        serde_json::Value::Object(o) => Kind::StructValue(object_to_struct(o)),
    };
    Value { kind: Some(kind) }
}

/// Converts a JSON object into a protobuf `Struct`; `None` when `json` is
/// not an object.
pub fn json_to_struct(json: &serde_json::Value) -> Option<Struct> {
    json.as_object().map(object_to_struct)
}

fn object_to_struct(o: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct { fields: o.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect() }
}

/// A `Vector3`.
pub fn vector3(x: f64, y: f64, z: f64) -> common::Vector3 {
    common::Vector3 { x, y, z }
}

/// A pose at `(x, y, z)` millimetres with the default orientation (the
/// orientation vector along +Z, no rotation about it).
pub fn pose_at(x: f64, y: f64, z: f64) -> common::Pose {
    common::Pose { x, y, z, o_x: 0.0, o_y: 0.0, o_z: 1.0, theta: 0.0 }
}

/// The JSON form of a pose: `{"x", "y", "z", "o_x", "o_y", "o_z", "theta"}`.
pub fn pose_to_json(p: &common::Pose) -> serde_json::Value {
    serde_json::json!({
        "x": number_to_json(p.x),
        "y": number_to_json(p.y),
        "z": number_to_json(p.z),
        "o_x": number_to_json(p.o_x),
        "o_y": number_to_json(p.o_y),
        "o_z": number_to_json(p.o_z),
        "theta": number_to_json(p.theta),
    })
}

/// The JSON form of a geometry: label, center pose, and its shape.
pub fn geometry_to_json(g: &common::Geometry) -> serde_json::Value {
    use common::geometry::GeometryType;
    let shape = match &g.geometry_type {
        None => serde_json::Value::Null,
        Some(GeometryType::Sphere(s)) => serde_json::json!({"sphere": {"radius_mm": number_to_json(s.radius_mm)}}),
        Some(GeometryType::Box(b)) => {
            let d = b.dims_mm.unwrap_or_default();
            serde_json::json!({"box": {"dims_mm": {
                "x": number_to_json(d.x), "y": number_to_json(d.y), "z": number_to_json(d.z)}}})
        }
        Some(GeometryType::Capsule(c)) => serde_json::json!({"capsule": {
            "radius_mm": number_to_json(c.radius_mm), "length_mm": number_to_json(c.length_mm)}}),
        Some(GeometryType::Mesh(m)) => {
            serde_json::json!({"mesh": {"content_type": m.content_type, "bytes": m.mesh.len()}})
        }
        Some(GeometryType::Pointcloud(p)) => serde_json::json!({"pointcloud": {"bytes": p.point_cloud.len()}}),
    };
    serde_json::json!({
        "label": g.label,
        "center": g.center.as_ref().map(pose_to_json),
        "shape": shape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_render_naturally() {
        assert_eq!(number_to_json(3.0), serde_json::json!(3));
        assert_eq!(number_to_json(-2.5), serde_json::json!(-2.5));
        assert_eq!(number_to_json(f64::NAN), serde_json::Value::Null);
        assert_eq!(number_to_json(f64::INFINITY), serde_json::Value::Null);
        assert_eq!(number_to_json(1e300), serde_json::json!(1e300));
    }

    #[test]
    fn round_trip() {
        let j = serde_json::json!({"a": null, "b": [true, 1.5, {"c": "d"}], "e": {}});
        let s = json_to_struct(&j).expect("object");
        assert_eq!(struct_to_json(&s), j);
        assert!(json_to_struct(&serde_json::json!([1])).is_none());
        assert_eq!(value_to_json(&Value { kind: None }), serde_json::Value::Null);
    }

    #[test]
    fn readings_are_sorted() {
        let mut m = HashMap::new();
        m.insert("z".to_owned(), json_to_value(&serde_json::json!(1)));
        m.insert("a".to_owned(), json_to_value(&serde_json::json!("x")));
        assert_eq!(map_to_json(&m).to_string(), r#"{"a":"x","z":1}"#);
    }
}
