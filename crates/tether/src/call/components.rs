//! Component actions of `tether call`, one function per component kind.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};
use tether_client::components::{Arm, Base, Button, Camera, Gantry, Generic, Gripper, Motor, Sensor, Servo, Switch};
use tether_client::convert::{self, number_to_json as n, vector3};
use tether_proto::viam::component::camera::v1 as camera_pb;

use super::render::{self, num, nums, nums_json};
use super::{Ctx, Failure, Output, Params};

/// `(action, argument usage)` per kind; shared actions are appended by
/// [`table`].
const MOTOR: &[(&str, &str)] = &[
    ("set-power", "POWER"),
    ("go-for", "RPM REVS"),
    ("go-to", "RPM POSITION"),
    ("set-rpm", "RPM"),
    ("reset-zero", "[OFFSET]"),
    ("position", ""),
    ("is-powered", ""),
    ("is-moving", ""),
    ("properties", ""),
    ("stop", ""),
];
const ARM: &[(&str, &str)] = &[
    ("joints", ""),
    ("move-joints", "J1,J2,..."),
    ("move-through", "J1,J2,... [J1,J2,... ...]"),
    ("pose", ""),
    ("move-to", "X,Y,Z[,OX,OY,OZ,THETA]"),
    ("is-moving", ""),
    ("stop", ""),
    ("kinematics", ""),
];
const BASE: &[(&str, &str)] = &[
    ("move-straight", "MM MM_PER_SEC"),
    ("spin", "DEG DEG_PER_SEC"),
    ("set-power", "LINEAR ANGULAR"),
    ("set-velocity", "MM_PER_SEC DEG_PER_SEC"),
    ("properties", ""),
    ("is-moving", ""),
    ("stop", ""),
];
const GRIPPER: &[(&str, &str)] = &[
    ("open", ""),
    ("grab", ""),
    ("is-holding", ""),
    ("inputs", ""),
    ("go-to-inputs", "V1,V2,..."),
    ("is-moving", ""),
    ("stop", ""),
    ("kinematics", ""),
];
const SERVO: &[(&str, &str)] = &[("move", "DEG"), ("position", ""), ("is-moving", ""), ("stop", "")];
const GANTRY: &[(&str, &str)] = &[
    ("position", ""),
    ("move", "P1,P2,... [S1,S2,...]"),
    ("home", ""),
    ("lengths", ""),
    ("is-moving", ""),
    ("stop", ""),
    ("kinematics", ""),
];
const BUTTON: &[(&str, &str)] = &[("push", "")];
const SWITCH: &[(&str, &str)] = &[("set-position", "N"), ("position", ""), ("positions", "")];
const SENSOR: &[(&str, &str)] = &[("readings", "")];
const CAMERA: &[(&str, &str)] = &[
    ("image", "[--mime M] [--out FILE]"),
    ("images", "[--out DIR]"),
    ("point-cloud", "[--out FILE]"),
    ("properties", ""),
    ("stream", "[--seconds N] [--out FILE.ivf]"),
];
const GENERIC: &[(&str, &str)] = &[];

/// The actions of a kind, with usage; `None` for kinds `tether call` cannot drive.
fn table(subtype: &str) -> Option<Vec<(&'static str, &'static str)>> {
    let (own, geometries) = match subtype {
        "motor" => (MOTOR, true),
        "arm" => (ARM, true),
        "base" => (BASE, true),
        "gripper" => (GRIPPER, true),
        "servo" => (SERVO, true),
        "gantry" => (GANTRY, true),
        "button" => (BUTTON, false),
        "switch" => (SWITCH, false),
        "sensor" => (SENSOR, true),
        "camera" => (CAMERA, true),
        "generic" => (GENERIC, true),
        _ => return None,
    };
    let mut all = own.to_vec();
    all.push(("do-command", "JSON"));
    all.push(("status", ""));
    if geometries {
        all.push(("geometries", ""));
    }
    Some(all)
}

