//! Mobile bases (`rdk:component:base`).

use std::sync::Arc;

use super::sim::{Plant, SLACK_SECS, Sim};
use super::{Extra, Geometry, Pose, Result, Struct, Vector3, boolean, finite, in_range, num, object, to_struct};

/// Physical properties of a base.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BaseProperties {
    /// Distance between the wheels, metres.
    pub width_meters: f64,
    /// Smallest turning radius, metres (0 for a base that spins in place).
    pub turning_radius_meters: f64,
    /// Wheel circumference, metres.
    pub wheel_circumference_meters: f64,
}

/// A mobile base driver. Linear motion is along +Y (forward) in mm and
/// mm/s; rotation is about +Z (counter-clockwise seen from above) in degrees
/// and degrees per second.
#[async_trait::async_trait]
pub trait Base: Send + Sync + 'static {
    /// Drives `distance_mm` (negative: backwards) at `mm_per_sec` and returns
    /// when done.
    async fn move_straight(&self, distance_mm: i64, mm_per_sec: f64, extra: Extra) -> Result<()>;
    /// Turns in place by `angle_deg` (positive: counter-clockwise) at
    /// `degs_per_sec` and returns when done.
    async fn spin(&self, angle_deg: f64, degs_per_sec: f64, extra: Extra) -> Result<()>;
    /// Sets linear and angular power, each component a fraction in −1..=1.
    async fn set_power(&self, linear: Vector3, angular: Vector3, extra: Extra) -> Result<()>;
    /// Sets linear (mm/s) and angular (degrees/s) velocity.
    async fn set_velocity(&self, linear: Vector3, angular: Vector3, extra: Extra) -> Result<()>;
    /// Stops the base (safety stops call this with `None`).
    async fn stop(&self, extra: Extra) -> Result<()>;
    /// Whether the base is moving.
    async fn is_moving(&self) -> Result<bool>;
    /// Physical properties.
    async fn properties(&self, extra: Extra) -> Result<BaseProperties>;
    /// Physical geometry.
    async fn geometries(&self, _extra: Extra) -> Result<Vec<Geometry>> {
        Ok(Vec::new())
    }
    /// Model-specific commands.
    async fn do_command(&self, command: Struct) -> Result<Struct> {
        super::echo(command)
    }
    /// Free-form status.
    async fn status(&self) -> Result<Struct> {
        Ok(to_struct([("is_moving", boolean(self.is_moving().await?))]))
    }
}

/// The simulated drive: a pose integrated from velocities over time.
#[derive(Clone, Debug, Default)]
struct Drive {
    /// Position, mm.
    x: f64,
    y: f64,
    /// Heading, degrees counter-clockwise from +Y, within (−180, 180].
    heading: f64,
    /// Forward velocity, mm/s.
    linear: f64,
    /// Turn rate, degrees/s.
    angular: f64,
    /// The power fractions, when the motion was set by power.
    power: Option<(f64, f64)>,
    /// Seconds left of a MoveStraight or Spin.
    remaining: Option<f64>,
}

impl Drive {
    /// Integrates the current velocities over `dt` seconds (exactly, along
    /// an arc when turning).
    fn integrate(&mut self, dt: f64) {
        let (v, w) = (self.linear, self.angular.to_radians());
        let h0 = self.heading.to_radians();
        if (w * dt).abs() < 1e-12 {
            self.x -= v * dt * h0.sin();
            self.y += v * dt * h0.cos();
        } else {
            let h1 = h0 + w * dt;
            self.x += v / w * (h1.cos() - h0.cos());
            self.y += v / w * (h1.sin() - h0.sin());
        }
        self.heading = wrap(self.heading + self.angular * dt);
    }

    fn moving(&self) -> bool {
        self.linear != 0.0 || self.angular != 0.0
    }
}

impl Plant for Drive {
    fn advance(&mut self, dt: f64) {
        match self.remaining {
            None => self.integrate(dt),
            Some(left) if left <= dt + SLACK_SECS => {
                self.integrate(left);
                self.halt();
            }
            Some(left) => {
                self.integrate(dt);
                self.remaining = Some(left - dt);
            }
        }
    }

    fn time_to_goal(&self) -> Option<f64> {
        self.remaining
    }

    fn halt(&mut self) {
        self.linear = 0.0;
        self.angular = 0.0;
        self.power = None;
        self.remaining = None;
    }
}

/// Wraps an angle into (−180, 180].
fn wrap(deg: f64) -> f64 {
    let w = deg.rem_euclid(360.0);
    if w > 180.0 { w - 360.0 } else { w }
}

