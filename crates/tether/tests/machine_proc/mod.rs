//! A `tether machine` process for the process-level tests (limits.rs,
//! flood.rs): started with a config file, optionally under
//! `prlimit --nofile=N:N`, its address read from stdout, and its RSS and open
//! files read from /proc.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// A `tether machine` process, killed on drop.
pub(crate) struct Machine {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    _config: tempfile::NamedTempFile,
}

impl Machine {
    /// `tether machine --config CONFIG`, under `prlimit --nofile=N:N` if given.
    pub(crate) fn spawn(config: &str, nofile: Option<u64>) -> Self {
        Self::spawn_with_env(config, nofile, &[])
    }

    /// [`Self::spawn`] with extra environment variables.
    pub(crate) fn spawn_with_env(config: &str, nofile: Option<u64>, env: &[(&str, &str)]) -> Self {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, config.as_bytes()).expect("write config");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .args(["machine", "--listen", "127.0.0.1:0", "--config"])
            .arg(file.path())
            .env("TETHER_LOG", std::env::var("TETHER_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tether machine (is prlimit installed?)");
        let stdout = child.stdout.take().expect("machine stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60));
        let mut machine = Self { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), _config: file };
        match addr.ok().and_then(|a| a.parse().ok()) {
            Some(addr) => machine.addr = addr,
            None => panic!("tether machine did not report its address (exit: {:?})", machine.child.try_wait()),
        }
        machine
    }

    /// Resident set size in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        rss_kib_of(self.child.id())
    }

    /// Open file descriptors.
    pub(crate) fn open_files(&self) -> usize {
        open_files_of(self.child.id())
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` of /proc/PID/status).
pub(crate) fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("machine status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Threads of process `pid` (`Threads` of /proc/PID/status; 0 if unreadable).
pub(crate) fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Open file descriptors of process `pid`.
pub(crate) fn open_files_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test process itself holds well over 1,024 sockets.
pub(crate) fn raise_own_nofile(needed: u64) {
    let limits = tether_transport::limits::raise_nofile().expect("getrlimit");
    assert!(limits.soft >= needed, "this test needs {needed} open files; the hard limit is {}", limits.hard);
}