/// The actions of a kind, as `name USAGE` strings.
pub(super) fn actions(subtype: &str) -> Vec<String> {
    table(subtype)
        .unwrap_or_default()
        .into_iter()
        .map(|(a, u)| if u.is_empty() { a.to_owned() } else { format!("{a} {u}") })
        .collect()
}

/// Runs `action` with `args` on the component `ctx.name` of kind `subtype`.
pub(super) async fn run(ctx: &Ctx<'_>, subtype: &str, action: &str, args: &[String]) -> Result<Output, Failure> {
    let Some(table) = table(subtype) else {
        return Err(Failure::new(
            tonic::Code::Unimplemented,
            format!("{} is a {subtype}, which tether call cannot drive", ctx.name),
        ));
    };
    let Some((_, usage)) = table.iter().find(|(a, _)| *a == action) else {
        return Err(Failure::invalid(format!(
            "{} is a {subtype} and has no action {action:?}; actions: {}",
            ctx.name,
            actions(subtype).join(", ")
        )));
    };
    let mut p = Params::new(action, usage, args);
    match subtype {
        "motor" => motor(ctx, action, &mut p).await,
        "arm" => arm(ctx, action, &mut p).await,
        "base" => base(ctx, action, &mut p).await,
        "gripper" => gripper(ctx, action, &mut p).await,
        "servo" => servo(ctx, action, &mut p).await,
        "gantry" => gantry(ctx, action, &mut p).await,
        "button" => button(ctx, action, &mut p).await,
        "switch" => switch(ctx, action, &mut p).await,
        "sensor" => sensor(ctx, action, &mut p).await,
        "camera" => camera(ctx, action, &mut p).await,
        _ => {
            let g = Generic::from_robot(ctx.robot, ctx.name);
            shared!(g, action, p)
        }
    }
}

/// The actions every client has (`do-command`, `status`, and `geometries`
/// for kinds that have it), for the arm of a kind's `match` that is left.
macro_rules! shared {
    (@ $client:ident, $action:expr, $p:ident, geometries) => {
        match $action {
            "geometries" => {
                $p.finish()?;
                Ok(render::geometries(&$client.geometries().await?))
            }
            _ => shared!(@ $client, $action, $p),
        }
    };
    (@ $client:ident, $action:expr, $p:ident) => {
        match $action {
            "do-command" => {
                let command = $p.json_object("JSON")?;
                $p.finish()?;
                let command = convert::json_to_struct(&command)
                    .ok_or_else(|| Failure::invalid("do-command: JSON must be an object"))?;
                Ok(render::structure("result", &$client.do_command(command).await?))
            }
            "status" => {
                $p.finish()?;
                Ok(render::structure("status", &$client.status().await?))
            }
            other => Err(Failure::invalid(format!("unknown action {other:?}"))),
        }
    };
    ($client:ident, $action:expr, $p:ident) => {
        shared!(@ $client, $action, $p, geometries)
    };
}
use shared;

/// Runs a no-argument call that returns nothing.
macro_rules! simple {
    ($p:ident, $call:expr, $human:expr) => {{
        $p.finish()?;
        $call.await?;
        Ok(Output::done($human))
    }};
}

