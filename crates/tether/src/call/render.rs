//! Human and JSON renderings of machine-level results and of the message
//! types several components share.

use std::time::{Duration, SystemTime};

use serde_json::{Value as Json, json};
use tether_client::convert::{geometry_to_json, number_to_json};
use tether_proto::viam::common::v1 as common;
use tether_proto::viam::robot::v1 as robot;

use super::{Output, fqname};

/// A number as people write it (`10`, `0.5`), rounded to 6 decimals.
pub(super) fn num(v: f64) -> String {
    if !v.is_finite() || v.abs() >= 1e15 {
        return format!("{v}");
    }
    let rounded = (v * 1e6).round() / 1e6;
    // Avoid printing `-0`.
    let rounded = if rounded == 0.0 { 0.0 } else { rounded };
    format!("{rounded}")
}

/// Numbers separated by commas, the way the CLI takes them.
pub(super) fn nums(v: &[f64]) -> String {
    v.iter().map(|x| num(*x)).collect::<Vec<_>>().join(", ")
}

/// Numbers as a JSON array (integral values as integers).
pub(super) fn nums_json(v: &[f64]) -> Json {
    Json::Array(v.iter().map(|x| number_to_json(*x)).collect())
}

/// RFC 3339 time of a protobuf timestamp.
pub(super) fn timestamp(t: &prost_types::Timestamp) -> Option<String> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    let time = SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))?;
    Some(humantime::format_rfc3339_millis(time).to_string())
}

/// `STATE_READY` → `ready`.
fn state_name(proto_name: &str) -> String {
    proto_name.strip_prefix("STATE_").unwrap_or(proto_name).to_ascii_lowercase()
}

/// `moving` / `not moving`.
pub(super) fn is_moving(moving: bool) -> Output {
    Output::new(if moving { "moving" } else { "not moving" }, json!({ "is_moving": moving }))
}

/// A pose, one line.
pub(super) fn pose_line(p: &common::Pose) -> String {
    format!(
        "x {} y {} z {} mm; orientation ({}, {}, {}) theta {}°",
        num(p.x),
        num(p.y),
        num(p.z),
        num(p.o_x),
        num(p.o_y),
        num(p.o_z),
        num(p.theta)
    )
}

/// `GetMachineStatus`.
pub(super) fn machine_status(s: &robot::GetMachineStatusResponse) -> Output {
    let state = state_name(s.state().as_str_name());
    let mut lines = vec![format!("state: {state}")];
    let config = s.config.clone().unwrap_or_default();
    let config_updated = config.last_updated.as_ref().and_then(timestamp);
    match (config.revision.as_str(), &config_updated) {
        ("", None) => {}
        ("", Some(t)) => lines.push(format!("config: loaded {t}")),
        (rev, None) => lines.push(format!("config: revision {rev}")),
        (rev, Some(t)) => lines.push(format!("config: revision {rev}, loaded {t}")),
    }
    let mut resources: Vec<(String, &robot::ResourceStatus)> =
        s.resources.iter().map(|r| (r.name.as_ref().map(fqname).unwrap_or_default(), r)).collect();
    resources.sort_by(|a, b| a.0.cmp(&b.0));
    let width = resources.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    if resources.is_empty() {
        lines.push("resources: none".to_owned());
    } else {
        lines.push("resources:".to_owned());
    }
    let mut json_resources = Vec::new();
    for (name, r) in &resources {
        let rstate = state_name(r.state().as_str_name());
        let mut line = format!("  {name:width$}  {rstate}");
        if !r.error.is_empty() {
            line.push_str(&format!(": {}", r.error));
        }
        lines.push(line);
        json_resources.push(json!({
            "name": name,
            "state": rstate,
            "revision": r.revision,
            "error": if r.error.is_empty() { Json::Null } else { Json::String(r.error.clone()) },
            "last_updated": r.last_updated.as_ref().and_then(timestamp),
        }));
    }
    for m in &s.modules {
        lines.push(format!("module {}: {}", m.module_name, state_name(m.state().as_str_name())));
    }
    Output::new(
        lines.join("\n"),
        json!({
            "state": state,
            "config": {"revision": config.revision, "last_updated": config_updated},
            "resources": json_resources,
            "modules": s.modules.iter().map(|m| json!({
                "name": m.module_name,
                "state": state_name(m.state().as_str_name()),
                "error": m.error,
            })).collect::<Vec<_>>(),
        }),
    )
}

/// `GetSessions`; `own` marks this client's session.
pub(super) fn sessions(sessions: &[robot::Session], own: Option<&str>) -> Output {
    let mut lines = Vec::new();
    let mut list = Vec::new();
    for s in sessions {
        let peer = s.peer_connection_info.clone().unwrap_or_default();
        let kind = peer.r#type().as_str_name().strip_prefix("PEER_CONNECTION_TYPE_").unwrap_or("").to_ascii_lowercase();
        // Another caller's session is listed without its id (a secret of
        // its owner).
        let mut line = if s.id.is_empty() { "(another caller's session)".to_owned() } else { s.id.clone() };
        if !kind.is_empty() && kind != "unspecified" {
            line.push_str(&format!("  {kind}"));
        }
        if let Some(remote) = &peer.remote_address {
            line.push_str(&format!("  from {remote}"));
        }
        if !s.id.is_empty() && own == Some(s.id.as_str()) {
            line.push_str("  (this client)");
        }
        lines.push(line);
        list.push(json!({
            "id": s.id,
            "type": kind,
            "remote_address": peer.remote_address,
            "local_address": peer.local_address,
        }));
    }
    let human = if lines.is_empty() { "no sessions".to_owned() } else { lines.join("\n") };
    Output::new(human, json!({ "sessions": list }))
}

