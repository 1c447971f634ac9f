//! Row 6: safety stop latency. A client *process* (`tether call ADDR motorN
//! set-power 0.5 --hold`: a session heartbeating at window/5 over direct
//! HTTP/2) is SIGKILLed; the time is measured from the SIGKILL to the
//! machine's safety-stop report for that session (the motor's Stop has
//! returned), on the machine's own clock in this process.
//!
//! The session's deadline is its last heartbeat + window, and the last
//! heartbeat came 0 to window/5 before the kill, so kill → stop lies in
//! [0.8 × window, window] plus the machine's reaction time; the goal is
//! p99 ≤ window + 2 ms. The machine also reports how long after the
//! deadline itself the stop completed.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::sync::broadcast;

use super::inproc::{self, InProcess};
use super::procs::{await_line, spawn_tether};
use super::stats::{ms, quantile, sorted};
use super::{Row, Scale};

/// The measurements of one window.
struct Stops {
    kill_to_stop: Vec<f64>,
    after_deadline: Vec<f64>,
    /// Sessions that lapsed while their client was still alive.
    spurious: usize,
}

/// A client process holding `motor` in a session.
struct Holder {
    child: tokio::process::Child,
    session: String,
}

async fn hold(addr: &str, motor: &str) -> anyhow::Result<Holder> {
    let mut child = spawn_tether(&["call", addr, motor, "set-power", "0.5", "--hold"], "error", Stdio::null())?;
    let session = await_line(&mut child, "holding session ", Duration::from_secs(20))
        .await
        .with_context(|| format!("the client process did not hold {motor}"))?;
    Ok(Holder { child, session })
}

/// `trials` kills, `parallel` client processes at a time (each on its own
/// motor). Each process is killed at a random phase of its heartbeat cycle:
/// after it held its session for at least two heartbeat periods, plus a
/// uniformly random part of a period.
async fn measure(window: Duration, trials: usize, parallel: usize) -> anyhow::Result<Stops> {
    let motors: Vec<String> = (0..parallel).map(|i| format!("motor{i}")).collect();
    let comps: Vec<(&str, &str)> = motors.iter().map(|m| (m.as_str(), "motor")).collect();
    let window_text = format!("{}ms", window.as_millis());
    let machine = InProcess::start(&inproc::config(&comps, &[], &window_text)).await?;
    let addr = machine.addr.to_string();
    let period = window / 5;
    // Every stop, stamped the moment it is reported.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let mut feed = machine.machine.safety_stops();
    let collector = tokio::spawn(async move {
        loop {
            match feed.recv().await {
                Ok(stop) => {
                    let at = Instant::now();
                    if let Some(id) = stop.session {
                        let _ = seen_tx.send((id.to_string(), at, stop.delay));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    let mut out = Stops { kill_to_stop: Vec::new(), after_deadline: Vec::new(), spurious: 0 };
    let mut attempts = 0;
    while out.kill_to_stop.len() < trials {
        attempts += 1;
        if attempts > trials * 3 {
            return Err(anyhow!("too many failed trials ({} spurious expiries)", out.spurious));
        }
        let n = parallel.min(trials - out.kill_to_stop.len());
        let holders = futures::future::try_join_all(motors[..n].iter().map(|m| hold(&addr, m))).await?;
        let mut killed: HashMap<String, Instant> = HashMap::new();
        let mut children = Vec::new();
        tokio::time::sleep(period * 2).await;
        for mut h in holders {
            tokio::time::sleep(period.mul_f64(rand::random::<f64>())).await;
            let t = Instant::now();
            h.child.start_kill().context("cannot kill a client process")?;
            killed.insert(h.session.clone(), t);
            children.push(h.child);
        }
        let limit = Instant::now() + window + Duration::from_secs(5);
        while !killed.is_empty() {
            let (session, at, delay) = match tokio::time::timeout_at(limit.into(), seen.recv()).await {
                Ok(Some(s)) => s,
                Ok(None) => return Err(anyhow!("the safety-stop feed closed")),
                Err(_) => return Err(anyhow!("no safety stop within the window + 5 s of a kill")),
            };
            let Some(k) = killed.remove(&session) else { continue };
            if at < k {
                // The session lapsed while its client was alive.
                out.spurious += 1;
            } else {
                out.kill_to_stop.push(ms(at - k));
                out.after_deadline.push(ms(delay));
            }
        }
        for mut c in children {
            let _ = c.wait().await;
        }
    }
    collector.abort();
    Ok(out)
}

/// Row 6.
pub(crate) async fn rows(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let cases = [
        ("2 s", Duration::from_secs(2), scale.pick(5, 50), scale.pick(5, 10)),
        ("30 ms", Duration::from_millis(30), scale.pick(10, 50), 1),
    ];
    for (label, window, trials, parallel) in cases {
        let s = measure(window, trials, parallel).await?;
        let k = sorted(s.kill_to_stop);
        let d = sorted(s.after_deadline);
        let bound = ms(window) + 2.0;
        let first = |v: &[f64]| v.first().copied().unwrap_or(f64::NAN);
        let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
        rows.push(
            Row::new(6, format!("safety stop, SIGKILL → motor stopped, {label} window: p99"), quantile(&k, 0.99), "ms")
                .baseline(format!("window + 2 ms: {bound:.0} ms"))
                .ratio(quantile(&k, 0.99) / bound)
                .goal(1.0)
                .note(format!(
                    "{} kills, {parallel} client process(es) at a time, each at a random phase of its heartbeat \
                     cycle; kill → stop p50 {:.2} ms, min {:.2}, max {:.2}; spurious expiries before a kill: {}",
                    k.len(),
                    quantile(&k, 0.5),
                    first(&k),
                    last(&k),
                    s.spurious
                )),
        );
        rows.push(
            Row::new(
                6,
                format!("safety stop, session deadline → motor stopped, {label} window: p99"),
                quantile(&d, 0.99),
                "ms",
            )
            .baseline("the deadline the machine computed (last heartbeat + window)")
            .note(format!(
                "measured by the machine; p50 {:.3} ms, max {:.3} ms",
                quantile(&d, 0.5),
                last(&d)
            )),
        );
    }
    Ok(rows)
}