async fn motor(ctx: &Ctx<'_>, action: &str, p: &mut Params<'_>) -> Result<Output, Failure> {
    let m = Motor::from_robot(ctx.robot, ctx.name);
    let name = ctx.name;
    match action {
        "set-power" => {
            let power = p.f64("POWER")?;
            p.finish()?;
            m.set_power(power).await?;
            Ok(Output::done(format!("{name}: power set to {}", num(power))))
        }
        "go-for" => {
            let rpm = p.f64("RPM")?;
            let revs = p.f64("REVS")?;
            p.finish()?;
            m.go_for(rpm, revs).await?;
            Ok(Output::done(format!("{name}: turned {} revolutions at {} rpm", num(revs), num(rpm))))
        }
        "go-to" => {
            let rpm = p.f64("RPM")?;
            let position = p.f64("POSITION")?;
            p.finish()?;
            m.go_to(rpm, position).await?;
            Ok(Output::done(format!("{name}: at position {} revolutions", num(position))))
        }
        "set-rpm" => {
            let rpm = p.f64("RPM")?;
            p.finish()?;
            m.set_rpm(rpm).await?;
            Ok(Output::done(format!("{name}: running at {} rpm", num(rpm))))
        }
        "reset-zero" => {
            let offset = if p.has_more() { p.f64("OFFSET")? } else { 0.0 };
            p.finish()?;
            m.reset_zero_position(offset).await?;
            Ok(Output::done(format!("{name}: position now reads {} revolutions", num(offset))))
        }
        "position" => {
            p.finish()?;
            let position = m.position().await?;
            Ok(Output::new(format!("{} revolutions", num(position)), json!({"position": n(position)})))
        }
        "is-powered" => {
            p.finish()?;
            let (on, power) = m.is_powered().await?;
            let human = if on { format!("on (power {})", num(power)) } else { "off".to_owned() };
            Ok(Output::new(human, json!({"is_on": on, "power_pct": n(power)})))
        }
        "is-moving" => {
            p.finish()?;
            Ok(render::is_moving(m.is_moving().await?))
        }
        "properties" => {
            p.finish()?;
            let props = m.properties().await?;
            let reporting = props.position_reporting;
            Ok(Output::new(
                format!("position reporting: {}", if reporting { "yes" } else { "no" }),
                json!({"position_reporting": reporting}),
            ))
        }
        "stop" => simple!(p, m.stop(), format!("{name}: stopped")),
        _ => shared!(m, action, p),
    }
}

async fn arm(ctx: &Ctx<'_>, action: &str, p: &mut Params<'_>) -> Result<Output, Failure> {
    let a = Arm::from_robot(ctx.robot, ctx.name);
    let name = ctx.name;
    match action {
        "joints" => {
            p.finish()?;
            let joints = a.joint_positions().await?;
            Ok(Output::new(nums(&joints), json!({"positions": nums_json(&joints)})))
        }
        "move-joints" => {
            let joints = p.csv("J1,J2,...")?;
            p.finish()?;
            a.move_to_joint_positions(&joints).await?;
            Ok(Output::done(format!("{name}: joints at {}", nums(&joints))))
        }
        "move-through" => {
            let mut waypoints = vec![p.csv("J1,J2,...")?];
            while p.has_more() {
                waypoints.push(p.csv("J1,J2,...")?);
            }
            a.move_through_joint_positions(&waypoints, None).await?;
            let last = waypoints.last().map(|w| nums(w)).unwrap_or_default();
            Ok(Output::done(format!("{name}: moved through {} waypoints, joints at {last}", waypoints.len())))
        }
        "pose" => {
            p.finish()?;
            let pose = a.get_end_position().await?;
            Ok(Output::new(render::pose_line(&pose), json!({"pose": convert::pose_to_json(&pose)})))
        }
        "move-to" => {
            let v = p.csv("X,Y,Z[,OX,OY,OZ,THETA]")?;
            p.finish()?;
            let pose = match v[..] {
                [x, y, z] => convert::pose_at(x, y, z),
                [x, y, z, o_x, o_y, o_z, theta] => {
                    tether_proto::viam::common::v1::Pose { x, y, z, o_x, o_y, o_z, theta }
                }
                _ => {
                    return Err(Failure::invalid(format!(
                        "move-to: give 3 numbers (X,Y,Z) or 7 (X,Y,Z,OX,OY,OZ,THETA), got {}",
                        v.len()
                    )));
                }
            };
            a.move_to_position(pose).await?;
            Ok(Output::done(format!("{name}: end effector at {}", render::pose_line(&pose))))
        }
        "is-moving" => {
            p.finish()?;
            Ok(render::is_moving(a.is_moving().await?))
        }
        "stop" => simple!(p, a.stop(), format!("{name}: stopped")),
        "kinematics" => {
            p.finish()?;
            Ok(render::kinematics(&a.kinematics().await?))
        }
        _ => shared!(a, action, p),
    }
}

