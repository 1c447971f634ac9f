//! The machine's resources: named components behind their kind's trait.

use std::collections::BTreeMap;
use std::sync::Arc;

use tether_proto::viam::common::v1::ResourceName;
use tonic::Status;

use crate::components::{
    self, Arm, Base, Button, Camera, Extra, Gantry, Generic, Gripper, Motor, Sensor, Servo, Switch,
};

/// Generates [`Component`] and the typed lookups of [`Resources`] for every
/// component kind.
macro_rules! kinds {
    ($( $variant:ident => $accessor:ident : $trait_:ident, $subtype:literal, $service:literal; )*) => {
        /// One component, behind the trait of its kind.
        #[derive(Clone)]
        pub enum Component {
            $(
                #[doc = concat!("`rdk:component:", $subtype, "`")]
                $variant(Arc<dyn $trait_>),
            )*
        }

        impl Component {
            /// The API subtype, e.g. `motor`.
            pub fn subtype(&self) -> &'static str {
                match self { $( Component::$variant(_) => $subtype, )* }
            }

            /// The fully-qualified gRPC service of the kind.
            pub fn service(&self) -> &'static str {
                match self { $( Component::$variant(_) => $service, )* }
            }
        }

        /// Every component subtype with its gRPC service.
        pub const SUBTYPES: &[(&str, &str)] = &[ $( ($subtype, $service), )* ];

        impl Resources {
            $(
                #[doc = concat!("The ", $subtype, " called `name`, or NOT_FOUND.")]
                pub fn $accessor(&self, name: &str) -> Result<Arc<dyn $trait_>, Status> {
                    match self.by_name.get(name) {
                        Some(Component::$variant(c)) => Ok(c.clone()),
                        _ => Err(not_found($subtype, name)),
                    }
                }
            )*
        }
    };
}

kinds! {
    Arm => arm: Arm, "arm", "viam.component.arm.v1.ArmService";
    Base => base: Base, "base", "viam.component.base.v1.BaseService";
    Button => button: Button, "button", "viam.component.button.v1.ButtonService";
    Camera => camera: Camera, "camera", "viam.component.camera.v1.CameraService";
    Gantry => gantry: Gantry, "gantry", "viam.component.gantry.v1.GantryService";
    Generic => generic: Generic, "generic", "viam.component.generic.v1.GenericService";
    Gripper => gripper: Gripper, "gripper", "viam.component.gripper.v1.GripperService";
    Motor => motor: Motor, "motor", "viam.component.motor.v1.MotorService";
    Sensor => sensor: Sensor, "sensor", "viam.component.sensor.v1.SensorService";
    Servo => servo: Servo, "servo", "viam.component.servo.v1.ServoService";
    Switch => switch: Switch, "switch", "viam.component.switch.v1.SwitchService";
}

impl Component {
    /// Stops an actuator (a safety stop passes no extra parameters).
    /// `None` when the kind has nothing to stop (button, camera, generic,
    /// sensor, switch).
    pub async fn stop(&self, extra: Extra) -> Option<components::Result<()>> {
        match self {
            Component::Arm(c) => Some(c.stop(extra).await),
            Component::Base(c) => Some(c.stop(extra).await),
            Component::Gantry(c) => Some(c.stop(extra).await),
            Component::Gripper(c) => Some(c.stop(extra).await),
            Component::Motor(c) => Some(c.stop(extra).await),
            Component::Servo(c) => Some(c.stop(extra).await),
            Component::Button(_)
            | Component::Camera(_)
            | Component::Generic(_)
            | Component::Sensor(_)
            | Component::Switch(_) => None,
        }
    }

    /// Whether an actuator is moving; `None` for kinds that do not move.
    pub async fn is_moving(&self) -> Option<components::Result<bool>> {
        match self {
            Component::Arm(c) => Some(c.is_moving().await),
            Component::Base(c) => Some(c.is_moving().await),
            Component::Gantry(c) => Some(c.is_moving().await),
            Component::Gripper(c) => Some(c.is_moving().await),
            Component::Motor(c) => Some(c.is_moving().await),
            Component::Servo(c) => Some(c.is_moving().await),
            Component::Button(_)
            | Component::Camera(_)
            | Component::Generic(_)
            | Component::Sensor(_)
            | Component::Switch(_) => None,
        }
    }
}

fn not_found(subtype: &str, name: &str) -> Status {
    Status::not_found(format!("resource rdk:component:{subtype}/{name} not found"))
}

/// The named components of a machine.
#[derive(Clone, Default)]
pub struct Resources {
    by_name: BTreeMap<String, Component>,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.by_name.iter().map(|(k, v)| (k, v.subtype()))).finish()
    }
}

impl Resources {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a component; names are unique across kinds.
    pub fn insert(&mut self, name: impl Into<String>, component: Component) -> Result<(), String> {
        let name = name.into();
        if name.is_empty() {
            return Err("component name must not be empty".into());
        }
        if self.by_name.contains_key(&name) {
            return Err(format!("duplicate component name {name:?}"));
        }
        self.by_name.insert(name, component);
        Ok(())
    }

    /// True when a component has this name.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The component called `name`.
    pub fn get(&self, name: &str) -> Option<&Component> {
        self.by_name.get(name)
    }

    /// All components, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Component)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Resource names as the wire shows them.
    pub fn names(&self) -> Vec<ResourceName> {
        self.by_name
            .iter()
            .map(|(name, c)| ResourceName {
                namespace: "rdk".into(),
                r#type: "component".into(),
                subtype: c.subtype().into(),
                name: name.clone(),
            })
            .collect()
    }

    /// Number of components.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Stops the named resource if it is an actuator; logs failures.
    pub async fn stop(&self, name: &str) -> bool {
        let Some(c) = self.by_name.get(name) else {
            return false;
        };
        match c.stop(None).await {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                tracing::warn!(resource = name, "stop failed: {e}");
                false
            }
            None => false,
        }
    }
}