/// A simulated differential-drive base. Velocities (set directly, from power
/// fractions of the maximum speeds, or by MoveStraight/Spin) are integrated
/// into a pose in the plane, which the status reports. MoveStraight and Spin
/// block for distance / speed; a newer command supersedes them (they fail
/// with CANCELLED), Stop halts the base, and dropping their future stops it.
/// Sideways (X) linear and non-Z angular components are ignored.
#[derive(Clone, Debug)]
pub struct FakeBase {
    sim: Arc<Sim<Drive>>,
    properties: BaseProperties,
    max_speed_mm_per_sec: f64,
    max_angular_degs_per_sec: f64,
}

impl Default for FakeBase {
    fn default() -> Self {
        Self::new(
            BaseProperties { width_meters: 0.6, turning_radius_meters: 0.0, wheel_circumference_meters: 0.3 },
            500.0,
            90.0,
        )
    }
}

impl FakeBase {
    /// A fake base at the origin, heading +Y. Full power is
    /// `max_speed_mm_per_sec` forward and `max_angular_degs_per_sec` turning.
    pub fn new(properties: BaseProperties, max_speed_mm_per_sec: f64, max_angular_degs_per_sec: f64) -> Self {
        Self {
            sim: Arc::new(Sim::new(Drive::default())),
            properties,
            max_speed_mm_per_sec: max_speed_mm_per_sec.abs(),
            max_angular_degs_per_sec: max_angular_degs_per_sec.abs(),
        }
    }

    /// The pose in the plane: x, y in mm, theta the heading in degrees
    /// (counter-clockwise from +Y, within (−180, 180]); orientation (0, 0, 1).
    pub fn pose(&self) -> Pose {
        self.sim.read(|d| Pose { x: d.x, y: d.y, z: 0.0, o_x: 0.0, o_y: 0.0, o_z: 1.0, theta: wrap(d.heading) })
    }

    /// Current (linear mm/s, angular degrees/s).
    pub fn velocity(&self) -> (f64, f64) {
        self.sim.read(|d| (d.linear, d.angular))
    }

    fn set(&self, linear: f64, angular: f64, power: Option<(f64, f64)>) {
        self.sim.command(|d| {
            d.halt();
            d.linear = linear;
            d.angular = angular;
            d.power = power.filter(|_| linear != 0.0 || angular != 0.0);
        });
    }

    /// Runs at the given velocities for `secs` and waits.
    async fn run_for(&self, linear: f64, angular: f64, secs: f64) -> Result<()> {
        self.sim
            .run(|d| {
                d.halt();
                d.linear = linear;
                d.angular = angular;
                d.remaining = Some(secs);
            })
            .await
    }
}

fn vector(name: &str, v: &Vector3) -> Result<(f64, f64, f64)> {
    Ok((finite(&format!("{name}.x"), v.x)?, finite(&format!("{name}.y"), v.y)?, finite(&format!("{name}.z"), v.z)?))
}

#[async_trait::async_trait]
impl Base for FakeBase {
    async fn move_straight(&self, distance_mm: i64, mm_per_sec: f64, _extra: Extra) -> Result<()> {
        let speed = finite("mm_per_sec", mm_per_sec)?;
        if distance_mm == 0 {
            self.sim.halt();
            return Ok(());
        }
        if speed == 0.0 {
            return Err(crate::Error::invalid_argument("mm_per_sec must not be 0"));
        }
        let distance = distance_mm as f64;
        let velocity = speed.abs() * (distance * speed).signum();
        self.run_for(velocity, 0.0, distance.abs() / speed.abs()).await
    }

    async fn spin(&self, angle_deg: f64, degs_per_sec: f64, _extra: Extra) -> Result<()> {
        let (angle, speed) = (finite("angle_deg", angle_deg)?, finite("degs_per_sec", degs_per_sec)?);
        if angle == 0.0 {
            self.sim.halt();
            return Ok(());
        }
        if speed == 0.0 {
            return Err(crate::Error::invalid_argument("degs_per_sec must not be 0"));
        }
        let rate = speed.abs() * (angle * speed).signum();
        self.run_for(0.0, rate, angle.abs() / speed.abs()).await
    }

    async fn set_power(&self, linear: Vector3, angular: Vector3, _extra: Extra) -> Result<()> {
        let (lx, ly, lz) = vector("linear", &linear)?;
        let (ax, ay, az) = vector("angular", &angular)?;
        for (name, v) in [
            ("linear.x", lx),
            ("linear.y", ly),
            ("linear.z", lz),
            ("angular.x", ax),
            ("angular.y", ay),
            ("angular.z", az),
        ] {
            in_range(name, v, -1.0..=1.0)?;
        }
        self.set(ly * self.max_speed_mm_per_sec, az * self.max_angular_degs_per_sec, Some((ly, az)));
        Ok(())
    }

