//! Gantries (`rdk:component:gantry`).

use std::sync::Arc;

use super::sim::{Axes, Sim};
use super::{
    Extra, Geometry, Kinematics, KinematicsFileFormat, Result, Struct, boolean, finite, in_range, list, num, to_struct,
};

/// A gantry driver: one or more linear axes, positions in mm from each
/// axis's home.
#[async_trait::async_trait]
pub trait Gantry: Send + Sync + 'static {
    /// Current position of every axis, mm.
    async fn position(&self, extra: Extra) -> Result<Vec<f64>>;
    /// Moves every axis to `positions_mm` at `speeds_mm_per_sec` (one per
    /// axis) and returns when all are there.
    async fn move_to_position(&self, positions_mm: Vec<f64>, speeds_mm_per_sec: Vec<f64>, extra: Extra) -> Result<()>;
    /// Homes every axis; returns whether homing succeeded.
    async fn home(&self, extra: Extra) -> Result<bool>;
    /// Length of every axis, mm.
    async fn lengths(&self, extra: Extra) -> Result<Vec<f64>>;
    /// Stops all axes (safety stops call this with `None`).
    async fn stop(&self, extra: Extra) -> Result<()>;
    /// Whether any axis is moving.
    async fn is_moving(&self) -> Result<bool>;
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
            ("positions_mm", list(self.position(None).await?.into_iter().map(num))),
            ("lengths_mm", list(self.lengths(None).await?.into_iter().map(num))),
            ("is_moving", boolean(self.is_moving().await?)),
        ]))
    }
}

/// A simulated gantry of independent linear axes (by default three axes of
/// 1000 mm along X, Y and Z). MoveToPosition moves each axis at its own
/// requested speed (an empty speed list means the default speed) and blocks
/// until all arrive; positions must lie within `[0, length]`. Home drives
/// every axis to 0 at the default speed. A newer command supersedes a
/// running move (it fails with CANCELLED), Stop halts all axes, and dropping
/// a move's future halts them too.
#[derive(Clone, Debug)]
pub struct FakeGantry {
    sim: Arc<Sim<Axes>>,
    lengths: Vec<f64>,
    speed: f64,
}

impl Default for FakeGantry {
    fn default() -> Self {
        Self::new(vec![1000.0; 3], 100.0)
    }
}

impl FakeGantry {
    /// A fake gantry at home (all axes at 0) with the given axis lengths and
    /// default speed.
    pub fn new(lengths_mm: Vec<f64>, speed_mm_per_sec: f64) -> Self {
        Self {
            sim: Arc::new(Sim::new(Axes::new(vec![0.0; lengths_mm.len()]))),
            lengths: lengths_mm,
            speed: speed_mm_per_sec.abs().max(f64::MIN_POSITIVE),
        }
    }
}

fn count_error(what: &str, want: usize, got: usize) -> crate::Error {
    crate::Error::invalid_argument(format!("expected {want} {what} (one per axis), got {got}"))
}

#[async_trait::async_trait]
impl Gantry for FakeGantry {
    async fn position(&self, _extra: Extra) -> Result<Vec<f64>> {
        Ok(self.sim.read(|a| a.positions().to_vec()))
    }

    async fn move_to_position(&self, positions_mm: Vec<f64>, speeds_mm_per_sec: Vec<f64>, _extra: Extra) -> Result<()> {
        let n = self.lengths.len();
        if positions_mm.len() != n {
            return Err(count_error("positions", n, positions_mm.len()));
        }
        let speeds = if speeds_mm_per_sec.is_empty() { vec![self.speed; n] } else { speeds_mm_per_sec };
        if speeds.len() != n {
            return Err(count_error("speeds", n, speeds.len()));
        }
        let current = self.sim.read(|a| a.positions().to_vec());
        for (i, ((p, len), (s, c))) in
            positions_mm.iter().zip(&self.lengths).zip(speeds.iter().zip(&current)).enumerate()
        {
            in_range(&format!("positions_mm[{i}]"), *p, 0.0..=*len)?;
            let s = finite(&format!("speeds_mm_per_sec[{i}]"), *s)?;
            if s < 0.0 || (s == 0.0 && p != c) {
                return Err(crate::Error::invalid_argument(format!(
                    "speeds_mm_per_sec[{i}] must be greater than 0, got {s}"
                )));
            }
        }
        self.sim.run(|a| a.go(&positions_mm, &speeds)).await
    }

    async fn home(&self, _extra: Extra) -> Result<bool> {
        let n = self.lengths.len();
        self.sim.run(|a| a.go(&vec![0.0; n], &vec![self.speed; n])).await?;
        Ok(true)
    }

    async fn lengths(&self, _extra: Extra) -> Result<Vec<f64>> {
        Ok(self.lengths.clone())
    }

