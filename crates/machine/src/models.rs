//! Model constructors: how a config entry (`api` + `model` + `attributes`)
//! becomes a component. The built-in fakes are registered by
//! [`Models::builtin`]; real drivers register their own constructors.

use std::collections::HashMap;
use std::sync::Arc;

use crate::components::{FakeMotor, attr_f64};
use crate::config::{Config, ConfigError};
use crate::resource::{Component, Resources};

/// Builds a component from its attributes; errors describe the attribute.
pub type Constructor = Arc<dyn Fn(&serde_json::Value) -> Result<Component, String> + Send + Sync>;

/// The model registry.
#[derive(Clone, Default)]
pub struct Models {
    map: HashMap<(String, String), Constructor>,
}

/// The name of the built-in fake model.
pub const FAKE: &str = "rdk:builtin:fake";

impl Models {
    /// No models at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in fake model of every component kind.
    pub fn builtin() -> Self {
        let mut m = Self::empty();
        m.register("motor", FAKE, |a| Ok(Component::Motor(Arc::new(FakeMotor::new(attr_f64(a, "max_rpm", 100.0)?)))));
        m
    }

    /// Registers (or replaces) a constructor for `subtype` (e.g. `motor`) and
    /// `model` (e.g. `acme:motors:stepper`).
    pub fn register<F>(&mut self, subtype: &str, model: &str, f: F)
    where
        F: Fn(&serde_json::Value) -> Result<Component, String> + Send + Sync + 'static,
    {
        self.map.insert((subtype.to_owned(), model.to_owned()), Arc::new(f));
    }

    /// Builds every component of `cfg`.
    pub fn build(&self, cfg: &Config) -> Result<Resources, ConfigError> {
        let mut resources = Resources::new();
        for (i, c) in cfg.components.iter().enumerate() {
            let subtype = c.subtype(i)?;
            let model = if c.model == "fake" { FAKE } else { c.model.as_str() };
            let ctor = self.map.get(&(subtype.clone(), model.to_owned())).ok_or_else(|| {
                ConfigError::new(
                    format!("components[{i}].model"),
                    format!("no model {:?} for rdk:component:{subtype}", c.model),
                )
            })?;
            let component =
                ctor(&c.attributes).map_err(|e| ConfigError::new(format!("components[{i}].attributes"), e))?;
            resources
                .insert(c.name.clone(), component)
                .map_err(|e| ConfigError::new(format!("components[{i}].name"), e))?;
        }
        Ok(resources)
    }
}
