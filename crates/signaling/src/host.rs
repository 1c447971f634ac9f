//! `rpc-host` metadata parsing and the host allow-list.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::RwLock;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Metadata key naming the target machine(s).
pub const RPC_HOST: &str = tether_wire::metadata::RPC_HOST;

/// Most `rpc-host` values accepted on `Answer` and `OptionalWebRTCConfig`.
pub const MAX_HOSTS: usize = 5;

/// Message of the error for a host outside the allow-list (clients match it).
pub const HOST_NOT_PRECONFIGURED: &str = "host not preconfigured";

/// All `rpc-host` values of a request, in order. Repeated entries and
/// comma-separated values are both accepted (a proxy may fold the former into
/// the latter); surrounding whitespace is trimmed. Empty values are kept (as
/// `""`) so that validation can reject them.
pub(crate) fn rpc_hosts(md: &MetadataMap) -> Result<Vec<String>, Status> {
    let mut out = Vec::new();
    for v in md.get_all(RPC_HOST) {
        let s = v.to_str().map_err(|_| Status::invalid_argument("expected rpc-host to be ASCII"))?;
        out.extend(s.split(',').map(|h| h.trim().to_string()));
    }
    Ok(out)
}

/// Exactly one non-empty `rpc-host` (Call, CallUpdate).
pub(crate) fn single_host(md: &MetadataMap) -> Result<String, Status> {
    let hosts = rpc_hosts(md)?;
    match hosts.as_slice() {
        [] => Err(Status::invalid_argument("expected rpc-host to be set in metadata")),
        [h] if h.is_empty() => Err(Status::invalid_argument("expected non-empty rpc-host")),
        [h] => Ok(h.clone()),
        _ => Err(Status::invalid_argument("expected 1 rpc-host")),
    }
}

/// One to [`MAX_HOSTS`] non-empty `rpc-host` values, duplicates removed
/// (Answer, OptionalWebRTCConfig).
pub(crate) fn multi_hosts(md: &MetadataMap) -> Result<Vec<String>, Status> {
    let hosts = rpc_hosts(md)?;
    if hosts.is_empty() {
        return Err(Status::invalid_argument("expected rpc-host to be set in metadata"));
    }
    if hosts.len() > MAX_HOSTS {
        return Err(Status::invalid_argument("too many rpc-host"));
    }
    if hosts.iter().any(String::is_empty) {
        return Err(Status::invalid_argument("expected non-empty rpc-host"));
    }
    let mut unique = Vec::with_capacity(hosts.len());
    for h in hosts {
        if !unique.contains(&h) {
            unique.push(h);
        }
    }
    Ok(unique)
}

/// A shared, runtime-updatable set of hosts a signaling server serves.
///
/// Clones share the same set, so a machine can hand one clone to its
/// embedded signaler and add its listening addresses after binding.
///
/// ```
/// use tether_signaling::HostAllowList;
///
/// let hosts = HostAllowList::new(["robot-main.abc.viam.cloud"]);
/// let shared = hosts.clone();
/// shared.insert("192.168.1.5:8080");
/// assert!(hosts.contains("192.168.1.5:8080"));
/// assert!(!hosts.contains("192.168.1.5")); // exact strings: the port matters
/// ```
#[derive(Clone, Debug, Default)]
pub struct HostAllowList(Arc<RwLock<HashSet<String>>>);

impl HostAllowList {
    /// A list holding `hosts`.
    pub fn new<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        HostAllowList(Arc::new(RwLock::new(hosts.into_iter().map(Into::into).collect())))
    }

    /// Adds a host; `true` if it was not present.
    pub fn insert(&self, host: impl Into<String>) -> bool {
        self.0.write().insert(host.into())
    }

    /// Adds several hosts.
    pub fn extend<I, S>(&self, hosts: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.0.write().extend(hosts.into_iter().map(Into::into));
    }

    /// Removes a host; `true` if it was present.
    pub fn remove(&self, host: &str) -> bool {
        self.0.write().remove(host)
    }

    /// Replaces the whole set.
    pub fn replace<I, S>(&self, hosts: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        *self.0.write() = hosts.into_iter().map(Into::into).collect();
    }

    /// Whether `host` is allowed (exact string match).
    pub fn contains(&self, host: &str) -> bool {
        self.0.read().contains(host)
    }

    /// The current hosts, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.0.read().iter().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn md(values: &[&str]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for v in values {
            m.append(RPC_HOST, MetadataValue::try_from(*v).unwrap());
        }
        m
    }

    #[test]
    fn single() {
        assert_eq!(single_host(&md(&["a"])).unwrap(), "a");
        assert_eq!(single_host(&md(&[])).unwrap_err().message(), "expected rpc-host to be set in metadata");
        assert_eq!(single_host(&md(&[""])).unwrap_err().message(), "expected non-empty rpc-host");
        assert_eq!(single_host(&md(&["a", "b"])).unwrap_err().message(), "expected 1 rpc-host");
        assert_eq!(single_host(&md(&["a, b"])).unwrap_err().message(), "expected 1 rpc-host");
        assert_eq!(single_host(&md(&["a"])).unwrap(), "a");
    }

    #[test]
    fn multi() {
        assert_eq!(multi_hosts(&md(&["a", "b"])).unwrap(), vec!["a", "b"]);
        assert_eq!(multi_hosts(&md(&["a, b,c", "d"])).unwrap(), vec!["a", "b", "c", "d"]);
        assert_eq!(multi_hosts(&md(&["a", "a"])).unwrap(), vec!["a"]);
        assert_eq!(multi_hosts(&md(&["1,2,3,4,5,6"])).unwrap_err().message(), "too many rpc-host");
        assert_eq!(multi_hosts(&md(&["a,"])).unwrap_err().message(), "expected non-empty rpc-host");
        assert_eq!(multi_hosts(&md(&[])).unwrap_err().message(), "expected rpc-host to be set in metadata");
    }
}