async fn base(ctx: &Ctx<'_>, action: &str, p: &mut Params<'_>) -> Result<Output, Failure> {
    let b = Base::from_robot(ctx.robot, ctx.name);
    let name = ctx.name;
    match action {
        "move-straight" => {
            let mm = p.i64("MM")?;
            let speed = p.f64("MM_PER_SEC")?;
            p.finish()?;
            b.move_straight(mm, speed).await?;
            Ok(Output::done(format!("{name}: moved {mm} mm at {} mm/s", num(speed))))
        }
        "spin" => {
            let deg = p.f64("DEG")?;
            let speed = p.f64("DEG_PER_SEC")?;
            p.finish()?;
            b.spin(deg, speed).await?;
            Ok(Output::done(format!("{name}: spun {}° at {}°/s", num(deg), num(speed))))
        }
        "set-power" => {
            let linear = p.f64("LINEAR")?;
            let angular = p.f64("ANGULAR")?;
            p.finish()?;
            b.set_power(vector3(0.0, linear, 0.0), vector3(0.0, 0.0, angular)).await?;
            Ok(Output::done(format!("{name}: power set to linear {}, angular {}", num(linear), num(angular))))
        }
        "set-velocity" => {
            let linear = p.f64("MM_PER_SEC")?;
            let angular = p.f64("DEG_PER_SEC")?;
            p.finish()?;
            b.set_velocity(vector3(0.0, linear, 0.0), vector3(0.0, 0.0, angular)).await?;
            Ok(Output::done(format!("{name}: velocity set to {} mm/s, {}°/s", num(linear), num(angular))))
        }
        "properties" => {
            p.finish()?;
            let r = b.properties().await?;
            Ok(Output::new(
                format!(
                    "width: {} m\nturning radius: {} m\nwheel circumference: {} m",
                    num(r.width_meters),
                    num(r.turning_radius_meters),
                    num(r.wheel_circumference_meters)
                ),
                json!({
                    "width_meters": n(r.width_meters),
                    "turning_radius_meters": n(r.turning_radius_meters),
                    "wheel_circumference_meters": n(r.wheel_circumference_meters),
                }),
            ))
        }
        "is-moving" => {
            p.finish()?;
            Ok(render::is_moving(b.is_moving().await?))
        }
        "stop" => simple!(p, b.stop(), format!("{name}: stopped")),
        _ => shared!(b, action, p),
    }
}

async fn gripper(ctx: &Ctx<'_>, action: &str, p: &mut Params<'_>) -> Result<Output, Failure> {
    let g = Gripper::from_robot(ctx.robot, ctx.name);
    let name = ctx.name;
    match action {
        "open" => simple!(p, g.open(), format!("{name}: open")),
        "grab" => {
            p.finish()?;
            let success = g.grab().await?;
            let human = if success { "grabbed something" } else { "grabbed nothing" };
            Ok(Output::new(format!("{name}: {human}"), json!({"success": success})))
        }
        "is-holding" => {
            p.finish()?;
            let holding = g.is_holding_something().await?;
            let human = if holding { "holding something" } else { "holding nothing" };
            Ok(Output::new(human, json!({"is_holding_something": holding})))
        }
        "inputs" => {
            p.finish()?;
            let values = g.current_inputs().await?;
            Ok(Output::new(nums(&values), json!({"values": nums_json(&values)})))
        }
        "go-to-inputs" => {
            let values = p.csv("V1,V2,...")?;
            p.finish()?;
            g.go_to_inputs(&values).await?;
            Ok(Output::done(format!("{name}: inputs at {}", nums(&values))))
        }
        "is-moving" => {
            p.finish()?;
            Ok(render::is_moving(g.is_moving().await?))
        }
        "stop" => simple!(p, g.stop(), format!("{name}: stopped")),
        "kinematics" => {
            p.finish()?;
            Ok(render::kinematics(&g.kinematics().await?))
        }
        _ => shared!(g, action, p),
    }
}

