//! The allocator settings the `tether` process makes: glibc's mmap threshold
//! fixed at 4 MiB, and with it the trim threshold at 8 MiB.
//!
//! glibc's malloc serves a block above its mmap threshold with a mapping of
//! its own, unmapped when freed. The threshold starts at 128 KiB and is
//! dynamic: freeing such a mapping raises it to that block's size, up to
//! 32 MiB. After the first large request message is freed, the next ones
//! come from the heaps, where a freed block stays resident. A peer whose
//! half-sent 8 MiB messages the incomplete-message budget drops can so leave
//! the machine tens of MiB above what it holds: 10 connections of them
//! peaked at +95 to +146 MiB of RSS under CPU load with the dynamic
//! threshold, +75 to +81 MiB with it fixed (docs/SECURITY.md).
//!
//! Fixed at 4 MiB, every block of 4 MiB or more is a mapping of its own,
//! returned to the system when freed. Smaller blocks (most messages, camera
//! frames included) stay on the heaps as before. The price is a fresh mapping
//! per message of 4 MiB or more (measured in-process, both ends paying it:
//! 8 MiB messages over direct HTTP/2 at about 500 instead of 1,500 MB/s).
//! Fixing the mmap threshold also fixes the trim threshold; it is set to
//! 8 MiB, twice the mmap threshold as glibc's dynamic rule would, so that
//! the heap's top is not handed back and faulted in again for every message
//! (left at its 128 KiB default, 1 MiB messages over direct HTTP/2 fell from
//! about 1,400 to 400–530 MB/s).
//!
//! `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or a `glibc.malloc.`
//! threshold tunable in the environment wins: both are left alone then.

// The workspace forbids unsafe code; this crate denies it, and `mallopt`,
// a C function, is the one call allowed here.
#![allow(unsafe_code)]

/// Blocks of this size or more are mapped on their own and unmapped when
/// freed (an `int`, as `mallopt` takes it).
pub(crate) const MMAP_THRESHOLD: i32 = 4 << 20;

/// Free memory at the top of the main heap beyond this is handed back.
pub(crate) const TRIM_THRESHOLD: i32 = 2 * MMAP_THRESHOLD;

/// What [`fix_thresholds`] did.
#[derive(Debug)]
pub(crate) enum Thresholds {
    /// Fixed at [`MMAP_THRESHOLD`] and [`TRIM_THRESHOLD`].
    Fixed,
    /// The environment sets them; left alone.
    FromEnvironment,
    /// `mallopt` refused, or this is not glibc: the allocator's defaults.
    Default,
}

/// Fixes glibc's mmap and trim thresholds unless the environment sets one.
/// Call it before the runtime starts its threads.
pub(crate) fn fix_thresholds() -> Thresholds {
    let tunable = std::env::var("GLIBC_TUNABLES")
        .is_ok_and(|t| t.contains("glibc.malloc.mmap_threshold") || t.contains("glibc.malloc.trim_threshold"));
    let env = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"].iter().any(|v| std::env::var_os(v).is_some());
    if env || tunable {
        return Thresholds::FromEnvironment;
    }
    set(MMAP_THRESHOLD, TRIM_THRESHOLD)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(mmap: i32, trim: i32) -> Thresholds {
    // SAFETY: `mallopt` takes no pointers and only changes a parameter of the
    // allocator, under the allocator's own lock; any thread may call it.
    let ok =
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1 && libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1 };
    if ok { Thresholds::Fixed } else { Thresholds::Default }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_mmap: i32, _trim: i32) -> Thresholds {
    Thresholds::Default
}
