//! Motors (`rdk:component:motor`).

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Extra, Geometry, Result, Struct, finite};

/// What a motor can report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MotorProperties {
    /// The motor knows its position (has an encoder).
    pub position_reporting: bool,
}

/// A motor driver. Positions are in revolutions, speeds in RPM, power as a
/// fraction in −1..=1.
#[async_trait::async_trait]
pub trait Motor: Send + Sync + 'static {
    /// Sets the power fraction (−1..=1); 0 stops the motor.
    async fn set_power(&self, power_pct: f64, extra: Extra) -> Result<()>;
    /// Turns `revolutions` at `rpm` (the sign of their product is the
    /// direction) and returns when done. `revolutions == 0` runs forever.
    async fn go_for(&self, rpm: f64, revolutions: f64, extra: Extra) -> Result<()>;
    /// Moves to an absolute position at `rpm` and returns when there.
    async fn go_to(&self, rpm: f64, position_revolutions: f64, extra: Extra) -> Result<()>;
    /// Runs at `rpm` until told otherwise.
    async fn set_rpm(&self, rpm: f64, extra: Extra) -> Result<()>;
    /// Makes the current position read as `offset`.
    async fn reset_zero_position(&self, offset: f64, extra: Extra) -> Result<()>;
    /// Current position in revolutions.
    async fn position(&self, extra: Extra) -> Result<f64>;
    /// Capabilities.
    async fn properties(&self, extra: Extra) -> Result<MotorProperties>;
    /// Stops the motor (safety stops call this with `None`).
    async fn stop(&self, extra: Extra) -> Result<()>;
    /// Whether power is applied, and the power fraction.
    async fn is_powered(&self, extra: Extra) -> Result<(bool, f64)>;
    /// Whether the motor is turning.
    async fn is_moving(&self) -> Result<bool>;
    /// Model-specific commands.
    async fn do_command(&self, command: Struct) -> Result<Struct> {
        super::echo(command)
    }
    /// Free-form status.
    async fn status(&self) -> Result<Struct> {
        let (on, power) = self.is_powered(None).await?;
        Ok(super::to_struct([("is_powered", super::boolean(on)), ("power_pct", super::num(power))]))
    }
    /// Physical geometry.
    async fn geometries(&self, _extra: Extra) -> Result<Vec<Geometry>> {
        Ok(Vec::new())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Idle,
    /// Constant speed (from power or RPM) with the power fraction it shows.
    Run {
        rpm: f64,
        power: f64,
    },
    /// Towards a target position.
    Goal {
        rpm: f64,
        target: f64,
    },
}

#[derive(Debug)]
struct State {
    /// Position at `at`.
    position: f64,
    at: Instant,
    mode: Mode,
}

impl State {
    /// Advances the position to `now`.
    fn settle(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        match self.mode {
            Mode::Idle => {}
            Mode::Run { rpm, .. } => self.position += rpm * dt / 60.0,
            Mode::Goal { rpm, target } => {
                let step = rpm.abs() * dt / 60.0;
                let remaining = target - self.position;
                if remaining.abs() <= step {
                    self.position = target;
                    self.mode = Mode::Idle;
                } else {
                    self.position += step * remaining.signum();
                }
            }
        }
        self.at = now;
    }
}

/// A simulated motor whose position advances with power or RPM over time.
/// GoFor/GoTo finish when the position reaches the target; a newer command
/// supersedes them; cancelling a GoFor/GoTo (dropping its future) stops the
/// motor.
#[derive(Clone)]
pub struct FakeMotor {
    inner: Arc<FakeMotorInner>,
}

struct FakeMotorInner {
    max_rpm: f64,
    state: Mutex<State>,
    /// Bumped by every command; a waiting GoFor/GoTo watches it.
    generation: watch::Sender<u64>,
}

impl Default for FakeMotor {
    fn default() -> Self {
        Self::new(100.0)
    }
}

impl std::fmt::Debug for FakeMotor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeMotor").field("max_rpm", &self.inner.max_rpm).finish_non_exhaustive()
    }
}

struct StopOnDrop<'a> {
    motor: &'a FakeMotor,
    generation: u64,
    armed: bool,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed && *self.motor.inner.generation.borrow() == self.generation {
            self.motor.command(Mode::Idle);
        }
    }
}

impl FakeMotor {
    /// A fake motor whose full power is `max_rpm`.
    pub fn new(max_rpm: f64) -> Self {
        let (generation, _) = watch::channel(0);
        Self {
            inner: Arc::new(FakeMotorInner {
                max_rpm: max_rpm.abs().max(f64::MIN_POSITIVE),
                state: Mutex::new(State { position: 0.0, at: Instant::now(), mode: Mode::Idle }),
                generation,
            }),
        }
    }

    /// Switches mode; returns the new generation.
    fn command(&self, mode: Mode) -> u64 {
        let mut st = self.inner.state.lock();
        st.settle(Instant::now());
        st.mode = mode;
        let mut generation = 0;
        self.inner.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        generation
    }

    fn clamp_rpm(&self, rpm: f64) -> f64 {
        rpm.clamp(-self.inner.max_rpm, self.inner.max_rpm)
    }

