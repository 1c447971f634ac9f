//! Servos (`rdk:component:servo`).

use std::sync::Arc;

use super::sim::{Axes, Sim};
use super::{Extra, Geometry, Result, Struct, boolean, num, to_struct};

/// A hobby-servo driver: an angle in whole degrees.
#[async_trait::async_trait]
pub trait Servo: Send + Sync + 'static {
    /// Moves to `angle_deg` and returns when there.
    async fn move_to(&self, angle_deg: u32, extra: Extra) -> Result<()>;
    /// Current angle, degrees.
    async fn position(&self, extra: Extra) -> Result<u32>;
    /// Stops moving (safety stops call this with `None`).
    async fn stop(&self, extra: Extra) -> Result<()>;
    /// Whether the servo is moving.
    async fn is_moving(&self) -> Result<bool>;
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
            ("position_deg", num(f64::from(self.position(None).await?))),
            ("is_moving", boolean(self.is_moving().await?)),
        ]))
    }
}

/// A simulated servo that turns at `speed_degs_per_sec` within
/// `min_deg..=max_deg` (0..=180 by default); other angles are
/// INVALID_ARGUMENT. The reported position is the current angle rounded to a
/// whole degree. Move blocks until the angle is reached; a newer command
/// supersedes it (it fails with CANCELLED), Stop holds the current angle,
/// and dropping a Move's future stops the servo.
#[derive(Clone, Debug)]
pub struct FakeServo {
    sim: Arc<Sim<Axes>>,
    min_deg: u32,
    max_deg: u32,
    speed: f64,
}

impl Default for FakeServo {
    fn default() -> Self {
        Self::new(0, 180, 0, 300.0)
    }
}

impl FakeServo {
    /// A fake servo at `start_deg` (clamped into the range).
    pub fn new(min_deg: u32, max_deg: u32, start_deg: u32, speed_degs_per_sec: f64) -> Self {
        let (min_deg, max_deg) = (min_deg.min(max_deg), max_deg.max(min_deg));
        Self {
            sim: Arc::new(Sim::new(Axes::new(vec![f64::from(start_deg.clamp(min_deg, max_deg))]))),
            min_deg,
            max_deg,
            speed: speed_degs_per_sec.abs().max(f64::MIN_POSITIVE),
        }
    }

    /// The current angle, unrounded.
    pub fn angle(&self) -> f64 {
        self.sim.read(|a| a.positions()[0])
    }
}

#[async_trait::async_trait]
impl Servo for FakeServo {
    async fn move_to(&self, angle_deg: u32, _extra: Extra) -> Result<()> {
        if !(self.min_deg..=self.max_deg).contains(&angle_deg) {
            return Err(crate::Error::invalid_argument(format!(
                "angle_deg must be within [{}, {}], got {angle_deg}",
                self.min_deg, self.max_deg
            )));
        }
        let target = f64::from(angle_deg);
        self.sim.run(|a| a.go(&[target], &[self.speed])).await
    }

    async fn position(&self, _extra: Extra) -> Result<u32> {
        // The angle stays within [min_deg, max_deg], so this is in range.
        Ok(self.angle().round().clamp(f64::from(self.min_deg), f64::from(self.max_deg)) as u32)
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
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn moves_at_finite_speed() {
        let s = FakeServo::new(0, 180, 0, 60.0);
        let s2 = s.clone();
        let start = Instant::now();
        let mv = tokio::spawn(async move { s2.move_to(90, None).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(s.position(None).await.unwrap(), 30);
        assert!(s.is_moving().await.unwrap());
        mv.await.unwrap().unwrap();
        assert_eq!(Instant::now() - start, Duration::from_millis(1500));
        assert_eq!(s.position(None).await.unwrap(), 90);
        assert!(!s.is_moving().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_out_of_range_and_stop_holds() {
        let s = FakeServo::default();
        let e = s.move_to(181, None).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(s.move_to(180, None).await.is_ok());

        let s2 = s.clone();
        let mv = tokio::spawn(async move { s2.move_to(0, None).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.stop(None).await.unwrap();
        assert_eq!(mv.await.unwrap().unwrap_err().kind(), crate::ErrorKind::Cancelled);
        assert_eq!(s.position(None).await.unwrap(), 150);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(s.position(None).await.unwrap(), 150);
        assert_eq!(s.status().await.unwrap().fields.len(), 2);
    }
}
