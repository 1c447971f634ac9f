//! Processes the rows measure from outside: `tether machine` and `tether
//! signaling` started from the tether binary ([`tether_bin`]), their CPU time
//! and resident memory read from /proc, and scratch files.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

/// `USER_HZ`: the unit of utime/stime in /proc/<pid>/stat (100 on every
/// Linux architecture this runs on).
const CLOCK_TICKS: f64 = 100.0;

/// CPU time (user + system) a process has used so far.
pub(crate) fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // pid (comm) state ppid …: comm may hold spaces, so split after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the comm.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields.get(i).ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?.parse::<u64>().context("utime/stime")
    };
    Ok(Duration::from_secs_f64((ticks(11)? + ticks(12)?) as f64 / CLOCK_TICKS))
}

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`, …) in bytes.
pub(crate) fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().context("status field")?;
            return Ok(kb * 1024);
        }
    }
    bail!("no {field} in /proc/{pid}/status")
}

/// Resident memory of a process, in bytes.
pub(crate) fn rss(pid: u32) -> anyhow::Result<u64> {
    status_kb(pid, "VmRSS")
}

/// Time the threads of a process spent runnable but waiting for a CPU
/// (the second field of /proc/<pid>/task/*/schedstat), summed.
pub(crate) fn run_delay(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_nanos(ns)
}

/// CPU use of a process over an interval, in cores (1.0 = one core busy).
pub(crate) struct CpuMeter {
    pid: u32,
    cpu: Duration,
    waited: Duration,
    wall: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid`.
    pub(crate) fn start(pid: u32) -> anyhow::Result<Self> {
        Ok(Self { pid, cpu: cpu_time(pid)?, waited: run_delay(pid), wall: Instant::now() })
    }

    /// Cores used since `start`.
    pub(crate) fn cores(&self) -> anyhow::Result<f64> {
        let used = cpu_time(self.pid)?.saturating_sub(self.cpu);
        Ok(used.as_secs_f64() / self.wall.elapsed().as_secs_f64())
    }

    /// Milliseconds per second its threads waited for a CPU since `start`
    /// (contention: other processes on the box, or its own threads).
    pub(crate) fn starved(&self) -> f64 {
        run_delay(self.pid).saturating_sub(self.waited).as_secs_f64() * 1e3 / self.wall.elapsed().as_secs_f64()
    }
}

/// The 1-minute load average.
pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A scratch directory, removed when dropped.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory under the system temp dir.
    pub(crate) fn new(what: &str) -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tether-bench-{}-{n}-{what}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// A path inside.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name` inside; returns its path.
    pub(crate) fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let p = self.path(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The variable that names the tether binary.
pub(crate) const TETHER_BIN: &str = "TETHER_BIN";

/// The `tether` binary the rows start: `$TETHER_BIN`, else `tether` next to
/// this executable (cargo builds both into target/<profile>/). Looked up
/// once.
pub(crate) fn tether_bin() -> anyhow::Result<&'static Path> {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = FOUND.get() {
        return Ok(p);
    }
    let path = if let Some(p) = std::env::var_os(TETHER_BIN) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{TETHER_BIN}={} is not a file (it names the tether binary the bench starts)", p.display());
        }
        p
    } else {
        let exe = std::env::current_exe().context("cannot find the tether-bench executable")?;
        let p = exe.with_file_name("tether");
        if !p.is_file() {
            bail!(
                "no tether binary at {} (the bench starts `tether machine`, `tether signaling` and `tether call` \
                 processes): build it with `cargo build --release -p tether`, or set {TETHER_BIN}",
                p.display()
            );
        }
        p
    };
    Ok(FOUND.get_or_init(|| path))
}

/// A `tether` child process serving on an address; killed when dropped.
pub(crate) struct Server {
    child: tokio::process::Child,
    /// What it printed after `listening on`.
    pub addr: String,
    /// Its pid.
    pub pid: u32,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
}

