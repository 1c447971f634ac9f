//! Arms (`rdk:component:arm`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

use super::sim::{Axes, Sim};
use super::{
    Extra, Geometry, Kinematics, Mesh, Pose, Result, Struct, boolean, finite, in_range, list, num, object, to_struct,
};

/// Per-call motion limits of [`Arm::move_through_joint_positions`]. Unset
/// fields leave the driver's defaults in place.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MoveOptions {
    /// Speed limit of every joint, degrees per second.
    pub max_vel_degs_per_sec: Option<f64>,
    /// Acceleration limit of every joint, degrees per second squared.
    pub max_acc_degs_per_sec2: Option<f64>,
    /// Speed limit per joint (overrides `max_vel_degs_per_sec`).
    pub max_vel_degs_per_sec_joints: Vec<f64>,
    /// Acceleration limit per joint.
    pub max_acc_degs_per_sec2_joints: Vec<f64>,
    /// Tool-centre-point speed limit, metres per second.
    pub max_tcp_speed: Option<f64>,
}

/// One point of a streamed trajectory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrajectoryPoint {
    /// Time from the start of the trajectory: zero for the first point, then
    /// strictly increasing.
    pub time: Duration,
    /// Joint positions to be at, at `time`.
    pub positions: Vec<f64>,
    /// Joint velocities at this point, when the client gave them (zero on the
    /// first point).
    pub velocities: Option<Vec<f64>>,
    /// Joint accelerations at this point, when the client gave them.
    pub accelerations: Option<Vec<f64>>,
}

/// The batches of a streamed trajectory, in the order the client sent them.
/// Pulling a batch acknowledges it to the client, so a driver pulls the next
/// batch when it is ready to accept it. A transport or framing error ends the
/// stream with an `Err`.
pub type TrajectoryBatches = BoxStream<'static, Result<Vec<TrajectoryPoint>>>;

/// An arm driver. Joint positions are ordered from the base to the end
/// effector, in degrees (revolute) or millimetres (prismatic); poses are in
/// millimetres with an orientation vector whose `theta` is in degrees.
#[async_trait::async_trait]
pub trait Arm: Send + Sync + 'static {
    /// Pose of the end effector relative to the arm's base.
    async fn end_position(&self, extra: Extra) -> Result<Pose>;
    /// Moves the end effector to `pose` and returns once there.
    async fn move_to_position(&self, pose: Pose, extra: Extra) -> Result<()>;
    /// Current joint positions.
    async fn joint_positions(&self, extra: Extra) -> Result<Vec<f64>>;
    /// Moves the joints to `positions` and returns once there.
    async fn move_to_joint_positions(&self, positions: Vec<f64>, extra: Extra) -> Result<()>;
    /// Moves through each of `positions` in order and returns at the last.
    async fn move_through_joint_positions(
        &self,
        positions: Vec<Vec<f64>>,
        options: MoveOptions,
        extra: Extra,
    ) -> Result<()>;
    /// Follows a timed trajectory streamed in batches; returns when the
    /// stream has ended and the last point is reached. The default visits
    /// every point in order with [`Arm::move_to_joint_positions`], ignoring
    /// the timing.
    async fn follow_trajectory(&self, mut batches: TrajectoryBatches, extra: Extra) -> Result<()> {
        while let Some(batch) = batches.next().await {
            for point in batch? {
                self.move_to_joint_positions(point.positions, extra.clone()).await?;
            }
        }
        Ok(())
    }
    /// Stops all motion (safety stops call this with `None`).
    async fn stop(&self, extra: Extra) -> Result<()>;
    /// Whether the arm is moving.
    async fn is_moving(&self) -> Result<bool>;
    /// The kinematic model (SVA or URDF).
    async fn kinematics(&self, _extra: Extra) -> Result<Kinematics> {
        Err(super::unimplemented("GetKinematics"))
    }
    /// Meshes of the arm's links, by name.
    async fn models_3d(&self, _extra: Extra) -> Result<HashMap<String, Mesh>> {
        Ok(HashMap::new())
    }
    /// Physical geometry.
    async fn geometries(&self, _extra: Extra) -> Result<Vec<Geometry>> {
        Ok(Vec::new())
    }
    /// Model-specific commands.
    async fn do_command(&self, command: Struct) -> Result<Struct> {
        super::echo(command)
    }
    /// Free-form status: joint positions, end position (when known) and
    /// whether the arm is moving.
    async fn status(&self) -> Result<Struct> {
        let joints = self.joint_positions(None).await?;
        let mut fields = vec![
            ("joint_positions", list(joints.into_iter().map(num))),
            ("is_moving", boolean(self.is_moving().await?)),
        ];
        if let Ok(pose) = self.end_position(None).await {
            fields.push(("end_position", pose_value(&pose)));
        }
        Ok(to_struct(fields))
    }
}

