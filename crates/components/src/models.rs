//! Model constructors: how a component's subtype, model and `attributes`
//! (one entry of a machine's config) become a component. The built-in fakes
//! are registered by [`Models::builtin`]; real drivers register their own
//! constructors.

use std::collections::HashMap;
use std::sync::Arc;

use crate::resource::Component;
use crate::{
    BaseProperties, FakeArm, FakeBase, FakeButton, FakeCamera, FakeGantry, FakeGeneric, FakeGripper, FakeMotor,
    FakeSensor, FakeServo, FakeSwitch, attr_f64, attr_f64_list, attr_positive, attr_strings, attr_u32,
};

/// Builds a component from its attributes; errors describe the attribute.
pub type Constructor = Arc<dyn Fn(&serde_json::Value) -> Result<Component, String> + Send + Sync>;

/// The model registry.
#[derive(Clone, Default)]
pub struct Models {
    map: HashMap<(String, String), Constructor>,
}

/// The name of the built-in fake model (`fake` for short).
pub const FAKE: &str = "rdk:builtin:fake";

/// Why [`Models::construct`] built no component.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConstructError {
    /// No constructor is registered for the subtype and model.
    #[error("no model {model:?} for rdk:component:{subtype}")]
    UnknownModel {
        /// The subtype asked for, e.g. `motor`.
        subtype: String,
        /// The model asked for, as given.
        model: String,
    },
    /// The constructor rejected the attributes; the message names the
    /// attribute.
    #[error("{0}")]
    Attributes(String),
}