    async fn stop(&self, _extra: Extra) -> Result<()> {
        self.sim.halt();
        Ok(())
    }

    async fn is_moving(&self) -> Result<bool> {
        Ok(self.sim.read(Axes::is_moving))
    }

    /// A chain of prismatic joints along X, Y, Z in Viam's SVA JSON (up to
    /// three axes).
    async fn kinematics(&self, _extra: Extra) -> Result<Kinematics> {
        const AXES: [(&str, [f64; 3]); 3] = [("x", [1.0, 0.0, 0.0]), ("y", [0.0, 1.0, 0.0]), ("z", [0.0, 0.0, 1.0])];
        if self.lengths.len() > AXES.len() {
            return Err(super::unimplemented("GetKinematics of a gantry with more than three axes"));
        }
        let vec3 = |v: [f64; 3]| serde_json::json!({"x": v[0], "y": v[1], "z": v[2]});
        let mut links = vec![serde_json::json!({"id": "base", "parent": "world", "translation": vec3([0.0; 3])})];
        let mut joints = Vec::new();
        let mut parent = "base".to_owned();
        for ((axis, dir), len) in AXES.iter().zip(&self.lengths) {
            let joint = format!("{axis}_axis");
            joints.push(serde_json::json!({
                "id": joint, "type": "prismatic", "parent": parent, "axis": vec3(*dir), "min": 0.0, "max": len,
            }));
            let link = format!("{axis}_carriage");
            links.push(serde_json::json!({"id": link, "parent": joint, "translation": vec3([0.0; 3])}));
            parent = link;
        }
        let model = serde_json::json!({
            "name": "fake_gantry",
            "kinematic_param_type": "SVA",
            "links": links,
            "joints": joints,
        });
        Ok(Kinematics {
            format: KinematicsFileFormat::Sva,
            data: serde_json::to_vec(&model).map_err(|e| crate::Error::internal(e.to_string()))?,
            meshes_by_urdf_filepath: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn axes_move_at_their_speeds_and_home() {
        let g = FakeGantry::new(vec![500.0, 300.0], 50.0);
        let g2 = g.clone();
        let start = Instant::now();
        let mv = tokio::spawn(async move { g2.move_to_position(vec![200.0, 100.0], vec![100.0, 25.0], None).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(g.position(None).await.unwrap(), vec![100.0, 25.0]);
        assert!(g.is_moving().await.unwrap());
        mv.await.unwrap().unwrap();
        // The slow axis sets the pace: 100 mm at 25 mm/s.
        assert_eq!(Instant::now() - start, Duration::from_secs(4));
        assert_eq!(g.position(None).await.unwrap(), vec![200.0, 100.0]);

        let start = Instant::now();
        assert!(g.home(None).await.unwrap());
        assert_eq!(Instant::now() - start, Duration::from_secs(4));
        assert_eq!(g.position(None).await.unwrap(), vec![0.0, 0.0]);
        assert_eq!(g.lengths(None).await.unwrap(), vec![500.0, 300.0]);
        assert!(!g.kinematics(None).await.unwrap().data.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn validates_positions_and_speeds() {
        let g = FakeGantry::default();
        for (p, s) in [
            (vec![1.0, 2.0], vec![]),
            (vec![1.0, 2.0, 3.0, 4.0], vec![]),
            (vec![-1.0, 0.0, 0.0], vec![]),
            (vec![0.0, 1000.5, 0.0], vec![]),
            (vec![0.0, f64::NAN, 0.0], vec![]),
            (vec![1.0, 1.0, 1.0], vec![10.0, 10.0]),
            (vec![1.0, 1.0, 1.0], vec![10.0, 0.0, 10.0]),
            (vec![1.0, 1.0, 1.0], vec![10.0, -5.0, 10.0]),
            (vec![1.0, 1.0, 1.0], vec![10.0, f64::INFINITY, 10.0]),
        ] {
            let e = g.move_to_position(p.clone(), s.clone(), None).await.unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{p:?} {s:?}");
        }
        // A zero speed is fine for an axis that stays put.
        g.move_to_position(vec![1000.0, 0.0, 0.0], vec![1000.0, 0.0, 0.0], None).await.unwrap();
        assert_eq!(g.position(None).await.unwrap(), vec![1000.0, 0.0, 0.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_halts() {
        let g = FakeGantry::default();
        let g2 = g.clone();
        let mv = tokio::spawn(async move { g2.move_to_position(vec![1000.0, 1000.0, 1000.0], vec![], None).await });
        tokio::time::sleep(Duration::from_secs(2)).await;
        g.stop(None).await.unwrap();
        assert_eq!(mv.await.unwrap().unwrap_err().kind(), crate::ErrorKind::Cancelled);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(g.position(None).await.unwrap(), vec![200.0; 3]);
        assert!(!g.is_moving().await.unwrap());
    }
}
