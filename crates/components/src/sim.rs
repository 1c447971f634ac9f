//! Machinery shared by the fake actuators: a simulated plant advanced by
//! (tokio) time, commands that supersede each other, and blocking moves that
//! halt the plant when their future is dropped.
//!
//! Time comes from `tokio::time`, so tests with a paused clock are exact.

use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Result;

/// Slack, in seconds of travel, within which a goal counts as reached. It
/// absorbs the rounding of deadlines to whole nanoseconds (and the timer's
/// rounding up to milliseconds only ever overshoots).
pub(crate) const SLACK_SECS: f64 = 1e-8;

/// Far enough in the future to mean "never" without overflowing `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// `at + secs`, saturating to "never" for huge, NaN or infinite durations.
pub(crate) fn deadline(at: Instant, secs: f64) -> Instant {
    Duration::try_from_secs_f64(secs.max(0.0))
        .ok()
        .filter(|d| *d < FAR_FUTURE)
        .and_then(|d| at.checked_add(d))
        .unwrap_or_else(|| at + FAR_FUTURE)
}

/// A simulated mechanism.
pub(crate) trait Plant: Send + 'static {
    /// Advances the state by `dt` seconds.
    fn advance(&mut self, dt: f64);
    /// Seconds until the current goal is reached; `None` when there is no
    /// goal (idle, or running until told otherwise).
    fn time_to_goal(&self) -> Option<f64>;
    /// Halts all motion where it is.
    fn halt(&mut self);
}

#[derive(Debug)]
struct Clocked<P> {
    plant: P,
    /// The time the plant's state is for.
    at: Instant,
}

/// A plant, the time its state is for, and a generation counter bumped by
/// every command so that waiting moves notice they were superseded.
#[derive(Debug)]
pub(crate) struct Sim<P> {
    state: Mutex<Clocked<P>>,
    generation: watch::Sender<u64>,
}

/// Halts the plant if a move's future is dropped while it is still the
/// latest command.
struct HaltOnDrop<'a, P: Plant> {
    sim: &'a Sim<P>,
    generation: u64,
    armed: bool,
}

impl<P: Plant> Drop for HaltOnDrop<'_, P> {
    fn drop(&mut self) {
        if self.armed && *self.sim.generation.borrow() == self.generation {
            self.sim.command(P::halt);
        }
    }
}

impl<P: Plant> Sim<P> {
    pub(crate) fn new(plant: P) -> Self {
        let (generation, _) = watch::channel(0);
        Self { state: Mutex::new(Clocked { plant, at: Instant::now() }), generation }
    }

    /// The state advanced to now, locked.
    fn settled(&self) -> MutexGuard<'_, Clocked<P>> {
        let mut st = self.state.lock();
        let now = Instant::now();
        let dt = now.saturating_duration_since(st.at).as_secs_f64();
        st.plant.advance(dt);
        st.at = now;
        st
    }

    /// Reads the current state.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&P) -> R) -> R {
        f(&self.settled().plant)
    }

    /// Issues a command: changes the state and supersedes every running move.
    /// Returns the command's generation.
    pub(crate) fn command(&self, f: impl FnOnce(&mut P)) -> u64 {
        let mut st = self.settled();
        f(&mut st.plant);
        let mut generation = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        generation
    }

    /// Halts the plant, superseding every running move.
    pub(crate) fn halt(&self) {
        self.command(P::halt);
    }

    /// Issues a command and waits until its goal is reached.
    pub(crate) async fn run(&self, f: impl FnOnce(&mut P)) -> Result<()> {
        let generation = self.command(f);
        self.wait(generation).await
    }

    /// Waits until the goal of command `generation` is reached. Fails with
    /// CANCELLED when a newer command (including a stop) supersedes it;
    /// dropping the future halts the plant unless it was superseded.
    pub(crate) async fn wait(&self, generation: u64) -> Result<()> {
        let mut guard = HaltOnDrop { sim: self, generation, armed: true };
        let mut changes = self.generation.subscribe();
        let reached = loop {
            let until = {
                let st = self.settled();
                if *self.generation.borrow() != generation {
                    break false;
                }
                match st.plant.time_to_goal() {
                    None => break true,
                    // Wake a hair early: rounding then never costs a whole
                    // timer tick, and the slack counts the goal as reached.
                    Some(secs) => deadline(st.at, secs - SLACK_SECS / 2.0),
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = changes.changed() => {}
            }
        };
        guard.armed = false;
        if reached { Ok(()) } else { Err(crate::Error::cancelled("superseded by a newer command or a stop")) }
    }
}

