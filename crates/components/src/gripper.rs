//! Grippers (`rdk:component:gripper`).

use std::sync::Arc;

use super::sim::{Axes, Sim};
use super::{Extra, Geometry, Kinematics, Result, Struct, boolean, in_range, list, num, to_struct};

/// Whether a gripper holds something, with driver-specific details.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HoldingStatus {
    /// Something is between the fingers.
    pub is_holding_something: bool,
    /// Driver-specific details (e.g. grip force).
    pub meta: Option<Struct>,
}

/// A gripper driver.
#[async_trait::async_trait]
pub trait Gripper: Send + Sync + 'static {
    /// Opens fully and returns when open.
    async fn open(&self, extra: Extra) -> Result<()>;
    /// Closes until the fingers meet or grip something; returns whether it
    /// grabbed something.
    async fn grab(&self, extra: Extra) -> Result<bool>;
    /// Stops the fingers (safety stops call this with `None`).
    async fn stop(&self, extra: Extra) -> Result<()>;
    /// Whether the fingers are moving.
    async fn is_moving(&self) -> Result<bool>;
    /// Whether the gripper holds something.
    async fn is_holding_something(&self, extra: Extra) -> Result<HoldingStatus>;
    /// The gripper's inputs as the frame system sees them (e.g. the opening).
    async fn current_inputs(&self, extra: Extra) -> Result<Vec<f64>>;
    /// Moves to the given inputs and returns when there.
    async fn go_to_inputs(&self, inputs: Vec<f64>, extra: Extra) -> Result<()>;
    /// The kinematic model.
    async fn kinematics(&self, _extra: Extra) -> Result<Kinematics> {
        Err(super::unimplemented("GetKinematics"))
    }
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
        Ok(to_struct([
            ("is_moving", boolean(self.is_moving().await?)),
            ("is_holding_something", boolean(self.is_holding_something(None).await?.is_holding_something)),
        ]))
    }
}

/// A simulated two-finger gripper with one input: the opening between the
/// fingers in mm (0 = closed). The fingers move at `max_opening_mm /
/// travel_secs`, so a full open or close takes `travel_secs`. An object
/// `object_width_mm` wide sits between the fingers: closing stops when the
/// fingers touch it, and the gripper then holds it (set the width to 0 for
/// no object: Grab then closes fully and reports false). Moves block until
/// done; a newer command supersedes them (they fail with CANCELLED), Stop
/// halts the fingers, and dropping a move's future halts them too.
#[derive(Clone, Debug)]
pub struct FakeGripper {
    sim: Arc<Sim<Axes>>,
    max_opening_mm: f64,
    object_width_mm: f64,
    speed: f64,
}

impl Default for FakeGripper {
    fn default() -> Self {
        Self::new(100.0, 0.3, 40.0)
    }
}

impl FakeGripper {
    /// A fake gripper, fully open.
    pub fn new(max_opening_mm: f64, travel_secs: f64, object_width_mm: f64) -> Self {
        let max_opening_mm = max_opening_mm.abs().max(f64::MIN_POSITIVE);
        Self {
            sim: Arc::new(Sim::new(Axes::new(vec![max_opening_mm]))),
            max_opening_mm,
            object_width_mm: object_width_mm.clamp(0.0, max_opening_mm),
            speed: max_opening_mm / travel_secs.abs().max(1e-9),
        }
    }

    /// The current opening, mm.
    pub fn opening(&self) -> f64 {
        self.sim.read(|a| a.positions()[0])
    }

    /// Where the fingers stop when aiming for `target`: at the object if it
    /// is in the way.
    fn stop_point(&self, target: f64) -> f64 {
        target.max(self.object_width_mm)
    }

    async fn go(&self, target: f64) -> Result<()> {
        let target = self.stop_point(target);
        self.sim.run(|a| a.go(&[target], &[self.speed])).await
    }

