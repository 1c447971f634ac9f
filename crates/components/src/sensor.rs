//! Sensors (`rdk:component:sensor`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prost_types::Value;
use tokio::time::Instant;

use super::{Extra, Geometry, Result, Struct, num, string, to_struct};

/// Named readings, as `GetReadings` returns them.
pub type Readings = HashMap<String, Value>;

/// A sensor driver.
#[async_trait::async_trait]
pub trait Sensor: Send + Sync + 'static {
    /// Current readings by name.
    async fn readings(&self, extra: Extra) -> Result<Readings>;
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
        Ok(Struct::default())
    }
}

/// A simulated environment sensor whose readings change over time:
/// `temperature_c` follows a sine around 20 °C (±5 °C, one cycle per
/// `period_secs`), `humidity_pct` a cosine around 50 % (±10 %), `readings`
/// counts the calls (from 1), `uptime_s` is the time since creation and
/// `time` the wall-clock time (RFC 3339).
#[derive(Clone, Debug)]
pub struct FakeSensor {
    started: Instant,
    period_secs: f64,
    count: Arc<AtomicU64>,
}

impl Default for FakeSensor {
    fn default() -> Self {
        Self::new(60.0)
    }
}

impl FakeSensor {
    /// A fake sensor whose temperature cycles every `period_secs`.
    pub fn new(period_secs: f64) -> Self {
        Self { started: Instant::now(), period_secs: period_secs.abs().max(1e-3), count: Arc::new(AtomicU64::new(0)) }
    }

    fn uptime(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

#[async_trait::async_trait]
impl Sensor for FakeSensor {
    async fn readings(&self, _extra: Extra) -> Result<Readings> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let t = self.uptime();
        let phase = std::f64::consts::TAU * t / self.period_secs;
        Ok(Readings::from([
            ("temperature_c".to_owned(), num(20.0 + 5.0 * phase.sin())),
            ("humidity_pct".to_owned(), num(50.0 + 10.0 * phase.cos())),
            ("readings".to_owned(), num(n as f64)),
            ("uptime_s".to_owned(), num(t)),
            ("time".to_owned(), string(humantime::format_rfc3339_millis(SystemTime::now()).to_string())),
        ]))
    }

    async fn status(&self) -> Result<Struct> {
        Ok(to_struct([("readings", num(self.count.load(Ordering::Relaxed) as f64)), ("uptime_s", num(self.uptime()))]))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost_types::value::Kind;

    use super::*;

    fn number(r: &Readings, key: &str) -> f64 {
        match r.get(key).and_then(|v| v.kind.as_ref()) {
            Some(Kind::NumberValue(n)) => *n,
            other => panic!("{key}: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readings_vary_over_time() {
        let s = FakeSensor::new(60.0);
        let first = s.readings(None).await.unwrap();
        assert!((number(&first, "temperature_c") - 20.0).abs() < 1e-9);
        assert_eq!(number(&first, "readings"), 1.0);
        assert!(matches!(first.get("time").and_then(|v| v.kind.as_ref()), Some(Kind::StringValue(_))));
        tokio::time::sleep(Duration::from_secs(15)).await;
        let second = s.readings(None).await.unwrap();
        assert!((number(&second, "temperature_c") - 25.0).abs() < 1e-9);
        assert!((number(&second, "humidity_pct") - 50.0).abs() < 1e-9);
        assert_eq!(number(&second, "readings"), 2.0);
        assert_eq!(number(&second, "uptime_s"), 15.0);
    }
}
