//! Shared machinery of the network-namespace suites (nat.rs, faults.rs):
//! finding the tools, creating and removing namespaces, running commands and
//! background processes inside them, and reading their logs.
//!
//! A [`Lab`] owns a set of namespaces named `<prefix><pid>-<n>-<role>` and
//! the processes started in them. Dropping it (pass or fail) kills the
//! processes and deletes the namespaces; if the test panicked, the tail of
//! every process's output is printed first. Namespaces left behind by a run
//! that was killed are removed by the next run of the same suite.
//!
//! Each test binary includes this module (`mod netns;`) and uses only part of
//! it.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The `tether` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// Longest any one `tether call` may take.
pub(crate) const CALL_LIMIT: Duration = Duration::from_secs(30);

/// One test at a time: the measured delays stay meaningful on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());
static NEXT_NET: AtomicU32 = AtomicU32::new(0);
static NEXT_FILE: AtomicU32 = AtomicU32::new(0);

/// Takes the suite-wide lock (poisoning from a failed test is ignored).
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The path of the tether example `name`, built first when `cargo test`
/// runs us (so it is never stale).
pub(crate) fn example(name: &str) -> PathBuf {
    let profile_dir = Path::new(BIN).parent().expect("tether binary has a directory");
    let path = profile_dir.join("examples").join(name);
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "tether", "--example", name]).current_dir(env!("CARGO_MANIFEST_DIR"));
        if let Some(target) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap_or_else(|e| panic!("run cargo build --example {name}: {e}"));
        assert!(status.success(), "cargo build -p tether --example {name} failed");
    }
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p tether --examples` (or run these tests with cargo)",
        path.display()
    );
    path
}

/// A fresh number for file names.
pub(crate) fn next_file() -> u32 {
    NEXT_FILE.fetch_add(1, Ordering::Relaxed)
}

/// What a suite needs and calls itself.
pub(crate) struct Suite {
    /// Prefix of every namespace name, e.g. `ttnat-`.
    pub prefix: &'static str,
    /// The suite's name in failure messages, e.g. `NAT`.
    pub name: &'static str,
    /// Tools beyond `ip` and `nft`: (program, Debian package).
    pub extra_tools: &'static [(&'static str, &'static str)],
    /// An environment variable whose value, if set, becomes every tether
    /// process's `TETHER_LOG` filter.
    pub log_var: &'static str,
}

/// A namespace's role; its name is `<lab prefix>-<role>`.
pub(crate) trait Role {
    fn role(&self) -> &str;
}

impl Role for str {
    fn role(&self) -> &str {
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// Absolute paths of the tools, checked once per test.
pub(crate) struct Tools {
    pub ip: PathBuf,
    pub nft: PathBuf,
    /// The suite's extra tools, by program name.
    pub extra: Vec<(&'static str, PathBuf)>,
}

impl Tools {
    /// An extra tool's path.
    #[track_caller]
    pub(crate) fn get(&self, name: &str) -> &Path {
        match self.extra.iter().find(|(n, _)| *n == name) {
            Some((_, p)) => p,
            None => panic!("`{name}` is not among the suite's tools"),
        }
    }
}

fn find_tool(suite: &Suite, name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    let mut packages: Vec<&str> = suite.extra_tools.iter().map(|(_, p)| *p).collect();
    packages.extend(["nftables", "iproute2"]);
    panic!(
        "the {} tests need `{name}` (Debian package {package}), which is not installed: \
         apt-get install {} (scripts/test-all.sh does this)",
        suite.name,
        packages.join(" ")
    );
}

/// Checks that we are root and finds the tools; panics saying what is missing.
pub(crate) fn tools(suite: &Suite) -> Tools {
    let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref().ok() != Some("0") {
        panic!("the {} tests must run as root: they create network namespaces, veths and nftables rules", suite.name);
    }
    Tools {
        ip: find_tool(suite, "ip", "iproute2"),
        nft: find_tool(suite, "nft", "nftables"),
        extra: suite.extra_tools.iter().map(|&(name, package)| (name, find_tool(suite, name, package))).collect(),
    }
}

/// Runs a command to completion; panics with its output if it fails.
#[track_caller]
pub(crate) fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    if !out.status.success() {
        panic!(
            "{} {} failed ({}): {}{}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether process `pid` runs (a zombie does not).
fn process_alive(pid: &str) -> bool {
    match std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")) {
        // `pid (comm) state …`; comm may contain anything, the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// SIGKILLs every process in namespace `ns` (all of them started by these tests).
fn kill_all_in(ip: &Path, ns: &str) {
    let Ok(out) = Command::new(ip).args(["netns", "pids", ns]).output() else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).stderr(Stdio::null()).status();
    }
}

/// Removes namespaces with `prefix` left behind by test runs that no longer exist.
fn sweep_stale(ip: &Path, prefix: &str) {
    let list = run(ip, &["netns", "list"]);
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = ns.strip_prefix(prefix) else { continue };
        let Some(pid) = rest.split('-').next() else { continue };
        if pid.chars().all(|c| c.is_ascii_digit()) && !process_alive(pid) {
            kill_all_in(ip, ns);
            let _ = Command::new(ip).args(["netns", "del", ns]).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A background process in a namespace, output in files, SIGKILLed on drop.
pub(crate) struct Proc {
    pub name: String,
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until stdout (or, with `in_stderr`, stderr) contains `text`.
    #[track_caller]
    pub(crate) fn wait_for(&mut self, text: &str, in_stderr: bool, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let seen = if in_stderr { self.stderr() } else { self.stdout() };
            if seen.contains(text) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before printing {text:?}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!("{} did not print {text:?} within {limit:?}\nstderr:\n{}", self.name, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it still runs.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a `tether call` ended.
#[derive(Debug)]
pub(crate) struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Out {
    #[track_caller]
    pub(crate) fn json(&self) -> serde_json::Value {
        assert!(self.ok, "tether call failed after {:?}: {}{}", self.took, self.stdout, self.stderr);
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}; stderr: {}", self.stdout, self.stderr))
    }
}

// ---------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------

/// A set of namespaces and the processes running in them.
pub(crate) struct Lab {
    pub tools: Tools,
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub procs: Vec<Proc>,
    log_var: &'static str,
    namespaces: Vec<String>,
}

impl Lab {
    /// Checks the tools, removes stale namespaces of the suite, and creates
    /// one namespace per role, each with its loopback up.
    pub(crate) fn new(suite: &Suite, roles: &[&str]) -> Self {
        let tools = tools(suite);
        sweep_stale(&tools.ip, suite.prefix);
        let prefix = format!("{}{}-{}", suite.prefix, std::process::id(), NEXT_NET.fetch_add(1, Ordering::Relaxed));
        let dir = tempfile::tempdir().expect("temp dir");
        let mut lab = Lab { tools, prefix, dir, procs: Vec::new(), log_var: suite.log_var, namespaces: Vec::new() };
        for role in roles {
            let name = lab.ns(*role);
            lab.namespaces.push(name.clone());
            lab.ip(&["netns", "add", &name]);
            lab.ip_in(*role, &["link", "set", "lo", "up"]);
        }
        lab
    }

    /// The namespace's full name.
    pub(crate) fn ns(&self, ns: impl Role) -> String {
        format!("{}-{}", self.prefix, ns.role())
    }

    #[track_caller]
    pub(crate) fn ip(&self, args: &[&str]) -> String {
        run(&self.tools.ip, args)
    }

    #[track_caller]
    pub(crate) fn ip_in(&self, ns: impl Role, args: &[&str]) -> String {
        let name = self.ns(ns);
        let mut full = vec!["-n", name.as_str()];
        full.extend_from_slice(args);
        run(&self.tools.ip, &full)
    }

    /// Runs `program args` inside `ns` to completion.
    #[track_caller]
    pub(crate) fn exec(&self, ns: impl Role, program: &Path, args: &[&str]) -> String {
        let name = self.ns(ns);
        let program = program.to_string_lossy();
        let mut full = vec!["netns", "exec", name.as_str(), program.as_ref()];
        full.extend_from_slice(args);
        run(&self.tools.ip, &full)
    }

    /// Loads an nftables ruleset in `ns`.
    #[track_caller]
    pub(crate) fn nft(&self, ns: impl Role, rules: &str) {
        let file = self.dir.path().join(format!("rules-{}.nft", next_file()));
        std::fs::write(&file, rules).expect("write nft rules");
        let nft = self.tools.nft.clone();
        self.exec(ns, &nft, &["-f", &file.to_string_lossy()]);
    }

    /// Connects namespaces `a` and `b` with a veth pair (`a_if` in `a`,
    /// `b_if` in `b`), addresses both ends (`x.y.z.w/len`) and brings them up.
    #[track_caller]
    pub(crate) fn veth(&self, a: impl Role, a_if: &str, a_addr: &str, b: impl Role, b_if: &str, b_addr: &str) {
        let b_name = self.ns(&b);
        self.ip_in(&a, &["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b_name]);
        self.ip_in(&a, &["addr", "add", a_addr, "dev", a_if]);
        self.ip_in(&b, &["addr", "add", b_addr, "dev", b_if]);
        self.ip_in(&a, &["link", "set", a_if, "up"]);
        self.ip_in(&b, &["link", "set", b_if, "up"]);
    }

    /// `program` inside `ns`, stdin closed.
    pub(crate) fn command(&self, ns: impl Role, program: &Path) -> Command {
        let mut cmd = Command::new(&self.tools.ip);
        cmd.args(["netns", "exec", &self.ns(ns)]).arg(program).stdin(Stdio::null());
        cmd
    }

    /// The `tether` binary inside `ns`, with the suite's log filter.
    pub(crate) fn tether(&self, ns: impl Role) -> Command {
        let mut cmd = self.command(ns, Path::new(BIN));
        self.log_filter(&mut cmd);
        cmd
    }

    /// Passes the suite's log filter (if set) as `TETHER_LOG`.
    pub(crate) fn log_filter(&self, cmd: &mut Command) {
        match std::env::var(self.log_var) {
            Ok(filter) => cmd.env("TETHER_LOG", filter),
            Err(_) => cmd.env_remove("TETHER_LOG"),
        };
    }

    /// Starts `cmd` in the background with its output in files named `name.*`.
    pub(crate) fn spawn(&self, name: &str, mut cmd: Command) -> Proc {
        let stdout = self.dir.path().join(format!("{name}.out"));
        let stderr = self.dir.path().join(format!("{name}.err"));
        let child = cmd
            .stdout(File::create(&stdout).expect("log file"))
            .stderr(File::create(&stderr).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_owned(), child, stdout, stderr }
    }

    /// The (latest) process called `name`.
    pub(crate) fn proc(&self, name: &str) -> Option<&Proc> {
        self.procs.iter().rev().find(|p| p.name == name)
    }

    /// The (latest) process called `name`.
    pub(crate) fn proc_mut(&mut self, name: &str) -> Option<&mut Proc> {
        self.procs.iter_mut().rev().find(|p| p.name == name)
    }

    /// Runs a `tether call` (or any command) to completion, output in files
    /// (a debug log may be large); panics after [`CALL_LIMIT`].
    pub(crate) fn finish(&self, cmd: Command, what: &[&str]) -> Out {
        let start = Instant::now();
        let mut proc = self.spawn(&format!("call-{}", next_file()), cmd);
        let status = loop {
            match proc.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > CALL_LIMIT => {
                    panic!("tether call {what:?} did not finish within {CALL_LIMIT:?}\nstderr:\n{}", proc.stderr());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for tether call: {e}"),
            }
        };
        Out { ok: status.success(), stdout: proc.stdout(), stderr: proc.stderr(), took: start.elapsed() }
    }
}

impl<R: Role + ?Sized> Role for &R {
    fn role(&self) -> &str {
        (**self).role()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!("----- {} stdout (tail) -----\n{}", p.name, tail(&p.stdout(), 40));
                eprintln!("----- {} stderr (tail) -----\n{}", p.name, tail(&p.stderr(), 40));
            }
        }
        for p in &mut self.procs {
            p.kill();
        }
        for name in &self.namespaces {
            kill_all_in(&self.tools.ip, name);
            let _ = Command::new(&self.tools.ip).args(["netns", "del", name]).stderr(Stdio::null()).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------------

pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` lines, without colours.
pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| strip_ansi(l)).collect::<Vec<_>>().join("\n")
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