    /// Drives to `target` at `rpm` and waits for arrival.
    async fn go_to_target(&self, rpm: f64, target: f64) -> Result<()> {
        let rpm = self.clamp_rpm(rpm);
        if rpm == 0.0 {
            return Err(crate::Error::invalid_argument("rpm must not be 0"));
        }
        let generation = self.command(Mode::Goal { rpm, target });
        let mut guard = StopOnDrop { motor: self, generation, armed: true };
        let mut changes = self.inner.generation.subscribe();
        loop {
            let arrival = {
                let mut st = self.inner.state.lock();
                st.settle(Instant::now());
                match st.mode {
                    Mode::Goal { rpm, target } if *self.inner.generation.borrow() == generation => {
                        let secs = (target - st.position).abs() / rpm.abs() * 60.0;
                        // Saturates rather than panicking on huge or infinite times.
                        super::sim::deadline(st.at, secs)
                    }
                    _ => break,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(arrival) => {}
                _ = changes.changed() => {}
            }
        }
        guard.armed = false;
        if *self.inner.generation.borrow() == generation {
            Ok(())
        } else {
            Err(crate::Error::cancelled("motor command superseded by a newer command"))
        }
    }
}

#[async_trait::async_trait]
impl Motor for FakeMotor {
    async fn set_power(&self, power_pct: f64, _extra: Extra) -> Result<()> {
        let power = finite("power_pct", power_pct)?;
        if !(-1.0..=1.0).contains(&power) {
            return Err(crate::Error::invalid_argument(format!("power_pct must be within [-1, 1], got {power}")));
        }
        let mode = if power == 0.0 { Mode::Idle } else { Mode::Run { rpm: power * self.inner.max_rpm, power } };
        self.command(mode);
        Ok(())
    }

    async fn go_for(&self, rpm: f64, revolutions: f64, extra: Extra) -> Result<()> {
        let (rpm, revolutions) = (finite("rpm", rpm)?, finite("revolutions", revolutions)?);
        if revolutions == 0.0 {
            return self.set_rpm(rpm, extra).await;
        }
        let direction = (rpm * revolutions).signum();
        let target = self.position(None).await? + direction * revolutions.abs();
        self.go_to_target(rpm.abs(), target).await
    }

    async fn go_to(&self, rpm: f64, position_revolutions: f64, _extra: Extra) -> Result<()> {
        let (rpm, target) = (finite("rpm", rpm)?, finite("position_revolutions", position_revolutions)?);
        self.go_to_target(rpm.abs(), target).await
    }

    async fn set_rpm(&self, rpm: f64, _extra: Extra) -> Result<()> {
        let rpm = self.clamp_rpm(finite("rpm", rpm)?);
        let mode = if rpm == 0.0 { Mode::Idle } else { Mode::Run { rpm, power: rpm / self.inner.max_rpm } };
        self.command(mode);
        Ok(())
    }

    async fn reset_zero_position(&self, offset: f64, _extra: Extra) -> Result<()> {
        let offset = finite("offset", offset)?;
        let mut st = self.inner.state.lock();
        st.settle(Instant::now());
        // The current position now reads as -offset (rdk's convention).
        if let Mode::Goal { rpm, target } = st.mode {
            st.mode = Mode::Goal { rpm, target: target - st.position - offset };
        }
        st.position = -offset;
        Ok(())
    }

    async fn position(&self, _extra: Extra) -> Result<f64> {
        let mut st = self.inner.state.lock();
        st.settle(Instant::now());
        Ok(st.position)
    }

    async fn properties(&self, _extra: Extra) -> Result<MotorProperties> {
        Ok(MotorProperties { position_reporting: true })
    }

    async fn stop(&self, _extra: Extra) -> Result<()> {
        self.command(Mode::Idle);
        Ok(())
    }

    async fn is_powered(&self, _extra: Extra) -> Result<(bool, f64)> {
        let mut st = self.inner.state.lock();
        st.settle(Instant::now());
        Ok(match st.mode {
            Mode::Idle => (false, 0.0),
            Mode::Run { power, .. } => (true, power),
            Mode::Goal { rpm, target } => (true, rpm.abs() / self.inner.max_rpm * (target - st.position).signum()),
        })
    }

    async fn is_moving(&self) -> Result<bool> {
        let mut st = self.inner.state.lock();
        st.settle(Instant::now());
        Ok(st.mode != Mode::Idle)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn power_advances_position_and_stop_halts_it() {
        let m = FakeMotor::new(60.0);
        m.set_power(0.5, None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // 30 rpm for 2 s = 1 revolution.
        assert!((m.position(None).await.unwrap() - 1.0).abs() < 1e-6);
        assert_eq!(m.is_powered(None).await.unwrap(), (true, 0.5));
        m.stop(None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!((m.position(None).await.unwrap() - 1.0).abs() < 1e-6);
        assert!(!m.is_moving().await.unwrap());
        assert!(m.set_power(1.5, None).await.is_err());
        assert!(m.set_power(f64::NAN, None).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn go_for_finishes_at_target() {
        let m = FakeMotor::new(120.0);
        let start = Instant::now();
        m.go_for(-60.0, 2.0, None).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        assert!((m.position(None).await.unwrap() + 2.0).abs() < 1e-6);
        assert!(!m.is_moving().await.unwrap());
        m.go_to(120.0, 1.0, None).await.unwrap();
        assert!((m.position(None).await.unwrap() - 1.0).abs() < 1e-6);
    }

    #[tokio::test(start_paused = true)]
    async fn newer_command_supersedes_and_cancel_stops() {
        let m = FakeMotor::new(60.0);
        let m2 = m.clone();
        let long = tokio::spawn(async move { m2.go_for(60.0, 100.0, None).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        m.set_power(0.25, None).await.unwrap();
        let err = long.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Cancelled);
        assert!(m.is_moving().await.unwrap(), "the newer command keeps running");

        let m3 = m.clone();
        let long = tokio::spawn(async move { m3.go_for(60.0, 100.0, None).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        long.abort();
        let _ = long.await;
        assert!(!m.is_moving().await.unwrap(), "dropping a GoFor stops the motor");
    }
}
