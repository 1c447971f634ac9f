//! Smoke test of `tether-bench`: the cheap rows at --quick counts, and the
//! shape of `--json`. Values are only checked to be measurements (positive,
//! finite); the timing goals live in the table, not here.
//!
//! Row 8 starts a `tether signaling` process: the bench finds the tether
//! binary next to its own (target/<profile>/tether), which cargo builds for
//! `cargo test --workspace` (the tether package's own tests need it) but not
//! for `cargo test -p tether-bench` alone.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tether-bench");

/// Fails unless the bench will find a tether binary (`$TETHER_BIN`, else
/// `tether` next to tether-bench).
fn require_tether() {
    if let Some(p) = std::env::var_os("TETHER_BIN") {
        assert!(Path::new(&p).is_file(), "TETHER_BIN={} is not a file", Path::new(&p).display());
        return;
    }
    let tether = Path::new(BIN).with_file_name("tether");
    assert!(
        tether.is_file(),
        "no tether binary at {}: the bench starts `tether signaling` for row 8. Build it first with \
         `cargo build -p tether` (with --release for a release test run), or run `cargo test --workspace`, \
         which builds it",
        tether.display()
    );
}

#[test]
fn quick_rows_write_json_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    require_tether();
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["--quick", "--only", "1,2,8", "--json"])
        .arg(&json)
        .env("NO_COLOR", "1")
        .output()
        .expect("run tether-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tether-bench failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(started.elapsed() < Duration::from_secs(240), "took {:?}", started.elapsed());
    assert!(stdout.contains("| # | measurement | value | baseline | ratio | goal |"), "no table:\n{stdout}");

    let text = std::fs::read_to_string(&json).expect("the --json file");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let rows = doc["rows"].as_array().expect("rows: an array");
    let groups: std::collections::BTreeSet<u64> = rows.iter().filter_map(|r| r["row"].as_u64()).collect();
    assert_eq!(groups.into_iter().collect::<Vec<_>>(), [1, 2, 8], "row groups in {text}");
    for row in rows {
        for key in ["name", "unit", "baseline"] {
            assert!(row[key].is_string(), "{key} is not a string in {row}");
        }
        assert!(row.get("skipped").is_none(), "a cheap row was skipped: {row}");
        let value = row["value"].as_f64().unwrap_or_else(|| panic!("value is not a number in {row}"));
        assert!(value.is_finite() && value >= 0.0, "value {value} in {row}");
        if row["name"].as_str().is_some_and(|n| n.contains("p50") || n.contains("p99") || n.contains("per second")) {
            assert!(value > 0.0, "a latency or rate of zero in {row}");
        }
        for key in ["ratio", "goal"] {
            let v = &row[key];
            assert!(v.is_null() || v.as_f64().is_some_and(f64::is_finite), "{key} = {v} in {row}");
        }
        if let Some(ratio) = row["ratio"].as_f64() {
            assert!(ratio > 0.0, "ratio {ratio} in {row}");
        }
    }
    // Rows with a goal name their baseline.
    assert!(rows.iter().filter(|r| !r["goal"].is_null()).all(|r| !r["baseline"].as_str().unwrap_or("").is_empty()));
}