impl Models {
    /// No models at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in fake model of every component kind.
    pub fn builtin() -> Self {
        let mut m = Self::empty();
        m.register("arm", FAKE, |a| {
            Ok(Component::Arm(Arc::new(FakeArm::new(attr_positive(a, "speed_degs_per_sec", 60.0)?))))
        });
        m.register("base", FAKE, |a| {
            let turning_radius_mm = attr_f64(a, "turning_radius_mm", 0.0)?;
            if turning_radius_mm < 0.0 {
                return Err(format!("attribute \"turning_radius_mm\" must not be negative, got {turning_radius_mm}"));
            }
            let properties = BaseProperties {
                width_meters: attr_positive(a, "width_mm", 600.0)? / 1000.0,
                turning_radius_meters: turning_radius_mm / 1000.0,
                wheel_circumference_meters: attr_positive(a, "wheel_circumference_mm", 300.0)? / 1000.0,
            };
            Ok(Component::Base(Arc::new(FakeBase::new(
                properties,
                attr_positive(a, "max_speed_mm_per_sec", 500.0)?,
                attr_positive(a, "max_angular_degs_per_sec", 90.0)?,
            ))))
        });
        m.register("button", FAKE, |_| Ok(Component::Button(Arc::new(FakeButton::new()))));
        m.register("camera", FAKE, |a| {
            let side = |key: &str, default: u32| -> Result<u32, String> {
                let v = attr_u32(a, key, default)?;
                if (1..=FakeCamera::MAX_SIDE).contains(&v) {
                    Ok(v)
                } else {
                    Err(format!("attribute {key:?} must be from 1 to {}, got {v}", FakeCamera::MAX_SIDE))
                }
            };
            let frame_rate = attr_positive(a, "frame_rate", 10.0)?;
            if frame_rate > 1000.0 {
                return Err(format!("attribute \"frame_rate\" must be at most 1000, got {frame_rate}"));
            }
            Ok(Component::Camera(Arc::new(FakeCamera::new(
                side("width_px", 320)?,
                side("height_px", 240)?,
                frame_rate,
            ))))
        });
        m.register("gantry", FAKE, |a| {
            let lengths = attr_f64_list(a, "lengths_mm", &[1000.0; 3])?;
            if lengths.is_empty() || lengths.len() > 32 {
                return Err(format!("attribute \"lengths_mm\" must list 1 to 32 axis lengths, got {}", lengths.len()));
            }
            if let Some((i, l)) = lengths.iter().enumerate().find(|(_, l)| **l <= 0.0) {
                return Err(format!("attribute \"lengths_mm\": element {i} must be greater than 0, got {l}"));
            }
            Ok(Component::Gantry(Arc::new(FakeGantry::new(lengths, attr_positive(a, "speed_mm_per_sec", 100.0)?))))
        });
        m.register("generic", FAKE, |_| Ok(Component::Generic(Arc::new(FakeGeneric::new()))));
        m.register("gripper", FAKE, |a| {
            let max_opening = attr_positive(a, "max_opening_mm", 100.0)?;
            let travel_ms = attr_positive(a, "travel_time_ms", 300.0)?;
            let object = attr_f64(a, "object_width_mm", 40.0_f64.min(max_opening))?;
            if !(0.0..=max_opening).contains(&object) {
                return Err(format!(
                    "attribute \"object_width_mm\" must be within [0, max_opening_mm = {max_opening}], got {object}"
                ));
            }
            Ok(Component::Gripper(Arc::new(FakeGripper::new(max_opening, travel_ms / 1000.0, object))))
        });
        m.register("motor", FAKE, |a| Ok(Component::Motor(Arc::new(FakeMotor::new(attr_f64(a, "max_rpm", 100.0)?)))));
        m.register("sensor", FAKE, |a| {
            Ok(Component::Sensor(Arc::new(FakeSensor::new(attr_positive(a, "period_secs", 60.0)?))))
        });
        m.register("servo", FAKE, |a| {
            let min = attr_u32(a, "min_angle_deg", 0)?;
            let max = attr_u32(a, "max_angle_deg", 180)?;
            if min > max {
                return Err(format!("attribute \"min_angle_deg\" ({min}) must not exceed \"max_angle_deg\" ({max})"));
            }
            let start = attr_u32(a, "starting_position_deg", min)?;
            if !(min..=max).contains(&start) {
                return Err(format!("attribute \"starting_position_deg\" must be within [{min}, {max}], got {start}"));
            }
            let speed = attr_positive(a, "speed_degs_per_sec", 300.0)?;
            Ok(Component::Servo(Arc::new(FakeServo::new(min, max, start, speed))))
        });
        m.register("switch", FAKE, |a| {
            let labels = attr_strings(a, "labels")?;
            let default_count = labels.as_ref().map_or(3, |l| u32::try_from(l.len()).unwrap_or(u32::MAX));
            let count = attr_u32(a, "position_count", default_count)?;
            let switch = match labels {
                None if count == 3 => FakeSwitch::default(),
                labels => FakeSwitch::new(count, labels)?,
            };
            Ok(Component::Switch(Arc::new(switch)))
        });
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

    /// The constructor registered for `subtype` and `model` (`fake` is
    /// short for [`FAKE`]).
    pub fn get(&self, subtype: &str, model: &str) -> Option<&Constructor> {
        let model = if model == "fake" { FAKE } else { model };
        self.map.get(&(subtype.to_owned(), model.to_owned()))
    }

    /// Builds one component of `subtype` and `model` from its `attributes`.
    pub fn construct(
        &self,
        subtype: &str,
        model: &str,
        attributes: &serde_json::Value,
    ) -> Result<Component, ConstructError> {
        let ctor = self
            .get(subtype, model)
            .ok_or_else(|| ConstructError::UnknownModel { subtype: subtype.to_owned(), model: model.to_owned() })?;
        ctor(attributes).map_err(ConstructError::Attributes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_a_fake_of_every_kind() {
        let models = Models::builtin();
        for (subtype, service) in crate::SUBTYPES {
            for model in [FAKE, "fake"] {
                let c = models.construct(subtype, model, &serde_json::Value::Null).unwrap();
                assert_eq!((c.subtype(), c.service()), (*subtype, *service));
            }
        }
    }

    #[test]
    fn construct_errors() {
        let models = Models::builtin();
        assert_eq!(
            models.construct("board", "fake", &serde_json::Value::Null).err(),
            Some(ConstructError::UnknownModel { subtype: "board".into(), model: "fake".into() })
        );
        let bad = serde_json::json!({"max_rpm": "fast"});
        assert_eq!(
            models.construct("motor", FAKE, &bad).err(),
            Some(ConstructError::Attributes("attribute \"max_rpm\" must be a number".into()))
        );
        assert!(Models::empty().get("motor", FAKE).is_none());
    }
}