    async fn set_velocity(&self, linear: Vector3, angular: Vector3, _extra: Extra) -> Result<()> {
        let (_, ly, _) = vector("linear", &linear)?;
        let (_, _, az) = vector("angular", &angular)?;
        self.set(ly, az, None);
        Ok(())
    }

    async fn stop(&self, _extra: Extra) -> Result<()> {
        self.sim.halt();
        Ok(())
    }

    async fn is_moving(&self) -> Result<bool> {
        Ok(self.sim.read(Drive::moving))
    }

    async fn properties(&self, _extra: Extra) -> Result<BaseProperties> {
        Ok(self.properties)
    }

    async fn status(&self) -> Result<Struct> {
        let (d, pose) = (self.sim.read(Drive::clone), self.pose());
        let mut fields = vec![
            ("is_moving", boolean(d.moving())),
            ("linear_mm_per_sec", num(d.linear)),
            ("angular_degs_per_sec", num(d.angular)),
            ("pose", object(to_struct([("x_mm", num(pose.x)), ("y_mm", num(pose.y)), ("theta_deg", num(pose.theta))]))),
        ];
        if let Some((linear, angular)) = d.power {
            fields.push(("power", object(to_struct([("linear", num(linear)), ("angular", num(angular))]))));
        }
        Ok(to_struct(fields))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    fn v(x: f64, y: f64, z: f64) -> Vector3 {
        Vector3 { x, y, z }
    }

    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[tokio::test(start_paused = true)]
    async fn velocity_integrates_a_pose() {
        let base = FakeBase::default();
        base.set_velocity(v(0.0, 100.0, 0.0), v(0.0, 0.0, 0.0), None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let p = base.pose();
        assert!(near(p.x, 0.0) && near(p.y, 200.0), "{p:?}");
        assert!(base.is_moving().await.unwrap());

        // A quarter circle to the left: radius v/ω = 100 / (π/2 rad/s).
        base.set_velocity(v(0.0, 100.0, 0.0), v(0.0, 0.0, 90.0), None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = 100.0 / std::f64::consts::FRAC_PI_2;
        let p = base.pose();
        assert!(near(p.x, -r) && near(p.y, 200.0 + r) && near(p.theta, 90.0), "{p:?}");

        base.stop(None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(base.pose(), p);
        assert!(!base.is_moving().await.unwrap());
        let st = base.status().await.unwrap();
        assert!(st.fields.contains_key("pose"));
    }

    #[tokio::test(start_paused = true)]
    async fn power_scales_max_speed_and_is_validated() {
        let base = FakeBase::new(BaseProperties::default(), 200.0, 90.0);
        base.set_power(v(0.0, -0.5, 0.0), v(0.0, 0.0, 0.0), None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(near(base.pose().y, -100.0));
        for (l, a) in [(v(0.0, 1.5, 0.0), v(0.0, 0.0, 0.0)), (v(0.0, 0.0, 0.0), v(0.0, 0.0, f64::NAN))] {
            let e = base.set_power(l, a, None).await.unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        }
        let e = base.move_straight(100, 0.0, None).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        let e = base.spin(f64::INFINITY, 10.0, None).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
    }

    #[tokio::test(start_paused = true)]
    async fn move_straight_and_spin_block_for_their_duration() {
        let base = FakeBase::default();
        let start = Instant::now();
        base.move_straight(-300, 150.0, None).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        assert!(near(base.pose().y, -300.0));
        assert!(!base.is_moving().await.unwrap());

        let start = Instant::now();
        base.spin(-90.0, 45.0, None).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        assert!(near(base.pose().theta, -90.0));
        // Heading −90° (clockwise) faces +X.
        base.move_straight(100, 100.0, None).await.unwrap();
        let p = base.pose();
        assert!(near(p.x, 100.0) && near(p.y, -300.0), "{p:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_and_supersede_cancel_moves() {
        let base = FakeBase::default();
        let b2 = base.clone();
        let mv = tokio::spawn(async move { b2.move_straight(10_000, 100.0, None).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        base.set_velocity(v(0.0, 0.0, 0.0), v(0.0, 0.0, 10.0), None).await.unwrap();
        assert_eq!(mv.await.unwrap().unwrap_err().kind(), crate::ErrorKind::Cancelled);
        assert!(base.is_moving().await.unwrap(), "the newer command keeps running");

        let b2 = base.clone();
        let mv = tokio::spawn(async move { b2.spin(720.0, 90.0, None).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        mv.abort();
        let _ = mv.await;
        assert!(!base.is_moving().await.unwrap(), "dropping a Spin stops the base");
    }
}