/// One or more independent axes (joints, carriages, fingers) that move in
/// straight lines at constant speed towards targets.
#[derive(Clone, Debug)]
pub(crate) struct Axes {
    positions: Vec<f64>,
    /// `(target, speed)` per axis while moving; speeds are positive.
    goal: Option<Vec<(f64, f64)>>,
}

impl Axes {
    pub(crate) fn new(positions: Vec<f64>) -> Self {
        Self { positions, goal: None }
    }

    /// Current positions.
    pub(crate) fn positions(&self) -> &[f64] {
        &self.positions
    }

    /// Whether a move is under way.
    pub(crate) fn is_moving(&self) -> bool {
        self.goal.is_some()
    }

    /// Moves every axis towards its target at its own speed (units per
    /// second). Axes already there stay put whatever their speed; a
    /// non-positive speed for an axis that must move never arrives, so
    /// callers validate speeds first.
    pub(crate) fn go(&mut self, targets: &[f64], speeds: &[f64]) {
        let goal: Vec<(f64, f64)> =
            targets.iter().zip(speeds).map(|(t, s)| (*t, s.abs().max(f64::MIN_POSITIVE))).collect();
        self.goal = Some(goal);
        self.advance(0.0);
    }

    /// Moves every axis so that all arrive together after `secs` seconds.
    pub(crate) fn go_in(&mut self, targets: &[f64], secs: f64) {
        if secs.is_nan() || secs <= 0.0 {
            for (p, t) in self.positions.iter_mut().zip(targets) {
                *p = *t;
            }
            self.goal = None;
            return;
        }
        let speeds: Vec<f64> = targets.iter().zip(&self.positions).map(|(t, p)| (t - p).abs() / secs).collect();
        self.go(targets, &speeds);
    }

    /// Seconds a coordinated move to `targets` takes with per-axis speed
    /// limits `max_speeds`.
    pub(crate) fn coordinated_secs(&self, targets: &[f64], max_speeds: &[f64]) -> f64 {
        self.positions
            .iter()
            .zip(targets)
            .zip(max_speeds)
            .map(|((p, t), v)| (t - p).abs() / v.abs().max(f64::MIN_POSITIVE))
            .fold(0.0, f64::max)
    }
}

impl Plant for Axes {
    fn advance(&mut self, dt: f64) {
        let Some(goal) = &self.goal else { return };
        let mut arrived = true;
        for (p, (target, speed)) in self.positions.iter_mut().zip(goal) {
            let remaining = target - *p;
            if remaining.abs() / speed <= dt + SLACK_SECS {
                *p = *target;
            } else {
                *p += speed * dt * remaining.signum();
                arrived = false;
            }
        }
        if arrived {
            self.goal = None;
        }
    }

    fn time_to_goal(&self) -> Option<f64> {
        let goal = self.goal.as_ref()?;
        Some(self.positions.iter().zip(goal).map(|(p, (t, s))| (t - p).abs() / s).fold(0.0, f64::max))
    }

    fn halt(&mut self) {
        self.goal = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn axes_arrive_together_and_halt_on_drop() {
        let sim = Sim::new(Axes::new(vec![0.0, 0.0]));
        let start = Instant::now();
        sim.run(|a| a.go(&[10.0, -5.0], &[5.0, 5.0])).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        assert_eq!(sim.read(|a| a.positions().to_vec()), vec![10.0, -5.0]);

        let start = Instant::now();
        sim.run(|a| a.go_in(&[0.0, 0.0], 0.5)).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(500));

        let fut = sim.run(|a| a.go(&[100.0, 0.0], &[10.0, 1.0]));
        let timed_out = tokio::time::timeout(Duration::from_secs(1), fut).await;
        assert!(timed_out.is_err());
        assert!(!sim.read(Axes::is_moving), "dropping the wait halts");
        let p = sim.read(|a| a.positions()[0]);
        assert!((p - 10.0).abs() < 1e-6, "{p}");
    }

    #[test]
    fn deadline_saturates() {
        let now = Instant::now();
        assert_eq!(deadline(now, f64::INFINITY), now + FAR_FUTURE);
        assert_eq!(deadline(now, f64::NAN), now);
        assert_eq!(deadline(now, -1.0), now);
        assert_eq!(deadline(now, 1.5), now + Duration::from_millis(1500));
    }
}