async fn servo(ctx: &Ctx<'_>, action: &str, p: &mut Params<'_>) -> Result<Output, Failure> {
    let s = Servo::from_robot(ctx.robot, ctx.name);
    let name = ctx.name;
    match action {
        "move" => {
            let deg = p.u32("DEG")?;
            p.finish()?;
            s.move_to(deg).await?;
            Ok(Output::done(format!("{name}: at {deg}°")))
        }
        "position" => {
            p.finish()?;
            let deg = s.position().await?;
            Ok(Output::new(format!("{deg}°"), json!({"position_deg": deg})))
        }
        "is-moving" => {
            p.finish()?;
            Ok(render::is_moving(s.is_moving().await?))
        }
        "stop" => simple!(p, s.stop(), format!("{name}: stopped")),
        _ => shared!(s, action, p),
    }
}

async fn gantry(ctx: &Ctx<'_>, action: &str, p: &mut Params<'_>) -> Result<Output, Failure> {
    let g = Gantry::from_robot(ctx.robot, ctx.name);
    let name = ctx.name;
    match action {
        "position" => {
            p.finish()?;
            let pos = g.position().await?;
            Ok(Output::new(format!("{} mm", nums(&pos)), json!({"positions_mm": nums_json(&pos)})))
        }
        "move" => {
            let positions = p.csv("P1,P2,...")?;
            let speeds = if p.has_more() { p.csv("S1,S2,...")? } else { Vec::new() };
            p.finish()?;
            g.move_to_position(&positions, &speeds).await?;
            Ok(Output::done(format!("{name}: at {} mm", nums(&positions))))
        }
        "home" => {
            p.finish()?;
            let homed = g.home().await?;
            Ok(Output::new(format!("{name}: {}", if homed { "homed" } else { "not homed" }), json!({"homed": homed})))
        }
        "lengths" => {
            p.finish()?;
            let lengths = g.lengths().await?;
            Ok(Output::new(format!("{} mm", nums(&lengths)), json!({"lengths_mm": nums_json(&lengths)})))
        }
        "is-moving" => {
            p.finish()?;
            Ok(render::is_moving(g.is_moving().await?))
        }
        "stop" => simple!(p, g.stop(), format!("{name}: stopped")),
        "kinematics" => {
            p.finish()?;
            Ok(render::kinematics(&g.kinematics().await?))
        }
        _ => shared!(g, action, p),
    }
}

async fn button(ctx: &Ctx<'_>, action: &str, p: &mut Params<'_>) -> Result<Output, Failure> {
    let b = Button::from_robot(ctx.robot, ctx.name);
    match action {
        "push" => simple!(p, b.push(), format!("{}: pushed", ctx.name)),
        _ => shared!(@ b, action, p),
    }
}

async fn switch(ctx: &Ctx<'_>, action: &str, p: &mut Params<'_>) -> Result<Output, Failure> {
    let s = Switch::from_robot(ctx.robot, ctx.name);
    let name = ctx.name;
    match action {
        "set-position" => {
            let position = p.u32("N")?;
            p.finish()?;
            s.set_position(position).await?;
            Ok(Output::done(format!("{name}: at position {position}")))
        }
        "position" => {
            p.finish()?;
            let position = s.position().await?;
            Ok(Output::new(position.to_string(), json!({"position": position})))
        }
        "positions" => {
            p.finish()?;
            let (count, labels) = s.number_of_positions().await?;
            let mut human = format!("{count} positions");
            if !labels.is_empty() {
                let listed: Vec<String> = labels.iter().enumerate().map(|(i, l)| format!("{i}: {l}")).collect();
                human.push_str(&format!(" ({})", listed.join(", ")));
            }
            Ok(Output::new(human, json!({"number_of_positions": count, "labels": labels})))
        }
        _ => shared!(@ s, action, p),
    }
}

async fn sensor(ctx: &Ctx<'_>, action: &str, p: &mut Params<'_>) -> Result<Output, Failure> {
    let s = Sensor::from_robot(ctx.robot, ctx.name);
    match action {
        "readings" => {
            p.finish()?;
            let readings = s.readings_json().await?;
            let mut lines = Vec::new();
            if let Json::Object(map) = &readings {
                let width = map.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in map {
                    let shown = match v {
                        Json::String(s) => s.clone(),
                        Json::Number(x) if x.is_f64() => x.as_f64().map(num).unwrap_or_else(|| x.to_string()),
                        other => other.to_string(),
                    };
                    lines.push(format!("{:width$}  {shown}", format!("{k}:"), width = width + 1));
                }
            }
            let human = if lines.is_empty() { "no readings".to_owned() } else { lines.join("\n") };
            Ok(Output::new(human, json!({ "readings": readings })))
        }
        _ => shared!(s, action, p),
    }
}

