//! Buttons (`rdk:component:button`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Extra, Result, Struct, num, to_struct};

/// A button driver.
#[async_trait::async_trait]
pub trait Button: Send + Sync + 'static {
    /// Pushes the button.
    async fn push(&self, extra: Extra) -> Result<()>;
    /// Model-specific commands.
    async fn do_command(&self, command: Struct) -> Result<Struct> {
        super::echo(command)
    }
    /// Free-form status.
    async fn status(&self) -> Result<Struct> {
        Ok(Struct::default())
    }
}

/// A simulated button that counts its pushes; the status shows the count.
#[derive(Clone, Debug, Default)]
pub struct FakeButton {
    pushes: Arc<AtomicU64>,
}

impl FakeButton {
    /// A fake button never pushed.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times it was pushed.
    pub fn pushes(&self) -> u64 {
        self.pushes.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl Button for FakeButton {
    async fn push(&self, _extra: Extra) -> Result<()> {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn status(&self) -> Result<Struct> {
        Ok(to_struct([("pushes", num(self.pushes() as f64))]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_pushes() {
        let b = FakeButton::new();
        for _ in 0..3 {
            b.push(None).await.unwrap();
        }
        assert_eq!(b.pushes(), 3);
        assert_eq!(b.status().await.unwrap().fields.get("pushes"), Some(&num(3.0)));
    }
}