/// A pose as a status value.
pub fn pose_value(p: &Pose) -> prost_types::Value {
    object(to_struct([
        ("x", num(p.x)),
        ("y", num(p.y)),
        ("z", num(p.z)),
        ("o_x", num(p.o_x)),
        ("o_y", num(p.o_y)),
        ("o_z", num(p.o_z)),
        ("theta", num(p.theta)),
    ]))
}

/// Height of the shoulder above the base, mm.
const BASE_HEIGHT: f64 = 200.0;
/// Shoulder-to-elbow length, mm.
const UPPER_ARM: f64 = 300.0;
/// Elbow-to-wrist length, mm.
const FOREARM: f64 = 300.0;
/// Every joint's limit, degrees either way.
const JOINT_LIMIT: f64 = 360.0;

/// Wraps an angle into (−180, 180].
fn wrap(deg: f64) -> f64 {
    let w = deg.rem_euclid(360.0);
    if w > 180.0 { w - 360.0 } else { w }
}

/// The angle equivalent to `deg` (mod 360) nearest `near`, within the
/// joint limits.
fn nearest_equivalent(deg: f64, near: f64) -> f64 {
    let base = wrap(deg);
    let turns = ((near - base) / 360.0).round().clamp(-2.0, 2.0);
    let mut a = base + turns * 360.0;
    if a > JOINT_LIMIT {
        a -= 360.0;
    }
    if a < -JOINT_LIMIT {
        a += 360.0;
    }
    a
}

/// Zeroes rounding noise so poses read cleanly.
fn clean(v: f64) -> f64 {
    if v.abs() < 1e-9 { 0.0 } else { v }
}

/// The fake arm's forward kinematics.
///
/// Joint 0 yaws the arm about the vertical axis; joints 1 (shoulder) and 2
/// (elbow) pitch two 300 mm links in the vertical plane, joint 1 measured up
/// from horizontal and joint 2 relative to the upper arm; the shoulder is
/// 200 mm above the base. The wrist sets the orientation directly: the
/// orientation vector has azimuth `j0 + j3` and elevation `90 − j4`, and
/// `theta` is `j5`. All joints at zero: the arm points straight out along +x
/// at (600, 0, 200) with orientation (0, 0, 1), theta 0.
pub fn forward_kinematics(j: &[f64]) -> Pose {
    let joint = |i: usize| j.get(i).copied().unwrap_or(0.0);
    let yaw = joint(0).to_radians();
    let shoulder = joint(1).to_radians();
    let elbow = (joint(1) + joint(2)).to_radians();
    let reach = UPPER_ARM * shoulder.cos() + FOREARM * elbow.cos();
    let height = BASE_HEIGHT + UPPER_ARM * shoulder.sin() + FOREARM * elbow.sin();
    let azimuth = (joint(0) + joint(3)).to_radians();
    let elevation = (90.0 - joint(4)).to_radians();
    Pose {
        x: clean(reach * yaw.cos()),
        y: clean(reach * yaw.sin()),
        z: clean(height),
        o_x: clean(elevation.cos() * azimuth.cos()),
        o_y: clean(elevation.cos() * azimuth.sin()),
        o_z: clean(elevation.sin()),
        theta: clean(wrap(joint(5))),
    }
}

