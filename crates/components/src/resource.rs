//! A machine's resources: named components behind their kind's trait.

use std::collections::BTreeMap;
use std::sync::Arc;

use tether_proto::viam::common::v1::ResourceName;

use crate::{Error, Extra, Result};

/// Generates [`Component`], [`SUBTYPES`] and the typed lookups of
/// [`Resources`] from [`crate::for_each_kind!`].
macro_rules! kinds {
    ($( $kind:ident => $module:ident, $subtype:literal, $service:literal, $stub:ident :: $server:ident; )*) => {
        /// One component, behind the trait of its kind.
        #[derive(Clone)]
        pub enum Component {
            $(
                #[doc = concat!("`rdk:component:", $subtype, "`")]
                $kind(Arc<dyn crate::$kind>),
            )*
        }

        impl Component {
            /// The API subtype, e.g. `motor`.
            pub fn subtype(&self) -> &'static str {
                match self { $( Component::$kind(_) => $subtype, )* }
            }

            /// The fully-qualified gRPC service of the kind.
            pub fn service(&self) -> &'static str {
                match self { $( Component::$kind(_) => $service, )* }
            }
        }

        impl std::fmt::Debug for Component {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self { $( Component::$kind(_) => f.write_str(concat!(stringify!($kind), "(..)")), )* }
            }
        }

        /// Every component subtype with its gRPC service.
        pub const SUBTYPES: &[(&str, &str)] = &[ $( ($subtype, $service), )* ];

        impl Resources {
            $(
                #[doc = concat!("The ", $subtype, " called `name`, or NOT_FOUND.")]
                pub fn $module(&self, name: &str) -> Result<Arc<dyn crate::$kind>> {
                    match self.by_name.get(name) {
                        Some(Component::$kind(c)) => Ok(c.clone()),
                        _ => Err(not_found($subtype, name)),
                    }
                }
            )*
        }
    };
}

crate::for_each_kind!(kinds);

impl Component {
    /// Stops an actuator (a safety stop passes no extra parameters).
    /// `None` when the kind has nothing to stop (button, camera, generic,
    /// sensor, switch).
    pub async fn stop(&self, extra: Extra) -> Option<Result<()>> {
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
    pub async fn is_moving(&self) -> Option<Result<bool>> {
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

/// Longest part of a requested name quoted in an error: the name comes from
/// the request, the message goes back in a response header.
const MAX_QUOTED_NAME: usize = 200;

/// A requested name as an error message may quote it: at most
/// [`MAX_QUOTED_NAME`] bytes (on a character boundary), then how many more.
pub fn quoted_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() <= MAX_QUOTED_NAME {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut end = MAX_QUOTED_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} more bytes)", &name[..end], name.len() - end))
}

fn not_found(subtype: &str, name: &str) -> Error {
    let shown = quoted_name(name);
    Error::not_found(format!("resource rdk:component:{subtype}/{shown} not found"))
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
    pub fn insert(&mut self, name: impl Into<String>, component: Component) -> std::result::Result<(), String> {
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
