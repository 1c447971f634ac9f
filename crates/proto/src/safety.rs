//! Which gRPC methods are safety monitored, read from the compiled
//! descriptors (`MethodOptions` extension 84260), never from a hand-written
//! list.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, Value};

/// Full name of the `MethodOptions` extension that marks monitored methods.
pub const EXTENSION: &str = "viam.common.v1.safety_heartbeat_monitored";

/// What the descriptors say about one method, keyed by its gRPC path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodInfo {
    /// Option 84260 is set to true on the method.
    pub monitored: bool,
    /// The client sends a stream of messages.
    pub client_streaming: bool,
    /// The server answers with a stream of messages.
    pub server_streaming: bool,
}

/// The descriptor pool decoded from [`crate::FILE_DESCRIPTOR_SET`].
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET).expect("the descriptor set built by build.rs decodes")
    })
}

/// Builds the method table of an arbitrary pool (used for the compiled-in
/// one, and by tests on hand-made pools).
pub fn methods_of(pool: &DescriptorPool) -> HashMap<String, MethodInfo> {
    let ext = pool.get_extension_by_name(EXTENSION);
    let mut table = HashMap::new();
    for service in pool.services() {
        for method in service.methods() {
            let monitored = ext.as_ref().is_some_and(|ext| {
                let options = method.options();
                options.has_extension(ext) && matches!(options.get_extension(ext).as_ref(), Value::Bool(true))
            });
            table.insert(
                format!("/{}/{}", service.full_name(), method.name()),
                MethodInfo {
                    monitored,
                    client_streaming: method.is_client_streaming(),
                    server_streaming: method.is_server_streaming(),
                },
            );
        }
    }
    table
}

/// Every method of every compiled service, keyed by `/<package>.<Service>/<Method>`.
pub fn methods() -> &'static HashMap<String, MethodInfo> {
    static TABLE: OnceLock<HashMap<String, MethodInfo>> = OnceLock::new();
    TABLE.get_or_init(|| methods_of(pool()))
}

/// Looks a method up by its gRPC path.
pub fn method(path: &str) -> Option<MethodInfo> {
    methods().get(path).copied()
}

/// True when calls to `path` must carry the session id and make their
/// session the resource's last caller.
pub fn is_monitored(path: &str) -> bool {
    method(path).is_some_and(|m| m.monitored)
}

/// The monitored paths, sorted (for display and tests).
pub fn monitored_paths() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = methods().iter().filter(|(_, m)| m.monitored).map(|(p, _)| p.as_str()).collect();
    v.sort_unstable();
    v
}