/// The fake arm's inverse kinematics: joint positions reaching `pose`,
/// choosing the solution nearest `current`. Fails with INVALID_ARGUMENT when
/// the pose is out of reach. A zero orientation vector means (0, 0, 1).
pub fn inverse_kinematics(pose: &Pose, current: &[f64]) -> Result<Vec<f64>> {
    let cur = |i: usize| current.get(i).copied().unwrap_or(0.0);
    let (x, y, z) = (finite("pose.x", pose.x)?, finite("pose.y", pose.y)?, finite("pose.z", pose.z)?);
    let (ox, oy, oz) = (finite("pose.o_x", pose.o_x)?, finite("pose.o_y", pose.o_y)?, finite("pose.o_z", pose.o_z)?);
    let theta = finite("pose.theta", pose.theta)?;

    let reach = x.hypot(y);
    let height = z - BASE_HEIGHT;
    let distance = reach.hypot(height);
    let cos_elbow = (distance * distance - UPPER_ARM * UPPER_ARM - FOREARM * FOREARM) / (2.0 * UPPER_ARM * FOREARM);
    if !(-1.0 - 1e-9..=1.0 + 1e-9).contains(&cos_elbow) {
        return Err(crate::Error::invalid_argument(format!(
            "pose ({x}, {y}, {z}) is out of reach: it is {distance:.1} mm from the shoulder at (0, 0, {BASE_HEIGHT}), \
             the arm reaches {:.1} to {:.1} mm",
            (UPPER_ARM - FOREARM).abs(),
            UPPER_ARM + FOREARM
        )));
    }
    let elbow_abs = cos_elbow.clamp(-1.0, 1.0).acos();
    let j0 = if reach < 1e-9 { cur(0) } else { nearest_equivalent(y.atan2(x).to_degrees(), cur(0)) };
    let (j1, j2) = [elbow_abs, -elbow_abs]
        .into_iter()
        .map(|elbow| {
            let shoulder = height.atan2(reach) - (FOREARM * elbow.sin()).atan2(UPPER_ARM + FOREARM * elbow.cos());
            (shoulder.to_degrees(), elbow.to_degrees())
        })
        .min_by(|a, b| {
            let cost = |(s, e): (f64, f64)| (s - cur(1)).abs() + (e - cur(2)).abs();
            cost(*a).total_cmp(&cost(*b))
        })
        .unwrap_or((0.0, 0.0));

    // Scale first so that huge components do not overflow.
    let scale = ox.abs().max(oy.abs()).max(oz.abs());
    let (ox, oy, oz) = if scale < 1e-12 {
        (0.0, 0.0, 1.0)
    } else {
        let (x, y, z) = (ox / scale, oy / scale, oz / scale);
        let norm = (x * x + y * y + z * z).sqrt();
        (x / norm, y / norm, z / norm)
    };
    let elevation = oz.clamp(-1.0, 1.0).asin().to_degrees();
    let j3 = if ox.hypot(oy) < 1e-9 { cur(3) } else { nearest_equivalent(oy.atan2(ox).to_degrees() - j0, cur(3)) };
    let j4 = 90.0 - elevation;
    let j5 = nearest_equivalent(theta, cur(5));
    let joints = vec![j0, j1, j2, j3, j4, j5];
    check_joints(&joints)?;
    Ok(joints)
}

/// Validates a full set of joint positions of the fake arm.
fn check_joints(values: &[f64]) -> Result<()> {
    if values.len() != FakeArm::JOINTS {
        return Err(crate::Error::invalid_argument(format!(
            "expected {} joint positions, got {}",
            FakeArm::JOINTS,
            values.len()
        )));
    }
    for (i, v) in values.iter().enumerate() {
        in_range(&format!("joint {i} position (degrees)"), *v, -JOINT_LIMIT..=JOINT_LIMIT)?;
    }
    Ok(())
}

/// A simulated six-joint arm (see [`forward_kinematics`]) whose joints move
/// at a finite speed: every move is coordinated so that all joints arrive
/// together, and the slowest joint moves at the speed limit. Moves block
/// until the target is reached; a newer command supersedes a running move
/// (which then fails with CANCELLED), `stop` halts the joints where they
/// are, and dropping a move's future halts the arm.
#[derive(Clone, Debug)]
pub struct FakeArm {
    sim: Arc<Sim<Axes>>,
    speed: f64,
}

impl Default for FakeArm {
    fn default() -> Self {
        Self::new(60.0)
    }
}

impl FakeArm {
    /// Number of joints.
    pub const JOINTS: usize = 6;