async fn camera(ctx: &Ctx<'_>, action: &str, p: &mut Params<'_>) -> Result<Output, Failure> {
    let c = Camera::from_robot(ctx.robot, ctx.name);
    match action {
        "image" => {
            p.finish()?;
            let mime = ctx.mime.unwrap_or("image/jpeg");
            let (mime_type, data) = match c.image(mime).await {
                Ok(r) => (r.mime_type, r.image),
                // Machines that dropped the legacy RPC: take the matching
                // (else the first) image of GetImages.
                Err(e) if e.code() == tonic::Code::Unimplemented => {
                    let images = c.images().await?.images;
                    let pick = images.iter().position(|i| i.mime_type == mime).unwrap_or(0);
                    let Some(img) = images.into_iter().nth(pick) else {
                        return Err(Failure::new(tonic::Code::Unavailable, format!("{} returned no images", ctx.name)));
                    };
                    (img.mime_type, img.image)
                }
                Err(e) => return Err(e.into()),
            };
            let mime_type = if mime_type.is_empty() { mime.to_owned() } else { mime_type };
            data_output(ctx, "image", &mime_type, &data)
        }
        "images" => {
            p.finish()?;
            let resp = c.images().await?;
            images_output(ctx, &resp)
        }
        "point-cloud" => {
            p.finish()?;
            let mime = ctx.mime.unwrap_or("pointcloud/pcd");
            let r = c.point_cloud(mime).await?;
            let mime_type = if r.mime_type.is_empty() { mime.to_owned() } else { r.mime_type };
            data_output(ctx, "point cloud", &mime_type, &r.point_cloud)
        }
        "properties" => {
            p.finish()?;
            Ok(camera_properties(&c.properties().await?))
        }
        "stream" => {
            p.finish()?;
            stream(ctx).await
        }
        _ => shared!(c, action, p),
    }
}

