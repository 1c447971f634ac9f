//! Process limits a server needs before it accepts connections: the
//! open-files soft limit raised to the hard limit, and the connection cap
//! [`crate::server::serve`] derives from it.
//!
//! ```no_run
//! let nofile = tether_transport::limits::raise_nofile().expect("getrlimit");
//! println!("open files: soft {} (was {}), hard {}", nofile.soft, nofile.soft_before, nofile.hard);
//! let cap = tether_transport::limits::default_max_connections(nofile.soft);
//! assert!(cap < nofile.soft as usize);
//! ```

/// The open-files limits (`RLIMIT_NOFILE`) of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nofile {
    /// Soft limit before [`raise_nofile`] (equal to `soft` from [`nofile`]).
    pub soft_before: u64,
    /// Soft limit now: what `accept` and `socket` run into.
    pub soft: u64,
    /// Hard limit (the ceiling an unprivileged process can raise `soft` to).
    pub hard: u64,
}

/// The current open-files limits.
pub fn nofile() -> std::io::Result<Nofile> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    Ok(Nofile { soft_before: soft, soft, hard })
}

/// Raises the open-files soft limit to the hard limit (many systems start
/// processes with a soft limit of 1024 and a hard limit far above it) and
/// logs both at INFO. Failing to raise it is logged at WARN and the limits
/// in force are returned; only failing to read them is an error.
pub fn raise_nofile() -> std::io::Result<Nofile> {
    let before = nofile()?;
    let soft = if before.soft < before.hard {
        match rlimit::increase_nofile_limit(before.hard) {
            Ok(soft) => soft,
            Err(e) => {
                tracing::warn!(soft = before.soft, hard = before.hard, "cannot raise the open-files soft limit: {e}");
                before.soft
            }
        }
    } else {
        before.soft
    };
    let limits = Nofile { soft_before: before.soft, soft, hard: before.hard };
    tracing::info!(
        soft = limits.soft,
        hard = limits.hard,
        soft_before = limits.soft_before,
        default_max_connections = default_max_connections(limits.soft),
        "open-files limit"
    );
    Ok(limits)
}

/// File descriptors kept out of the connection cap at least: the listener,
/// stdio, the runtime's epoll and eventfds, config and TLS files, Redis, and
/// above all the WebRTC peers (each holds UDP sockets per local interface).
pub const MIN_FD_HEADROOM: u64 = 128;

/// The connection cap for a soft open-files limit of `soft`: three quarters
/// of it, and at least [`MIN_FD_HEADROOM`] descriptors below it (never less
/// than 16 connections). 1024 → 768; 65,536 → 49,152.
pub fn default_max_connections(soft: u64) -> usize {
    let headroom = (soft / 4).max(MIN_FD_HEADROOM);
    let cap = soft.saturating_sub(headroom).max(16);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

/// [`default_max_connections`] of the current soft limit (1024 when it
/// cannot be read).
pub fn current_max_connections() -> usize {
    default_max_connections(nofile().map(|n| n.soft).unwrap_or(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_leaves_headroom() {
        assert_eq!(default_max_connections(1024), 768);
        assert_eq!(default_max_connections(256), 128);
        assert_eq!(default_max_connections(100), 16);
        assert_eq!(default_max_connections(65_536), 49_152);
        assert_eq!(default_max_connections(u64::MAX), usize::try_from(u64::MAX - u64::MAX / 4).unwrap_or(usize::MAX));
    }

    #[test]
    fn raising_is_idempotent() {
        let first = raise_nofile().expect("limits readable");
        assert!(first.soft >= first.soft_before);
        assert!(first.soft <= first.hard);
        let second = raise_nofile().expect("limits readable");
        assert_eq!(second.soft, first.soft);
        assert_eq!(second.soft_before, second.soft);
    }
}