    /// A fake arm at all-zero joints whose joints move at most
    /// `speed_degs_per_sec`.
    pub fn new(speed_degs_per_sec: f64) -> Self {
        Self {
            sim: Arc::new(Sim::new(Axes::new(vec![0.0; Self::JOINTS]))),
            speed: speed_degs_per_sec.abs().max(f64::MIN_POSITIVE),
        }
    }

    fn joints_now(&self) -> Vec<f64> {
        self.sim.read(|a| a.positions().to_vec())
    }

    /// Starts a coordinated move to `targets`; returns the command's
    /// generation.
    fn start_move(&self, targets: Vec<f64>, max_speeds: Vec<f64>) -> u64 {
        self.sim.command(move |a| {
            let secs = a.coordinated_secs(&targets, &max_speeds);
            a.go_in(&targets, secs);
        })
    }

    async fn move_joints(&self, targets: Vec<f64>, max_speeds: Vec<f64>) -> Result<()> {
        let generation = self.start_move(targets, max_speeds);
        self.sim.wait(generation).await
    }

    fn speed_limits(&self, options: &MoveOptions) -> Result<Vec<f64>> {
        let positive = |name: &str, v: f64| -> Result<f64> {
            let v = finite(name, v)?;
            if v > 0.0 {
                Ok(v)
            } else {
                Err(crate::Error::invalid_argument(format!("{name} must be greater than 0, got {v}")))
            }
        };
        if !options.max_vel_degs_per_sec_joints.is_empty() {
            if options.max_vel_degs_per_sec_joints.len() != Self::JOINTS {
                return Err(crate::Error::invalid_argument(format!(
                    "max_vel_degs_per_sec_joints needs {} values, got {}",
                    Self::JOINTS,
                    options.max_vel_degs_per_sec_joints.len()
                )));
            }
            return options
                .max_vel_degs_per_sec_joints
                .iter()
                .enumerate()
                .map(|(i, v)| positive(&format!("max_vel_degs_per_sec_joints[{i}]"), *v))
                .collect();
        }
        let speed = match options.max_vel_degs_per_sec {
            Some(v) => positive("max_vel_degs_per_sec", v)?,
            None => self.speed,
        };
        Ok(vec![speed; Self::JOINTS])
    }
}

#[async_trait::async_trait]
impl Arm for FakeArm {
    async fn end_position(&self, _extra: Extra) -> Result<Pose> {
        Ok(forward_kinematics(&self.joints_now()))
    }

    async fn move_to_position(&self, pose: Pose, _extra: Extra) -> Result<()> {
        let targets = inverse_kinematics(&pose, &self.joints_now())?;
        self.move_joints(targets, vec![self.speed; Self::JOINTS]).await
    }

    async fn joint_positions(&self, _extra: Extra) -> Result<Vec<f64>> {
        Ok(self.joints_now())
    }

    async fn move_to_joint_positions(&self, positions: Vec<f64>, _extra: Extra) -> Result<()> {
        check_joints(&positions)?;
        self.move_joints(positions, vec![self.speed; Self::JOINTS]).await
    }

    async fn move_through_joint_positions(
        &self,
        positions: Vec<Vec<f64>>,
        options: MoveOptions,
        _extra: Extra,
    ) -> Result<()> {
        let limits = self.speed_limits(&options)?;
        for p in &positions {
            check_joints(p)?;
        }
        for p in positions {
            self.move_joints(p, limits.clone()).await?;
        }
        Ok(())
    }

    /// Executes the points in order: the arm first moves to the first point
    /// at its speed limit, then takes each segment in the time between its
    /// points. If the next batch has not arrived when a segment ends, the arm
    /// holds position until it does (the rest of the trajectory is delayed).
    async fn follow_trajectory(&self, mut batches: TrajectoryBatches, _extra: Extra) -> Result<()> {
        let mut last_time: Option<Duration> = None;
        let mut index = 0usize;
        while let Some(batch) = batches.next().await {
            for point in batch? {
                check_joints(&point.positions).map_err(|e| {
                    crate::Error::invalid_argument(format!("trajectory point {index}: {}", e.message()))
                })?;
                let generation = match last_time {
                    None if point.time != Duration::ZERO => {
                        return Err(crate::Error::invalid_argument(format!(
                            "the first trajectory point must have time 0, got {:?}",
                            point.time
                        )));
                    }
                    None => self.start_move(point.positions, vec![self.speed; Self::JOINTS]),
                    Some(previous) if point.time <= previous => {
                        return Err(crate::Error::invalid_argument(format!(
                            "trajectory point {index}: time {:?} is not after the previous point's {previous:?}",
                            point.time
                        )));
                    }
                    Some(previous) => {
                        let secs = (point.time - previous).as_secs_f64();
                        self.sim.command(|a| a.go_in(&point.positions, secs))
                    }
                };
                self.sim.wait(generation).await?;
                last_time = Some(point.time);
                index += 1;
            }
        }
        Ok(())
    }