/// `camera stream`: receives the camera's video over WebRTC for
/// `--seconds`, decodes it, and reports frame rate, bitrate and frame delay
/// (capture time read from the fake camera's frame code, to the frame's
/// arrival: meaningful when both clocks agree, e.g. on one host). With
/// `--out` the frames go into an IVF file (VP8) that ffplay or VLC play.
async fn stream(ctx: &Ctx<'_>) -> Result<Output, Failure> {
    let seconds = ctx.seconds.unwrap_or(5.0);
    let mut stream = ctx.robot.stream(ctx.name).await?;
    let mut writer = None;
    let mut decoder = tether_media::vp8::Decoder::new().map_err(|e| Failure::local(e.to_string()))?;
    let (mut frames, mut keys, mut bytes, mut size) = (0u64, 0u64, 0u64, (0u32, 0u32));
    let mut delays = Vec::new();
    let mut first_ts: Option<u32> = None;
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    while let Ok(Some(sample)) = tokio::time::timeout_at(deadline, stream.next()).await {
        frames += 1;
        bytes += sample.data.len() as u64;
        if sample.key {
            keys += 1;
            decoder = tether_media::vp8::Decoder::new().map_err(|e| Failure::local(e.to_string()))?;
        }
        if let Ok(Some(picture)) = decoder.decode(&sample.data) {
            size = (picture.width, picture.height);
            if let Some(code) = tether_components::frame_code::read(&picture.to_rgb(), picture.width, picture.height) {
                let age = code.age_ms(tether_components::frame_code::FrameCode::now_ms());
                // Only plausible ages: other cameras have no frame code.
                if age < 60_000 {
                    delays.push(f64::from(age));
                }
            }
        }
        if let Some(path) = ctx.out {
            if writer.is_none() {
                let file = std::fs::File::create(path)
                    .map_err(|e| Failure::local(format!("cannot create {}: {e}", path.display())))?;
                let (w, h) = (size.0.min(u32::from(u16::MAX)) as u16, size.1.min(u32::from(u16::MAX)) as u16);
                writer = Some(
                    tether_media::ivf::IvfWriter::new(std::io::BufWriter::new(file), w, h, 90_000)
                        .map_err(|e| Failure::local(format!("cannot write {}: {e}", path.display())))?,
                );
            }
            let base = *first_ts.get_or_insert(sample.rtp_timestamp);
            let pts = u64::from(sample.rtp_timestamp.wrapping_sub(base));
            if let Some(w) = writer.as_mut() {
                w.write_frame(&sample.data, pts).map_err(|e| Failure::local(format!("cannot write: {e}")))?;
            }
        }
    }
    if let Some(w) = writer {
        w.finish().map_err(|e| Failure::local(format!("cannot write: {e}")))?;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let fps = frames as f64 / secs;
    let kbps = bytes as f64 * 8.0 / secs / 1000.0;
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays.get(((delays.len() as f64 - 1.0) * p).round() as usize).copied();
    let mut human = format!(
        "{}: {frames} frames in {secs:.1} s ({fps:.1} fps), {}x{}, {kbps:.0} kbit/s, {keys} keyframes",
        ctx.name, size.0, size.1
    );
    if let (Some(p50), Some(p95)) = (pct(0.5), pct(0.95)) {
        human.push_str(&format!("; frame delay (capture → received) p50 {p50:.0} ms, p95 {p95:.0} ms"));
    }
    if let Some(path) = ctx.out {
        human.push_str(&format!("; wrote {}", path.display()));
    }
    Ok(Output::new(
        human,
        json!({
            "frames": frames, "seconds": secs, "fps": fps, "kbps": kbps, "keyframes": keys,
            "width": size.0, "height": size.1,
            "delay_ms_p50": pct(0.5), "delay_ms_p95": pct(0.95),
            "path": ctx.out.map(|p| p.display().to_string()),
        }),
    ))
}

/// A file extension for a MIME type.
fn extension(mime: &str) -> String {
    let base = mime.split(';').next().unwrap_or("").trim();
    match base {
        "image/jpeg" | "image/jpg" => "jpg".to_owned(),
        "pointcloud/pcd" => "pcd".to_owned(),
        "image/vnd.viam.dep" => "dep".to_owned(),
        _ => {
            let sub = base.rsplit('/').next().unwrap_or("");
            let sub: String = sub.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
            if sub.is_empty() { "bin".to_owned() } else { sub }
        }
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), Failure> {
    if path == Path::new("-") {
        let mut stdout = std::io::stdout().lock();
        return stdout
            .write_all(data)
            .and_then(|()| stdout.flush())
            .map_err(|e| Failure::local(format!("cannot write to stdout: {e}")));
    }
    std::fs::write(path, data).map_err(|e| Failure::local(format!("cannot write {}: {e}", path.display())))
}

/// Saves (with `--out`) or describes one blob of camera data.
fn data_output(ctx: &Ctx<'_>, what: &str, mime: &str, data: &[u8]) -> Result<Output, Failure> {
    let mut json = json!({"mime_type": mime, "bytes": data.len()});
    let human = match ctx.out {
        Some(path) if path == Path::new("-") => {
            write_file(path, data)?;
            String::new()
        }
        Some(path) => {
            write_file(path, data)?;
            json["path"] = Json::String(path.display().to_string());
            format!("wrote {what} ({mime}, {} bytes) to {}", data.len(), path.display())
        }
        None => format!("{what}: {mime}, {} bytes (use --out FILE to save it)", data.len()),
    };
    Ok(Output::new(human, json))
}

/// Saves (with `--out DIR`) or lists the images of `GetImages`.
fn images_output(ctx: &Ctx<'_>, resp: &camera_pb::GetImagesResponse) -> Result<Output, Failure> {
    if ctx.out == Some(Path::new("-")) {
        return Err(Failure::invalid("images: --out takes a directory"));
    }
    if let Some(dir) = ctx.out {
        std::fs::create_dir_all(dir).map_err(|e| Failure::local(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut used = std::collections::HashSet::new();
    let mut lines = Vec::new();
    let mut list = Vec::new();
    for (i, img) in resp.images.iter().enumerate() {
        let source = if img.source_name.is_empty() { ctx.name } else { img.source_name.as_str() };
        let mut entry = json!({"source_name": img.source_name, "mime_type": img.mime_type, "bytes": img.image.len()});
        let mut line = format!("{source}: {}, {} bytes", img.mime_type, img.image.len());
        if let Some(dir) = ctx.out {
            let stem: String =
                source.chars().map(|c| if c.is_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
            let mut file = format!("{stem}.{}", extension(&img.mime_type));
            if !used.insert(file.clone()) {
                file = format!("{stem}-{i}.{}", extension(&img.mime_type));
                used.insert(file.clone());
            }
            let path: PathBuf = dir.join(file);
            write_file(&path, &img.image)?;
            line.push_str(&format!(" -> {}", path.display()));
            entry["path"] = Json::String(path.display().to_string());
        }
        lines.push(line);
        list.push(entry);
    }
    let captured = resp.response_metadata.as_ref().and_then(|m| m.captured_at.as_ref()).and_then(render::timestamp);
    if let Some(t) = &captured {
        lines.push(format!("captured at {t}"));
    }
    let human = if list.is_empty() { "no images".to_owned() } else { lines.join("\n") };
    Ok(Output::new(human, json!({"images": list, "captured_at": captured})))
}

fn camera_properties(r: &camera_pb::GetPropertiesResponse) -> Output {
    let mut lines = vec![format!("supports point clouds: {}", if r.supports_pcd { "yes" } else { "no" })];
    let mut json = json!({"supports_pcd": r.supports_pcd, "mime_types": r.mime_types});
    if let Some(i) = &r.intrinsic_parameters {
        lines.push(format!(
            "size: {}×{} px; focal {}, {} px; center {}, {} px",
            i.width_px,
            i.height_px,
            num(i.focal_x_px),
            num(i.focal_y_px),
            num(i.center_x_px),
            num(i.center_y_px)
        ));
        json["intrinsic_parameters"] = json!({
            "width_px": i.width_px, "height_px": i.height_px,
            "focal_x_px": n(i.focal_x_px), "focal_y_px": n(i.focal_y_px),
            "center_x_px": n(i.center_x_px), "center_y_px": n(i.center_y_px),
        });
    }
    if let Some(d) = &r.distortion_parameters {
        if !d.model.is_empty() || !d.parameters.is_empty() {
            lines.push(format!("distortion: {} ({})", d.model, nums(&d.parameters)));
        }
        json["distortion_parameters"] = json!({"model": d.model, "parameters": nums_json(&d.parameters)});
    }
    if !r.mime_types.is_empty() {
        lines.push(format!("mime types: {}", r.mime_types.join(", ")));
    }
    if let Some(rate) = r.frame_rate {
        lines.push(format!("frame rate: {} fps", num(f64::from(rate))));
        json["frame_rate"] = n(f64::from(rate));
    }
    Output::new(lines.join("\n"), json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_lists_shared_actions() {
        for (kind, _) in tether_machine::resource::SUBTYPES {
            let a = actions(kind);
            assert!(a.iter().any(|x| x == "do-command JSON"), "{kind}");
            assert!(a.iter().any(|x| x == "status"), "{kind}");
        }
        assert!(!actions("button").iter().any(|x| x == "geometries"));
        assert_eq!(actions("generic"), ["do-command JSON", "status", "geometries"]);
        assert!(table("motion").is_none());
    }

    #[test]
    fn extensions() {
        assert_eq!(extension("image/jpeg"), "jpg");
        assert_eq!(extension("image/png"), "png");
        assert_eq!(extension("pointcloud/pcd"), "pcd");
        assert_eq!(extension(""), "bin");
    }
}
