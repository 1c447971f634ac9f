//! Generic components (`rdk:component:generic`): DoCommand only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Extra, Geometry, Result, Struct, num, to_struct};

/// A generic component: everything goes through [`Generic::do_command`].
#[async_trait::async_trait]
pub trait Generic: Send + Sync + 'static {
    /// Model-specific commands.
    async fn do_command(&self, command: Struct) -> Result<Struct> {
        super::echo(command)
    }
    /// Free-form status.
    async fn status(&self) -> Result<Struct> {
        Ok(Struct::default())
    }
    /// Physical geometry.
    async fn geometries(&self, _extra: Extra) -> Result<Vec<Geometry>> {
        Ok(Vec::new())
    }
}

/// A simulated generic component: DoCommand echoes the command, and the
/// status counts the commands received.
#[derive(Clone, Debug, Default)]
pub struct FakeGeneric {
    commands: Arc<AtomicU64>,
}

impl FakeGeneric {
    /// A new fake.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl Generic for FakeGeneric {
    async fn do_command(&self, command: Struct) -> Result<Struct> {
        self.commands.fetch_add(1, Ordering::Relaxed);
        super::echo(command)
    }

    async fn status(&self) -> Result<Struct> {
        Ok(to_struct([("commands", num(self.commands.load(Ordering::Relaxed) as f64))]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_and_counts() {
        let g = FakeGeneric::new();
        let cmd = to_struct([("hello", super::super::string("world"))]);
        assert_eq!(g.do_command(cmd.clone()).await.unwrap(), cmd);
        assert_eq!(g.status().await.unwrap().fields.get("commands"), Some(&num(1.0)));
        assert!(g.geometries(None).await.unwrap().is_empty());
    }
}