/// `GetOperations`.
pub(super) fn operations(ops: &[robot::Operation]) -> Output {
    let mut lines = Vec::new();
    let mut list = Vec::new();
    for op in ops {
        let started = op.started.as_ref().and_then(timestamp);
        let mut line = format!("{}  {}", op.id, op.method);
        if let Some(t) = &started {
            line.push_str(&format!("  started {t}"));
        }
        if let Some(sid) = &op.session_id {
            line.push_str(&format!("  session {sid}"));
        }
        lines.push(line);
        list.push(json!({"id": op.id, "method": op.method, "started": started, "session_id": op.session_id}));
    }
    let human = if lines.is_empty() { "no operations".to_owned() } else { lines.join("\n") };
    Output::new(human, json!({ "operations": list }))
}

/// `GetGeometries`.
pub(super) fn geometries(geoms: &[common::Geometry]) -> Output {
    use common::geometry::GeometryType;
    let mut lines = Vec::new();
    for g in geoms {
        let shape = match &g.geometry_type {
            None => "no shape".to_owned(),
            Some(GeometryType::Sphere(s)) => format!("sphere, radius {} mm", num(s.radius_mm)),
            Some(GeometryType::Box(b)) => {
                let d = b.dims_mm.unwrap_or_default();
                format!("box {} × {} × {} mm", num(d.x), num(d.y), num(d.z))
            }
            Some(GeometryType::Capsule(c)) => {
                format!("capsule, radius {} mm, length {} mm", num(c.radius_mm), num(c.length_mm))
            }
            Some(GeometryType::Mesh(m)) => format!("{} mesh, {} bytes", m.content_type, m.mesh.len()),
            Some(GeometryType::Pointcloud(p)) => format!("point cloud, {} bytes", p.point_cloud.len()),
        };
        let label = if g.label.is_empty() { "(unlabelled)" } else { &g.label };
        let center = g.center.as_ref().map(|c| format!(" at {} {} {} mm", num(c.x), num(c.y), num(c.z)));
        lines.push(format!("{label}: {shape}{}", center.unwrap_or_default()));
    }
    let human = if lines.is_empty() { "no geometries".to_owned() } else { lines.join("\n") };
    Output::new(human, json!({ "geometries": geoms.iter().map(geometry_to_json).collect::<Vec<_>>() }))
}

/// `GetKinematics`: the format and the model data (JSON when it is JSON).
pub(super) fn kinematics(k: &common::GetKinematicsResponse) -> Output {
    let format = k.format().as_str_name().strip_prefix("KINEMATICS_FILE_FORMAT_").unwrap_or("").to_ascii_lowercase();
    let text = std::str::from_utf8(&k.kinematics_data).ok();
    let parsed = text.and_then(|t| serde_json::from_str::<Json>(t).ok());
    let data = match (&parsed, text) {
        (Some(j), _) => j.clone(),
        (None, Some(t)) => Json::String(t.to_owned()),
        (None, None) => Json::Null,
    };
    let mut human = format!("format: {format}, {} bytes", k.kinematics_data.len());
    match (&parsed, text) {
        (Some(j), _) => {
            human.push('\n');
            human.push_str(&serde_json::to_string_pretty(j).unwrap_or_default());
        }
        (None, Some(t)) if !t.is_empty() => {
            human.push('\n');
            human.push_str(t);
        }
        _ => {}
    }
    let meshes: Vec<&String> = k.meshes_by_urdf_filepath.keys().collect();
    Output::new(human, json!({"format": format, "bytes": k.kinematics_data.len(), "data": data, "meshes": meshes}))
}

/// A free-form struct (DoCommand result, GetStatus) as pretty JSON.
pub(super) fn structure(key: &str, s: &prost_types::Struct) -> Output {
    let j = tether_client::convert::struct_to_json(s);
    Output::new(serde_json::to_string_pretty(&j).unwrap_or_default(), json!({ key: j }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(num(10.0), "10");
        assert_eq!(num(0.1 + 0.2), "0.3");
        assert_eq!(num(-0.0000001), "0");
        assert_eq!(num(-2.5), "-2.5");
        assert_eq!(num(1e20), "100000000000000000000");
        assert_eq!(nums(&[1.0, 2.5]), "1, 2.5");
    }

    #[test]
    fn timestamps() {
        let t = prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 };
        assert_eq!(timestamp(&t).as_deref(), Some("2023-11-14T22:13:20.005Z"));
        assert_eq!(timestamp(&prost_types::Timestamp { seconds: -1, nanos: 0 }), None);
    }
}
