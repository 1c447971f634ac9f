//! Switches (`rdk:component:switch`): discrete positions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Extra, Result, Struct, list, num, string, to_struct};

/// The positions a switch offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchPositions {
    /// How many positions (numbered from 0).
    pub count: u32,
    /// A label per position (may be empty).
    pub labels: Vec<String>,
}

/// A multi-position switch driver.
#[async_trait::async_trait]
pub trait Switch: Send + Sync + 'static {
    /// Sets the switch to `position` (0-based).
    async fn set_position(&self, position: u32, extra: Extra) -> Result<()>;
    /// The current position.
    async fn position(&self, extra: Extra) -> Result<u32>;
    /// The number of positions and their labels.
    async fn positions(&self, extra: Extra) -> Result<SwitchPositions>;
    /// Model-specific commands.
    async fn do_command(&self, command: Struct) -> Result<Struct> {
        super::echo(command)
    }
    /// Free-form status.
    async fn status(&self) -> Result<Struct> {
        Ok(to_struct([("position", num(f64::from(self.position(None).await?)))]))
    }
}

/// A simulated switch with a fixed set of positions (three by default,
/// labelled "off", "low" and "high"), starting at position 0. Positions
/// outside `0..count` are INVALID_ARGUMENT.
#[derive(Clone, Debug)]
pub struct FakeSwitch {
    positions: Arc<SwitchPositions>,
    current: Arc<AtomicU32>,
}

impl Default for FakeSwitch {
    fn default() -> Self {
        let labels = ["off", "low", "high"].map(String::from).to_vec();
        Self { positions: Arc::new(SwitchPositions { count: 3, labels }), current: Arc::new(AtomicU32::new(0)) }
    }
}

impl FakeSwitch {
    /// Most positions a fake switch may have (each has a label in memory).
    pub const MAX_POSITIONS: u32 = 1024;

    /// A fake switch with `count` positions (1 to [`Self::MAX_POSITIONS`]).
    /// Without labels the positions are labelled "position 0", "position 1",
    /// …; labels, when given, must be one per position.
    pub fn new(count: u32, labels: Option<Vec<String>>) -> std::result::Result<Self, String> {
        if count == 0 {
            return Err("a switch needs at least one position".into());
        }
        if count > Self::MAX_POSITIONS {
            return Err(format!("a switch has at most {} positions, got {count}", Self::MAX_POSITIONS));
        }
        let labels = match labels {
            Some(l) if l.len() != count as usize => {
                return Err(format!("{} labels given for {count} positions", l.len()));
            }
            Some(l) => l,
            None => (0..count).map(|i| format!("position {i}")).collect(),
        };
        Ok(Self { positions: Arc::new(SwitchPositions { count, labels }), current: Arc::new(AtomicU32::new(0)) })
    }
}

#[async_trait::async_trait]
impl Switch for FakeSwitch {
    async fn set_position(&self, position: u32, _extra: Extra) -> Result<()> {
        if position >= self.positions.count {
            return Err(crate::Error::invalid_argument(format!(
                "position must be within [0, {}], got {position}",
                self.positions.count - 1
            )));
        }
        self.current.store(position, Ordering::Relaxed);
        Ok(())
    }

    async fn position(&self, _extra: Extra) -> Result<u32> {
        Ok(self.current.load(Ordering::Relaxed))
    }

    async fn positions(&self, _extra: Extra) -> Result<SwitchPositions> {
        Ok((*self.positions).clone())
    }

    async fn status(&self) -> Result<Struct> {
        let p = self.current.load(Ordering::Relaxed);
        let label = self.positions.labels.get(p as usize).cloned().unwrap_or_default();
        Ok(to_struct([
            ("position", num(f64::from(p))),
            ("label", string(label)),
            ("number_of_positions", num(f64::from(self.positions.count))),
            ("labels", list(self.positions.labels.iter().cloned().map(string))),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn positions_are_validated() {
        let s = FakeSwitch::default();
        assert_eq!(s.positions(None).await.unwrap().count, 3);
        s.set_position(2, None).await.unwrap();
        assert_eq!(s.position(None).await.unwrap(), 2);
        let e = s.set_position(3, None).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert_eq!(s.position(None).await.unwrap(), 2);
        assert_eq!(s.status().await.unwrap().fields.get("label"), Some(&string("high")));

        assert!(FakeSwitch::new(0, None).is_err());
        assert!(FakeSwitch::new(2, Some(vec!["a".into()])).is_err());
        assert_eq!(FakeSwitch::new(2, None).unwrap().positions.labels, vec!["position 0", "position 1"]);
        // Found by fuzzing the config: `"position_count": 4294967295` made 4 billion labels.
        assert!(FakeSwitch::new(FakeSwitch::MAX_POSITIONS, None).is_ok());
        assert!(FakeSwitch::new(u32::MAX, None).is_err());
    }
}