    fn holding(&self) -> bool {
        self.object_width_mm > 0.0
            && self.sim.read(|a| !a.is_moving() && (a.positions()[0] - self.object_width_mm).abs() < 1e-9)
    }
}

#[async_trait::async_trait]
impl Gripper for FakeGripper {
    async fn open(&self, _extra: Extra) -> Result<()> {
        self.go(self.max_opening_mm).await
    }

    async fn grab(&self, _extra: Extra) -> Result<bool> {
        self.go(0.0).await?;
        Ok(self.holding())
    }

    async fn stop(&self, _extra: Extra) -> Result<()> {
        self.sim.halt();
        Ok(())
    }

    async fn is_moving(&self) -> Result<bool> {
        Ok(self.sim.read(Axes::is_moving))
    }

    async fn is_holding_something(&self, _extra: Extra) -> Result<HoldingStatus> {
        Ok(HoldingStatus {
            is_holding_something: self.holding(),
            meta: Some(to_struct([("opening_mm", num(self.opening()))])),
        })
    }

    async fn current_inputs(&self, _extra: Extra) -> Result<Vec<f64>> {
        Ok(vec![self.opening()])
    }

    async fn go_to_inputs(&self, inputs: Vec<f64>, _extra: Extra) -> Result<()> {
        let [opening] = inputs[..] else {
            return Err(crate::Error::invalid_argument(format!(
                "expected 1 input (the opening in mm), got {}",
                inputs.len()
            )));
        };
        let opening = in_range("opening (mm)", opening, 0.0..=self.max_opening_mm)?;
        self.go(opening).await
    }

    async fn status(&self) -> Result<Struct> {
        let (moving, opening) = self.sim.read(|a| (a.is_moving(), a.positions()[0]));
        Ok(to_struct([
            ("is_moving", boolean(moving)),
            ("is_holding_something", boolean(self.holding())),
            ("opening_mm", num(opening)),
            ("inputs", list([num(opening)])),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn grab_closes_on_the_object_and_open_releases() {
        let g = FakeGripper::new(100.0, 0.3, 40.0);
        let start = Instant::now();
        assert!(g.grab(None).await.unwrap());
        // 60 of 100 mm at full travel in 300 ms.
        assert_eq!(Instant::now() - start, Duration::from_millis(180));
        assert!(g.is_holding_something(None).await.unwrap().is_holding_something);
        assert_eq!(g.current_inputs(None).await.unwrap(), vec![40.0]);

        let start = Instant::now();
        g.open(None).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(180));
        assert!(!g.is_holding_something(None).await.unwrap().is_holding_something);
        assert_eq!(g.current_inputs(None).await.unwrap(), vec![100.0]);

        let empty = FakeGripper::new(100.0, 0.3, 0.0);
        let start = Instant::now();
        assert!(!empty.grab(None).await.unwrap());
        assert_eq!(Instant::now() - start, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_interrupts_and_inputs_are_validated() {
        let g = FakeGripper::default();
        let g2 = g.clone();
        let grab = tokio::spawn(async move { g2.grab(None).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(g.is_moving().await.unwrap());
        g.stop(None).await.unwrap();
        assert_eq!(grab.await.unwrap().unwrap_err().kind(), crate::ErrorKind::Cancelled);
        assert!(!g.is_moving().await.unwrap());
        assert!((g.opening() - 50.0).abs() < 1e-6);
        assert!(!g.is_holding_something(None).await.unwrap().is_holding_something);

        for bad in [vec![], vec![1.0, 2.0], vec![-1.0], vec![101.0], vec![f64::NAN]] {
            let e = g.go_to_inputs(bad, None).await.unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        }
        g.go_to_inputs(vec![70.0], None).await.unwrap();
        assert_eq!(g.current_inputs(None).await.unwrap(), vec![70.0]);
        assert!(g.status().await.unwrap().fields.contains_key("opening_mm"));
    }
}