    async fn stop(&self, _extra: Extra) -> Result<()> {
        self.sim.halt();
        Ok(())
    }

    async fn is_moving(&self) -> Result<bool> {
        Ok(self.sim.read(Axes::is_moving))
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[tokio::test(start_paused = true)]
    async fn joints_move_at_finite_speed_and_arrive_together() {
        let arm = FakeArm::new(30.0);
        let a2 = arm.clone();
        let start = Instant::now();
        let mv =
            tokio::spawn(async move { a2.move_to_joint_positions(vec![60.0, -30.0, 0.0, 0.0, 0.0, 15.0], None).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The slowest joint (60°) takes 2 s; the others are scaled to match.
        assert!(close(&arm.joint_positions(None).await.unwrap(), &[30.0, -15.0, 0.0, 0.0, 0.0, 7.5]));
        assert!(arm.is_moving().await.unwrap());
        mv.await.unwrap().unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        assert!(close(&arm.joint_positions(None).await.unwrap(), &[60.0, -30.0, 0.0, 0.0, 0.0, 15.0]));
        assert!(!arm.is_moving().await.unwrap());

        let st = arm.status().await.unwrap();
        assert!(st.fields.contains_key("end_position"));
        assert!(st.fields.contains_key("joint_positions"));
    }

    #[tokio::test(start_paused = true)]
    async fn validation() {
        let arm = FakeArm::default();
        for bad in [vec![0.0; 5], vec![0.0, 0.0, f64::NAN, 0.0, 0.0, 0.0], vec![0.0, 400.0, 0.0, 0.0, 0.0, 0.0]] {
            let e = arm.move_to_joint_positions(bad, None).await.unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{e:?}");
        }
        let far = Pose { x: 5000.0, o_z: 1.0, ..Default::default() };
        let e = arm.move_to_position(far, None).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(e.message().contains("out of reach"));
        let opts = MoveOptions { max_vel_degs_per_sec: Some(0.0), ..Default::default() };
        let e = arm.move_through_joint_positions(vec![vec![0.0; 6]], opts, None).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(!arm.is_moving().await.unwrap());
    }

    #[test]
    fn kinematics_round_trip() {
        let home = forward_kinematics(&[0.0; 6]);
        assert_eq!(home, Pose { x: 600.0, y: 0.0, z: 200.0, o_x: 0.0, o_y: 0.0, o_z: 1.0, theta: 0.0 });
        let joints = [30.0, 20.0, -50.0, 10.0, 120.0, -45.0];
        let pose = forward_kinematics(&joints);
        let back = inverse_kinematics(&pose, &joints).unwrap();
        assert!(close(&back, &joints), "{back:?}");
        // From elsewhere the solution may differ but reaches the same pose.
        let other = inverse_kinematics(&pose, &[0.0; 6]).unwrap();
        let again = forward_kinematics(&other);
        for (a, b) in [
            (again.x, pose.x),
            (again.y, pose.y),
            (again.z, pose.z),
            (again.o_x, pose.o_x),
            (again.o_y, pose.o_y),
            (again.o_z, pose.o_z),
            (again.theta, pose.theta),
        ] {
            assert!((a - b).abs() < 1e-6, "{again:?} vs {pose:?}");
        }
    }

    #[test]
    fn extreme_orientations_are_handled() {
        let pose = Pose { x: 400.0, y: 0.0, z: 200.0, o_x: 1e308, o_y: 1e308, o_z: 0.0, theta: 1e300 };
        let j = inverse_kinematics(&pose, &[0.0; 6]).unwrap();
        assert!(j.iter().all(|v| v.abs() <= JOINT_LIMIT), "{j:?}");
        let p = forward_kinematics(&j);
        assert!((p.o_x - p.o_y).abs() < 1e-9 && p.o_z.abs() < 1e-9, "{p:?}");
        let e = inverse_kinematics(&Pose { x: f64::MAX, ..pose }, &[0.0; 6]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
    }

    #[tokio::test(start_paused = true)]
    async fn move_to_position_reaches_the_pose() {
        let arm = FakeArm::new(90.0);
        let target = Pose { x: 300.0, y: 300.0, z: 400.0, o_x: 1.0, o_y: 0.0, o_z: 0.0, theta: 30.0 };
        arm.move_to_position(target, None).await.unwrap();
        let p = arm.end_position(None).await.unwrap();
        for (a, b) in
            [(p.x, 300.0), (p.y, 300.0), (p.z, 400.0), (p.o_x, 1.0), (p.o_y, 0.0), (p.o_z, 0.0), (p.theta, 30.0)]
        {
            assert!((a - b).abs() < 1e-6, "{p:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stop_halts_supersede_cancels_and_drop_halts() {
        let arm = FakeArm::new(10.0);
        let a2 = arm.clone();
        let mv =
            tokio::spawn(async move { a2.move_to_joint_positions(vec![100.0, 0.0, 0.0, 0.0, 0.0, 0.0], None).await });
        tokio::time::sleep(Duration::from_secs(2)).await;
        arm.stop(None).await.unwrap();
        assert_eq!(mv.await.unwrap().unwrap_err().kind(), crate::ErrorKind::Cancelled);
        let at = arm.joint_positions(None).await.unwrap()[0];
        assert!((at - 20.0).abs() < 1e-6, "{at}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(arm.joint_positions(None).await.unwrap()[0], at);

        let a2 = arm.clone();
        let mv =
            tokio::spawn(async move { a2.move_to_joint_positions(vec![100.0, 0.0, 0.0, 0.0, 0.0, 0.0], None).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        mv.abort();
        let _ = mv.await;
        assert!(!arm.is_moving().await.unwrap());
        let at = arm.joint_positions(None).await.unwrap()[0];
        assert!((at - 30.0).abs() < 1e-6, "{at}");
    }

    #[tokio::test(start_paused = true)]
    async fn move_through_visits_each_point() {
        let arm = FakeArm::new(10.0);
        let start = Instant::now();
        let points = vec![vec![10.0, 0.0, 0.0, 0.0, 0.0, 0.0], vec![10.0, 20.0, 0.0, 0.0, 0.0, 0.0]];
        arm.move_through_joint_positions(points.clone(), MoveOptions::default(), None).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
        assert!(close(&arm.joint_positions(None).await.unwrap(), &points[1]));

        // A faster limit from the options.
        let start = Instant::now();
        let opts = MoveOptions { max_vel_degs_per_sec: Some(40.0), ..Default::default() };
        arm.move_through_joint_positions(vec![vec![0.0; 6]], opts, None).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn follows_a_streamed_trajectory_in_time() {
        let arm = FakeArm::new(10.0);
        let point = |ms: u64, j0: f64| TrajectoryPoint {
            time: Duration::from_millis(ms),
            positions: vec![j0, 0.0, 0.0, 0.0, 0.0, 0.0],
            ..Default::default()
        };
        let batches: Vec<Result<Vec<TrajectoryPoint>>> =
            vec![Ok(vec![point(0, 0.0), point(500, 45.0)]), Ok(vec![point(1500, 90.0)])];
        let start = Instant::now();
        arm.follow_trajectory(futures::stream::iter(batches).boxed(), None).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(1500));
        assert_eq!(arm.joint_positions(None).await.unwrap()[0], 90.0);

        let bad: Vec<Result<Vec<TrajectoryPoint>>> = vec![Ok(vec![point(0, 90.0), point(0, 80.0)])];
        let e = arm.follow_trajectory(futures::stream::iter(bad).boxed(), None).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        let bad: Vec<Result<Vec<TrajectoryPoint>>> = vec![Ok(vec![point(10, 90.0)])];
        let e = arm.follow_trajectory(futures::stream::iter(bad).boxed(), None).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
    }
}