impl Server {
    /// Runs `tether ARGS…` ([`tether_bin`]), its log (at `log_filter`) to
    /// `log`, and waits for its `listening on ADDR` line.
    pub(crate) async fn start(args: &[&str], log_filter: &str, log: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = spawn_tether(args, log_filter, file.into())?;
        let pid = child.id().unwrap_or_default();
        let addr = await_line(&mut child, "listening on ", Duration::from_secs(30))
            .await
            .with_context(|| format!("`tether {}` did not start listening", args.join(" ")))?;
        Ok(Self { child, addr, pid, log: log.to_owned() })
    }

    /// `tether machine --listen LISTEN` with `config` written to a file in
    /// `scratch`, its log (at `log_filter`) to `machine.log` there.
    pub(crate) async fn machine(
        scratch: &Scratch,
        config: &str,
        listen: &str,
        log_filter: &str,
    ) -> anyhow::Result<Self> {
        let file = scratch.write("machine.json", config)?;
        let file = file.display().to_string();
        Self::start(&["machine", "--listen", listen, "--config", &file], log_filter, &scratch.path("machine.log")).await
    }

    /// Lines of its log containing `needle`.
    pub(crate) fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log).map(|t| t.lines().filter(|l| l.contains(needle)).count()).unwrap_or(0)
    }

    /// Stops it (SIGKILL) and reaps it.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Runs `tether ARGS…` ([`tether_bin`]) with `TETHER_LOG=log_filter`,
/// stdout piped (see [`await_line`]) and stderr to `stderr`; killed on drop.
pub(crate) fn spawn_tether(args: &[&str], log_filter: &str, stderr: Stdio) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(tether_bin()?)
        .args(args)
        .env("TETHER_LOG", log_filter)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start `tether {}`", args.join(" ")))
}

/// Waits up to `limit` for the child's stdout line that starts with
/// `prefix`; returns the rest of it (trimmed). The rest of stdout is drained
/// in the background so the child never blocks on a full pipe.
pub(crate) async fn await_line(
    child: &mut tokio::process::Child,
    prefix: &str,
    limit: Duration,
) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(limit, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
        Err(anyhow!("it exited"))
    })
    .await
    .map_err(|_| anyhow!("no `{}` line within {limit:?}", prefix.trim()))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(found)
}

/// A machine config (Viam JSON) with `components` (name, api, model) and a
/// heartbeat window; no STUN server (nothing to ask on loopback or in a
/// private namespace).
pub(crate) fn machine_config(components: &[(&str, &str)], window: &str, hosts: &[&str]) -> String {
    machine_config_json(components, window, hosts).to_string()
}

/// [`machine_config`] as a JSON value, for callers that add to it.
pub(crate) fn machine_config_json(components: &[(&str, &str)], window: &str, hosts: &[&str]) -> serde_json::Value {
    let comps: Vec<serde_json::Value> = components
        .iter()
        .map(|(name, kind)| serde_json::json!({"name": name, "api": format!("rdk:component:{kind}"), "model": "fake"}))
        .collect();
    serde_json::json!({
        "components": comps,
        "network": {"sessions": {"heartbeat_window": window}, "ice_servers": [], "hosts": hosts},
    })
}

/// The repository root (for the interop helper scripts): `$TETHER_REPO`, else
/// the source tree this binary was built from.
pub(crate) fn repo_root() -> PathBuf {
    if let Ok(p) = std::env::var("TETHER_REPO") {
        return PathBuf::from(p);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    built.canonicalize().unwrap_or(built)
}

/// `path` if it is an existing file, else `None`.
pub(crate) fn existing(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

/// A tonic channel to `addr` (`host:port`), connected eagerly: the bench's
/// load generators use tonic's own client, as a raw tonic user would.
pub(crate) async fn channel(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true);
    Ok(endpoint.connect().await?)
}
