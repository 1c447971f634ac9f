//! The external clients of rows 3 and 10: the real Viam Python SDK
//! (interop/python/bench_sdk.py in the repository's venv) and Chromium
//! (interop/ts/bench/dc_open.mjs through playwright-core). Each is found or
//! explained away: a missing tool makes its rows `skipped: <reason>`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::Deserialize;

use super::procs::{existing, repo_root};

/// Runs a helper; returns the last line of its stdout that parses as `T`.
async fn run_json<T: for<'de> Deserialize<'de>>(
    program: &PathBuf,
    args: &[String],
    cwd: &PathBuf,
    limit: Duration,
) -> anyhow::Result<T> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("{} {} did not finish within {limit:?}", program.display(), args.join(" ")))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(v) = stdout.lines().rev().filter(|l| l.starts_with('{')).find_map(|l| serde_json::from_str(l).ok()) {
        return Ok(v);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
    Err(anyhow!(
        "{} {} printed no result ({}): {}",
        program.display(),
        args.join(" "),
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

/// What bench_sdk.py prints.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SdkTimes {
    pub connect_ms: Vec<f64>,
    pub runs: Vec<Vec<f64>>,
    #[serde(default)]
    pub failed_connects: usize,
    /// How long each failed connect took before it failed (ms).
    #[serde(default)]
    pub failed_ms: Vec<f64>,
}

/// The Viam Python SDK in the repository's venv.
pub(crate) struct Sdk {
    python: PathBuf,
    script: PathBuf,
    dir: PathBuf,
}

impl Sdk {
    /// The venv's python (`$TETHER_PYTHON` or `<repo>/.venv/bin/python`) and the helper.
    pub(crate) fn find() -> Result<Self, String> {
        let root = repo_root();
        let python =
            std::env::var("TETHER_PYTHON").map(PathBuf::from).unwrap_or_else(|_| root.join(".venv/bin/python"));
        let python =
            existing(python).ok_or("no Python venv with viam-sdk (.venv/bin/python; scripts/test-all.sh makes it)")?;
        let dir = root.join("interop/python");
        let script = existing(dir.join("bench_sdk.py")).ok_or("interop/python/bench_sdk.py not found")?;
        Ok(Self { python, script, dir })
    }

    /// Runs the helper against `address`.
    pub(crate) async fn run(&self, address: &str, webrtc: bool, args: &[(&str, usize)]) -> anyhow::Result<SdkTimes> {
        let mut argv = vec![self.script.display().to_string(), address.to_owned()];
        if webrtc {
            argv.push("--webrtc".into());
        }
        for (k, v) in args {
            argv.push(format!("--{k}"));
            argv.push(v.to_string());
        }
        run_json(&self.python, &argv, &self.dir, Duration::from_secs(300)).await
    }
}

/// One Chromium↔Chromium run of dc_open.mjs (ms since the first peer).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub(crate) struct BrowserRun {
    pub signaling: f64,
    pub ice: f64,
    pub dtls: f64,
    pub open: f64,
    pub first: f64,
}

#[derive(Deserialize)]
struct BrowserRuns {
    runs: Vec<BrowserRun>,
}

/// Chromium driven by playwright-core from node.
pub(crate) struct Browser {
    node: PathBuf,
    script: PathBuf,
    dir: PathBuf,
}

impl Browser {
    /// node on the PATH, interop/ts with playwright-core installed, and a Chromium.
    pub(crate) fn find() -> Result<Self, String> {
        let root = repo_root();
        let dir = root.join("interop/ts");
        let node = which("node").ok_or("no node on the PATH")?;
        if !dir.join("node_modules/playwright-core").is_dir() {
            return Err("interop/ts has no node_modules/playwright-core (npm ci there)".into());
        }
        let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
        existing(PathBuf::from(&chromium)).ok_or(format!("no Chromium at {chromium}"))?;
        let script = existing(dir.join("bench/dc_open.mjs")).ok_or("interop/ts/bench/dc_open.mjs not found")?;
        Ok(Self { node, script, dir })
    }

    /// `count` timed runs after `warmup`.
    pub(crate) async fn run(&self, count: usize, warmup: usize) -> anyhow::Result<Vec<BrowserRun>> {
        let argv = vec![self.script.display().to_string(), count.to_string(), warmup.to_string()];
        let runs: BrowserRuns = run_json(&self.node, &argv, &self.dir, Duration::from_secs(180)).await?;
        Ok(runs.runs)
    }
}

/// `program` on the PATH.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}
