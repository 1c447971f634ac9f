//! NAT traversal, for real: network namespaces, nftables masquerade and a
//! real coturn, with the built `tether` binary in every role.
//!
//! ```text
//!            public 203.0.113.0/24 (bridge; coturn and `tether signaling` on .1)
//!               |                                   |
//!     router A: wan .10, masquerade       router B: wan .20, masquerade
//!               |                                   |
//!     machine 10.1.0.2/24                 client 10.2.0.2/24
//! ```
//!
//! The routers behave like home routers: masquerade on the way out, and
//! nothing new comes in from the wan side (dropped in `input` and `forward`,
//! as in OpenWrt's wan zone). The public network has a default route to an
//! "upstream" that silently drops what it gets, as the internet does with
//! private addresses. (Without a route, coturn's relayed send to the
//! machine's private host candidate fails with ENETUNREACH, and coturn 4.6.1
//! then closes the whole allocation: relay-only calls fail.)
//!
//! These tests need root, `ip` (iproute2), `nft` (nftables) and `turnserver`
//! (coturn). They are `#[ignore]`d so that a plain `cargo test` works
//! anywhere; scripts/test-all.sh installs the tools and runs them with
//!
//! ```text
//! cargo test -p tether --test nat -- --ignored --nocapture --test-threads=1
//! ```
//!
//! A missing tool or a non-root run fails with a message saying what to
//! install; nothing is skipped. Set `TETHER_NAT_LOG` (e.g.
//! `debug,webrtc_ice=info`) to pass a log filter to every tether process;
//! the logs of a failed test are printed with the failure.
//!
//! Every namespace is named `ttnat-<pid>-<n>-<role>` and torn down when the
//! test ends, pass or fail; namespaces left by a run that was killed are
//! removed by the next run.

mod netns;

use std::ops::{Deref, DerefMut, RangeInclusive};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use netns::{CALL_LIMIT, Lab, Out, Proc, Role, Suite, secs, serial, strip_ansi, tail};

const SUITE: Suite =
    Suite { prefix: "ttnat-", name: "NAT", extra_tools: &[("turnserver", "coturn")], log_var: "TETHER_NAT_LOG" };

/// coturn and the signaling service.
const PUBLIC: &str = "203.0.113.1";
/// A second TURN server (see `turn_uri_selects_one_of_two_turn_servers`).
const PUBLIC_2: &str = "203.0.113.2";
const TURN_UDP_2: &str = "turn:203.0.113.2:3478?transport=udp";
const ROUTER_A_WAN: &str = "203.0.113.10";
const ROUTER_B_WAN: &str = "203.0.113.20";
/// A next hop on the public network that nobody answers for.
const UPSTREAM: &str = "203.0.113.254";
const MACHINE_IP: &str = "10.1.0.2";
const CLIENT_IP: &str = "10.2.0.2";
const STUN: &str = "stun:203.0.113.1:3478";
const TURN_UDP: &str = "turn:203.0.113.1:3478?transport=udp";
const TURN_SECRET: &str = "nat-test-shared-secret";
/// The machine's session heartbeat window in these tests.
const WINDOW: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// The topology
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Ns {
    Public,
    RouterA,
    RouterB,
    Machine,
    Client,
}

impl Role for Ns {
    fn role(&self) -> &str {
        Ns::role(*self)
    }
}

impl Ns {
    const ALL: [Ns; 5] = [Ns::Public, Ns::RouterA, Ns::RouterB, Ns::Machine, Ns::Client];

    fn role(self) -> &'static str {
        match self {
            Ns::Public => "pub",
            Ns::RouterA => "ra",
            Ns::RouterB => "rb",
            Ns::Machine => "m",
            Ns::Client => "c",
        }
    }
}

/// How coturn authenticates.
enum TurnAuth {
    /// `--use-auth-secret`: TURN REST credentials derived from [`TURN_SECRET`].
    SharedSecret,
    /// `--lt-cred-mech` with one static user.
    StaticUser { user: &'static str, password: &'static str },
}

/// A `tether signaling` on the public network.
struct Signaling {
    url: String,
}

/// The five namespaces (a [`Lab`]: processes killed and namespaces removed on drop).
struct Net {
    lab: Lab,
    /// A CA certificate file the machine and the client trust (as
    /// `SSL_CERT_FILE`), for coturn's test certificate.
    ca_file: Option<std::path::PathBuf>,
}

impl Deref for Net {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl DerefMut for Net {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

/// The home-router ruleset: masquerade out of `wan`, nothing new in from it.
///
/// The `ct state new drop` rules matter for hole punching. Without them, the
/// peer's first check reaching the router's wan address (before our own went
/// out) is accepted by `input` and leaves an unreplied conntrack entry for
/// that address pair; our outbound check then clashes with it, masquerade
/// picks another source port, and the NAT behaves as a symmetric one: srflx
/// pairs never work and only TURN would. A dropped packet never gets its
/// conntrack entry confirmed, so there is no clash.
const ROUTER_RULES: &str = r#"
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
table ip filter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new drop
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state new drop
    }
}
"#;

impl Net {
    /// Creates the five namespaces and wires them up.
    fn new() -> Self {
        Self::with_router_rules(ROUTER_RULES)
    }

    /// [`Self::new`] with another ruleset in both routers.
    fn with_router_rules(router_rules: &str) -> Self {
        let net = Net { lab: Lab::new(&SUITE, &Ns::ALL.map(Ns::role)), ca_file: None };
        let public = net.ns(Ns::Public);

        // The public network: a bridge with coturn's and signaling's address.
        net.ip_in(Ns::Public, &["link", "add", "br0", "type", "bridge"]);
        net.ip_in(Ns::Public, &["addr", "add", &format!("{PUBLIC}/24"), "dev", "br0"]);
        net.ip_in(Ns::Public, &["link", "set", "br0", "up"]);
        net.ip_in(
            Ns::Public,
            &["neigh", "add", UPSTREAM, "lladdr", "02:00:00:00:00:fe", "dev", "br0", "nud", "permanent"],
        );
        net.ip_in(Ns::Public, &["route", "add", "default", "via", UPSTREAM, "dev", "br0"]);

        // Routers: wan on the bridge, lan to their private host.
        for (router, port, wan, lan_net, host, host_ip) in [
            (Ns::RouterA, "pa", ROUTER_A_WAN, "10.1.0", Ns::Machine, MACHINE_IP),
            (Ns::RouterB, "pb", ROUTER_B_WAN, "10.2.0", Ns::Client, CLIENT_IP),
        ] {
            net.ip_in(router, &["link", "add", "wan", "type", "veth", "peer", "name", port, "netns", &public]);
            net.ip_in(Ns::Public, &["link", "set", port, "master", "br0"]);
            net.ip_in(Ns::Public, &["link", "set", port, "up"]);
            net.ip_in(router, &["addr", "add", &format!("{wan}/24"), "dev", "wan"]);
            net.ip_in(router, &["link", "set", "wan", "up"]);
            net.ip_in(host, &["link", "add", "eth0", "type", "veth", "peer", "name", "lan", "netns", &net.ns(router)]);
            net.ip_in(router, &["addr", "add", &format!("{lan_net}.1/24"), "dev", "lan"]);
            net.ip_in(router, &["link", "set", "lan", "up"]);
            net.ip_in(host, &["addr", "add", &format!("{host_ip}/24"), "dev", "eth0"]);
            net.ip_in(host, &["link", "set", "eth0", "up"]);
            net.ip_in(host, &["route", "add", "default", "via", &format!("{lan_net}.1")]);
            net.exec(router, Path::new("sh"), &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
            net.nft(router, router_rules);
        }
        net
    }

    /// Starts coturn on the public address (STUN and TURN over UDP/TCP, no TLS).
    fn coturn(&mut self, auth: TurnAuth) {
        self.coturn_with(auth, false);
    }

    /// Starts coturn; with `tls`, also TURN over TLS on port 5349 with a
    /// certificate for [`PUBLIC`] from a test CA that the machine and the
    /// client then trust ([`Net::ca_file`]).
    fn coturn_with(&mut self, auth: TurnAuth, tls: bool) {
        let mut cmd = self.command(Ns::Public, self.tools.get("turnserver"));
        let dir = self.dir.path().to_owned();
        cmd.args(["-n", "-v", "--simple-log", "--log-file=stdout", "--no-cli", "--no-dtls"]);
        if tls {
            let cert = rcgen::generate_simple_self_signed(vec![PUBLIC.to_owned()]).expect("test certificate");
            let (cert_file, key_file) = (dir.join("turn-cert.pem"), dir.join("turn-key.pem"));
            std::fs::write(&cert_file, cert.cert.pem()).expect("write certificate");
            std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write key");
            cmd.arg(format!("--cert={}", cert_file.display()))
                .arg(format!("--pkey={}", key_file.display()))
                .arg("--tls-listening-port=5349");
            self.ca_file = Some(cert_file);
        } else {
            cmd.arg("--no-tls");
        }
        cmd.arg(format!("--listening-ip={PUBLIC}"))
            .arg(format!("--relay-ip={PUBLIC}"))
            .args(["--listening-port=3478", "--min-port=49152", "--max-port=49999", "--realm=tether.test"])
            .arg(format!("--pidfile={}", dir.join("turnserver.pid").display()))
            .arg(format!("--db={}", dir.join("turndb").display()));
        match auth {
            TurnAuth::SharedSecret => {
                cmd.arg("--use-auth-secret").arg(format!("--static-auth-secret={TURN_SECRET}"));
            }
            TurnAuth::StaticUser { user, password } => {
                cmd.arg("--lt-cred-mech").arg(format!("--user={user}:{password}"));
            }
        }
        let mut proc = self.spawn("coturn", cmd);
        proc.wait_for(&format!("UDP listener opened on: {PUBLIC}:3478"), false, Duration::from_secs(10));
        self.procs.push(proc);
    }

    /// Starts a second coturn (`coturn2`, shared-secret auth) on its own
    /// public address [`PUBLIC_2`], relaying from that address.
    fn second_coturn(&mut self) {
        self.ip_in(Ns::Public, &["addr", "add", &format!("{PUBLIC_2}/24"), "dev", "br0"]);
        let mut cmd = self.command(Ns::Public, self.tools.get("turnserver"));
        let dir = self.dir.path();
        cmd.args(["-n", "-v", "--simple-log", "--log-file=stdout", "--no-cli", "--no-tls", "--no-dtls"])
            .arg(format!("--listening-ip={PUBLIC_2}"))
            .arg(format!("--relay-ip={PUBLIC_2}"))
            .args(["--listening-port=3478", "--min-port=50000", "--max-port=50999", "--realm=tether.test"])
            .arg(format!("--pidfile={}", dir.join("turnserver2.pid").display()))
            .arg(format!("--db={}", dir.join("turndb2").display()))
            .arg("--use-auth-secret")
            .arg(format!("--static-auth-secret={TURN_SECRET}"));
        let mut proc = self.spawn("coturn2", cmd);
        proc.wait_for(&format!("UDP listener opened on: {PUBLIC_2}:3478"), false, Duration::from_secs(10));
        self.procs.push(proc);
    }

    /// Successful TURN allocations coturn (`name`) has logged so far.
    fn allocations(&self, name: &str) -> usize {
        let log = self.proc(name).map(Proc::stdout).unwrap_or_default();
        log.lines().filter(|l| l.contains("ALLOCATE processed, success")).count()
    }

    /// Router A lets UDP through only to and from coturn (the only way
    /// between the NATs is a TURN relay).
    fn block_udp_except_to_coturn(&self) {
        self.nft(
            Ns::RouterA,
            &format!(
                "table ip udpblock {{
                    chain forward {{
                        type filter hook forward priority filter - 10; policy accept;
                        meta l4proto udp ip saddr != {PUBLIC} ip daddr != {PUBLIC} drop
                    }}
                }}"
            ),
        );
    }

    /// The coturn log so far.
    fn coturn_log(&self) -> String {
        self.proc("coturn").map(Proc::stdout).unwrap_or_default()
    }

    /// Starts `tether signaling` on the public address.
    fn signaling(&mut self, port: u16, extra: &[&str]) -> Signaling {
        let mut cmd = self.tether(Ns::Public);
        cmd.args(["signaling", "--listen", &format!("{PUBLIC}:{port}")]).args(extra);
        let mut proc = self.spawn(&format!("signaling-{port}"), cmd);
        proc.wait_for("listening on", false, Duration::from_secs(20));
        self.procs.push(proc);
        Signaling { url: format!("http://{PUBLIC}:{port}") }
    }

    /// Starts the machine (one fake motor) behind router A, answering through
    /// `signaling`, gathering with coturn as its STUN server.
    fn machine(&mut self, signaling: &[&Signaling]) {
        self.machine_with(signaling, serde_json::json!([{"urls": [STUN]}]));
    }

    /// [`Self::machine`] gathering with `ice_servers` (config JSON) instead.
    fn machine_with(&mut self, signaling: &[&Signaling], ice_servers: serde_json::Value) {
        self.machine_windowed(signaling, ice_servers, WINDOW);
    }

    /// [`Self::machine_with`] with another session heartbeat window.
    fn machine_windowed(&mut self, signaling: &[&Signaling], ice_servers: serde_json::Value, window: Duration) {
        let config = serde_json::json!({
            "components": [{"name": "motor1", "api": "rdk:component:motor", "model": "rdk:builtin:fake"}],
            "network": {
                "ice_servers": ice_servers,
                "hosts": ["bot"],
                "sessions": {"heartbeat_window": format!("{}ms", window.as_millis())},
            },
        });
        let path = self.dir.path().join("machine.json");
        std::fs::write(&path, config.to_string()).expect("write machine config");
        let mut cmd = self.tether(Ns::Machine);
        cmd.args(["machine", "--listen", "0.0.0.0:8080", "--config"]).arg(&path);
        if let Some(ca) = &self.ca_file {
            cmd.env("SSL_CERT_FILE", ca);
        }
        log_turn(&mut cmd, "info");
        for s in signaling {
            cmd.args(["--signaling", &s.url]);
        }
        let mut proc = self.spawn("machine", cmd);
        proc.wait_for("listening on", false, Duration::from_secs(20));
        self.procs.push(proc);
    }

    /// Starts the machine like [`Self::machine`], gathering with STUN plus
    /// the TURN servers `turn_urls` (TURN REST credentials from
    /// [`TURN_SECRET`]), with `env` added to its environment.
    fn machine_with_turn(&mut self, signaling: &Signaling, turn_urls: &[&str], env: &[(&str, &str)]) {
        let creds = tether_signaling::turn_rest_credentials(
            TURN_SECRET.as_bytes(),
            "machine",
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        );
        let config = serde_json::json!({
            "components": [{"name": "motor1", "api": "rdk:component:motor", "model": "rdk:builtin:fake"}],
            "network": {
                "ice_servers": [
                    {"urls": [STUN]},
                    {"urls": turn_urls, "username": creds.username, "credential": creds.credential},
                ],
                "hosts": ["bot"],
            },
        });
        let path = self.dir.path().join(format!("machine-{}.json", netns::next_file()));
        std::fs::write(&path, config.to_string()).expect("write machine config");
        let mut cmd = self.tether(Ns::Machine);
        cmd.args(["machine", "--listen", "0.0.0.0:8080", "--config"]).arg(&path).args(["--signaling", &signaling.url]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = self.spawn("machine", cmd);
        proc.wait_for("listening on", false, Duration::from_secs(20));
        self.procs.push(proc);
    }

    /// The machine's log so far.
    fn machine_log(&self) -> String {
        self.proc("machine").map(Proc::stderr).unwrap_or_default()
    }

    /// `tether call` from the client's namespace over WebRTC via `signaling`:
    /// `tether call bot ARGS… --signaling URL --host bot`.
    fn client_cmd(&self, signaling: &Signaling, args: &[&str]) -> Command {
        let mut cmd = self.tether(Ns::Client);
        cmd.args(["call", "bot"]).args(args).args(["--signaling", &signaling.url, "--host", "bot"]);
        if let Some(ca) = &self.ca_file {
            cmd.env("SSL_CERT_FILE", ca);
        }
        log_turn(&mut cmd, "warn");
        cmd
    }

    fn client(&self, signaling: &Signaling, args: &[&str]) -> Out {
        self.finish(self.client_cmd(signaling, args), args)
    }

    /// `tether call 127.0.0.1:8080 ARGS…` inside the machine's namespace
    /// (direct gRPC, no NAT, no session).
    fn local(&self, args: &[&str]) -> Out {
        let mut cmd = self.tether(Ns::Machine);
        cmd.args(["call", "127.0.0.1:8080"]).args(args).arg("--disable-sessions");
        self.finish(cmd, args)
    }

    /// Starts `tether call bot motor1 set-power 0.5 --hold EXTRA…` from the
    /// client and waits until it holds.
    fn hold_motor(&mut self, signaling: &Signaling, extra: &[&str]) -> Proc {
        let mut args = vec!["motor1", "set-power", "0.5", "--hold", "--ice-server", STUN];
        args.extend_from_slice(extra);
        let cmd = self.client_cmd(signaling, &args);
        let mut held = self.spawn("held-client", cmd);
        held.wait_for("holding session", false, CALL_LIMIT);
        held
    }

    /// Gives router B's LAN a second subnet, `10.3.0.0/24`, for
    /// [`Self::move_client`].
    fn second_client_subnet(&self) {
        self.ip_in(Ns::RouterB, &["addr", "add", "10.3.0.1/24", "dev", "lan"]);
    }

    /// Moves the client from subnet `from` to `to` (`"10.2.0"`, `"10.3.0"`):
    /// its new address comes up, the old one goes away (and the default
    /// route with it), and the default route points at the new gateway. Its
    /// NAT mapping changes with its source address.
    fn move_client(&self, from: &str, to: &str) {
        self.move_client_slowly(from, to, Duration::ZERO);
    }

    /// [`Self::move_client`] with `pause` between the steps (make before
    /// break: both addresses up for a while, as when Wi-Fi and LTE overlap).
    fn move_client_slowly(&self, from: &str, to: &str, pause: Duration) {
        self.ip_in(Ns::Client, &["addr", "add", &format!("{to}.2/24"), "dev", "eth0"]);
        std::thread::sleep(pause);
        self.ip_in(Ns::Client, &["addr", "del", &format!("{from}.2/24"), "dev", "eth0"]);
        std::thread::sleep(pause);
        self.ip_in(Ns::Client, &["route", "replace", "default", "via", &format!("{to}.1")]);
    }

    /// Runs `handover_probe` in the client's namespace (a session, motor1
    /// at 0.5, `is_powered` back to back; see the example) and waits for it
    /// to be ready.
    fn handover_probe(&mut self, signaling: &Signaling, extra: &[&str]) -> Proc {
        let mut cmd = self.command(Ns::Client, &netns::example("handover_probe"));
        cmd.args(["--signaling", &signaling.url, "--host", "bot", "--ice-server", STUN]).args(extra);
        if std::env::var_os(SUITE.log_var).is_none() {
            cmd.env("TETHER_LOG", "warn,tether_client=info");
        }
        let mut probe = self.spawn("handover-probe", cmd);
        probe.wait_for("ready ", false, CALL_LIMIT);
        probe
    }

    /// Whether the motor runs, asked directly on the machine.
    fn motor_on(&self) -> bool {
        let v = self.local(&["motor1", "is-powered", "--json"]).json();
        v["is_on"].as_bool().unwrap_or_else(|| panic!("is-powered without is_on: {v}"))
    }

    /// Polls the motor until it stops; the time from `since`.
    #[track_caller]
    fn wait_motor_stopped(&self, since: Instant, limit: Duration) -> Duration {
        loop {
            if !self.motor_on() {
                return since.elapsed();
            }
            if since.elapsed() > limit {
                panic!(
                    "the motor still runs {limit:?} after the client went away\nmachine log:\n{}",
                    tail(&self.machine_log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The reason the machine logged for its latest safety stop.
    fn last_safety_stop(&self) -> String {
        let log = self.machine_log();
        let line = log.lines().rev().find(|l| l.contains("safety stop:")).unwrap_or("(none logged)");
        let line = strip_ansi(line);
        match line.split_once("safety stop: ") {
            Some((_, reason)) => reason.to_owned(),
            None => line,
        }
    }
}

/// Waits for `handover_probe` to exit and returns its JSON report.
#[track_caller]
fn probe_report(mut probe: Proc, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = probe.child.try_wait() {
            assert!(status.success(), "handover_probe failed ({status}):\n{}", tail(&probe.stderr(), 40));
            break;
        }
        assert!(Instant::now() < deadline, "handover_probe still runs after {limit:?}:\n{}", tail(&probe.stderr(), 40));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = probe.stdout();
    let line = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no report in:\n{out}"));
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad report {line}: {e}"));
    // What the client logged (connection events), for failure messages.
    v["log"] = serde_json::Value::String(tail(&strip_ansi(&probe.stderr()), 20));
    v
}

/// What every network-change test asserts of a probe report `v`: so many
/// ICE restarts and no redial, the same session, the motor still running
/// (nothing stopped by the machine), every outage shorter than `window`.
/// Prints the figures under `what`.
#[track_caller]
fn assert_survived(net: &Net, v: &serde_json::Value, what: &str, restarts: RangeInclusive<usize>, window: Duration) {
    let (events, gaps) = (probe_events(v), probe_gaps(v));
    println!("[nat] {what}: outages {gaps:?} ms, ICE restarts {} ms, events {events:?}", v["ice_restart_ms"]);
    if !events.contains(&"ice_restarted") {
        println!("client log:\n{}", v["log"].as_str().unwrap_or_default());
    }
    let machine_log = net.machine_log();
    assert!(!machine_log.contains("safety stop"), "the machine stopped something:\n{}", tail(&machine_log, 30));
    let restarted = events.iter().filter(|e| **e == "ice_restarted").count();
    assert!(restarts.contains(&restarted), "{restarts:?} ICE restarts expected: {v}");
    assert!(!events.contains(&"ice_restart_failed") && !events.contains(&"reconnecting"), "the client redialed: {v}");
    assert_eq!(v["session_before"], v["session_after"], "the session changed: {v}");
    assert_eq!(v["powered_after"], true, "the motor stopped: {v}");
    assert!(gaps.iter().all(|g| *g < window.as_secs_f64() * 1e3), "an outage as long as the window: {v}");
    assert!(net.motor_on(), "the motor does not run after the change");
}

/// The names of a probe report's events.
fn probe_events(v: &serde_json::Value) -> Vec<&str> {
    v["events"].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_str).collect()).unwrap_or_default()
}

/// The outages of a probe report, ms.
fn probe_gaps(v: &serde_json::Value) -> Vec<f64> {
    v["gaps_ms"].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect()).unwrap_or_default()
}

/// Unless the suite's log variable sets a filter: `base` plus the driver's
/// TURN allocations (`TURN allocation url=…`), which the TURN tests read.
fn log_turn(cmd: &mut Command, base: &str) {
    if std::env::var_os(SUITE.log_var).is_none() {
        cmd.env("TETHER_LOG", format!("{base},tether_transport::webrtc::driver=debug"));
    }
}

/// The URLs of the TURN allocations a tether process logged.
fn allocated_urls(log: &str) -> Vec<String> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("TURN allocation"))
        .filter_map(|l| l.split("url=").nth(1).and_then(|u| u.split_whitespace().next()).map(str::to_owned))
        .collect()
}

/// The selected pair from `connection --json`, checked to be WebRTC.
struct Pair {
    local_type: String,
    local: String,
    remote_type: String,
    remote: String,
}

impl Pair {
    #[track_caller]
    fn of(out: &Out) -> Self {
        let v = out.json();
        assert_eq!(v["transport"], "webrtc", "not a WebRTC connection: {v}");
        let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no {k} in {v}")).to_owned();
        Pair { local_type: s("local_type"), local: s("local"), remote_type: s("remote_type"), remote: s("remote") }
    }

    fn local_ip(&self) -> &str {
        self.local.rsplit_once(':').map_or(&self.local, |(ip, _)| ip)
    }

    fn remote_ip(&self) -> &str {
        self.remote.rsplit_once(':').map_or(&self.remote, |(ip, _)| ip)
    }
}

impl std::fmt::Display for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "local {} {} <-> remote {} {}", self.local_type, self.local, self.remote_type, self.remote)
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Both sides behind NAT, STUN only: hole punching with server-reflexive
/// candidates (one side may see the other's as peer-reflexive).
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn stun_connects_two_nated_peers() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    let sig = net.signaling(8081, &[]);
    net.machine(&[&sig]);

    let out = net.client(&sig, &["connection", "--json", "--ice-server", STUN]);
    let pair = Pair::of(&out);
    println!("[nat] stun: connect + call {}; {pair}", secs(out.took));
    // The machine is reached at its NAT's address. Our own side of the pair
    // is either the reflexive address or, as RFC 8445 §6.1.2.4 pairs a
    // server-reflexive candidate through its base, our private address.
    assert!(pair.remote_type == "srflx" || pair.remote_type == "prflx", "expected a reflexive remote: {pair}");
    assert_eq!(pair.remote_ip(), ROUTER_A_WAN, "the machine's address should be its NAT's: {pair}");
    match pair.local_type.as_str() {
        "host" => assert_eq!(pair.local_ip(), CLIENT_IP, "a host candidate of our own: {pair}"),
        "srflx" | "prflx" => {
            assert_eq!(pair.local_ip(), ROUTER_B_WAN, "the client's address should be its NAT's: {pair}")
        }
        other => panic!("unexpected local candidate type {other}: {pair}"),
    }

    let resources = net.client(&sig, &["resources", "--json", "--ice-server", STUN]).json();
    assert!(resources.to_string().contains("\"motor1\""), "{resources}");
    let powered = net.client(&sig, &["motor1", "is-powered", "--json", "--ice-server", STUN]).json();
    assert_eq!(powered["is_on"], false, "{powered}");
}

/// Relay-only with TURN REST credentials that the signaling service derives
/// from coturn's shared secret; a wrong secret gets nowhere.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn relay_only_with_turn_rest_credentials() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    let sig = net.signaling(8081, &["--turn", TURN_UDP, "--turn-secret", TURN_SECRET]);
    let wrong = net.signaling(8082, &["--turn", TURN_UDP, "--turn-secret", "not-the-secret"]);
    net.machine(&[&sig, &wrong]);

    let out = net.client(&sig, &["connection", "--json", "--no-stun", "--relay-only"]);
    let pair = Pair::of(&out);
    println!("[nat] relay-only (TURN REST): connect + call {}; {pair}", secs(out.took));
    assert_eq!(pair.local_type, "relay", "{pair}");
    assert_eq!(pair.local_ip(), PUBLIC, "the relayed address is coturn's: {pair}");
    let powered = net.client(&sig, &["motor1", "is-powered", "--json", "--no-stun", "--relay-only"]).json();
    assert_eq!(powered["is_on"], false, "{powered}");
    let log = net.coturn_log();
    let allocations = log.lines().filter(|l| l.contains("ALLOCATE processed, success")).count();
    assert!(allocations >= 2, "coturn logged {allocations} successful allocations:\n{}", tail(&log, 30));

    let out = net.client(&wrong, &["connection", "--json", "--no-stun", "--relay-only", "--timeout", "3"]);
    assert!(!out.ok, "relay-only with credentials from a wrong secret connected: {}", out.stdout);
    let log = net.coturn_log();
    // The first 401 of every allocation is the nonce challenge (`user <>`);
    // one naming the user is a refusal.
    let refused = log.lines().any(|l| l.contains(":bot>: incoming packet") && l.contains("error 401"));
    assert!(refused, "coturn did not refuse the wrong credentials:\n{}", tail(&log, 30));
    println!(
        "[nat] relay-only with a wrong TURN secret: refused by coturn (401), call failed after {}",
        secs(out.took)
    );
}

/// Relay-only with a static long-term-credential user given on the command line.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn relay_only_with_static_turn_user() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::StaticUser { user: "tether", password: "turn-pass" });
    let sig = net.signaling(8081, &[]);
    net.machine(&[&sig]);

    let turn = "turn:tether:turn-pass@203.0.113.1:3478?transport=udp";
    let out = net.client(&sig, &["connection", "--json", "--relay-only", "--ice-server", turn]);
    let pair = Pair::of(&out);
    println!("[nat] relay-only (static TURN user): connect + call {}; {pair}", secs(out.took));
    assert_eq!(pair.local_type, "relay", "{pair}");
    let powered = net.client(&sig, &["motor1", "is-powered", "--json", "--relay-only", "--ice-server", turn]).json();
    assert_eq!(powered["is_on"], false, "{powered}");
    assert!(net.coturn_log().contains("user <tether>: incoming packet ALLOCATE processed, success"));
}

/// Router A lets UDP through only to and from coturn: STUN alone cannot
/// connect, and with TURN from the signaling service (not relay-only) ICE
/// ends up on the relay.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn turn_is_the_only_way_when_udp_is_blocked() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    let with_turn = net.signaling(8081, &["--turn", TURN_UDP, "--turn-secret", TURN_SECRET]);
    let stun_only = net.signaling(8082, &[]);
    net.machine(&[&with_turn, &stun_only]);
    net.nft(
        Ns::RouterA,
        &format!(
            "table ip udpblock {{
                chain forward {{
                    type filter hook forward priority filter - 10; policy accept;
                    meta l4proto udp ip saddr != {PUBLIC} ip daddr != {PUBLIC} drop
                }}
            }}"
        ),
    );

    let out = net.client(&with_turn, &["connection", "--json", "--ice-server", STUN]);
    let pair = Pair::of(&out);
    println!("[nat] UDP blocked except to coturn, TURN offered: connect + call {}; {pair}", secs(out.took));
    // The machine's relayed address can show up as peer-reflexive: its check
    // through the relay can arrive before the candidate does.
    let relayed_remote = pair.remote_type == "relay" || (pair.remote_type == "prflx" && pair.remote_ip() == PUBLIC);
    assert!(pair.local_type == "relay" || relayed_remote, "expected a relayed pair: {pair}");
    let powered = net.client(&with_turn, &["motor1", "is-powered", "--json", "--ice-server", STUN]).json();
    assert_eq!(powered["is_on"], false, "{powered}");

    let out = net.client(&stun_only, &["connection", "--json", "--ice-server", STUN, "--timeout", "5"]);
    assert!(!out.ok, "connected without TURN although UDP between the NATs is blocked: {}", out.stdout);
    println!("[nat] UDP blocked, STUN only: no connection (failed after {})", secs(out.took));
}

/// A client holding a motor through two NATs is SIGKILLed: with a session
/// the machine stops the motor when the heartbeat window lapses; without
/// one, when the peer connection dies (ICE disconnect).
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn killed_client_stops_the_motor() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    let sig = net.signaling(8081, &[]);
    net.machine(&[&sig]);

    let mut held = net.hold_motor(&sig, &[]);
    assert!(net.motor_on(), "set-power 0.5 did not start the motor");
    held.kill();
    let killed = Instant::now();
    let delay = net.wait_motor_stopped(killed, WINDOW + Duration::from_secs(10));
    let reason = net.last_safety_stop();
    println!("[nat] session client SIGKILLed: motor stopped after {} (window {}): {reason}", secs(delay), secs(WINDOW));
    assert!(delay <= WINDOW + Duration::from_millis(1500), "stop took {delay:?}, window {WINDOW:?}");

    let mut held = net.hold_motor(&sig, &["--disable-sessions"]);
    assert!(net.motor_on(), "set-power 0.5 did not start the motor");
    held.kill();
    let killed = Instant::now();
    let delay = net.wait_motor_stopped(killed, Duration::from_secs(20));
    let reason = net.last_safety_stop();
    println!("[nat] sessionless WebRTC client SIGKILLed: motor stopped after {}: {reason}", secs(delay));
    assert!(reason.contains("peer connection lost"), "expected the connection-scoped stop, got: {reason}");
    assert!(delay <= Duration::from_secs(8), "connection-scoped stop took {delay:?}");
}

/// The client's link goes down while it holds the motor: no heartbeats get
/// through, and the machine stops the motor when the session lapses.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn link_cut_stops_the_motor() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    let sig = net.signaling(8081, &[]);
    net.machine(&[&sig]);

    let held = net.hold_motor(&sig, &[]);
    assert!(net.motor_on(), "set-power 0.5 did not start the motor");
    net.ip_in(Ns::Client, &["link", "set", "eth0", "down"]);
    let cut = Instant::now();
    let delay = net.wait_motor_stopped(cut, WINDOW + Duration::from_secs(10));
    let reason = net.last_safety_stop();
    println!("[nat] client link down: motor stopped after {} (window {}): {reason}", secs(delay), secs(WINDOW));
    assert!(reason.contains("session lapsed"), "expected the session to lapse first, got: {reason}");
    assert!(delay <= WINDOW + Duration::from_millis(1500), "stop took {delay:?}, window {WINDOW:?}");

    // Longer than the window, and the motor stays stopped.
    std::thread::sleep(WINDOW);
    net.ip_in(Ns::Client, &["link", "set", "eth0", "up"]);
    assert!(!net.motor_on(), "the motor runs again after the link came back");
    drop(held);
}

/// `--force-p2p` where only a TURN relay can connect (UDP between the NATs
/// blocked, TURN offered by signaling): no TURN server is used, and the call
/// fails with an error that says so. Without it the same call connects
/// through the relay.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn force_p2p_with_only_a_turn_path_fails_clearly() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    let sig = net.signaling(8081, &["--turn", TURN_UDP, "--turn-secret", TURN_SECRET]);
    net.machine(&[&sig]);
    net.block_udp_except_to_coturn();
    // The machine relays too (it gathers with the signaler's TURN servers):
    // the client reaches coturn's port 3478 (its own allocation) but not the
    // relayed ports, so the machine's relay is no path for a client without
    // TURN.
    net.nft(
        Ns::RouterB,
        "table ip relayblock {
            chain forward {
                type filter hook forward priority filter - 10; policy accept;
                iifname \"lan\" udp dport 49152-49999 drop
            }
        }",
    );

    let out = net.client(&sig, &["connection", "--json", "--ice-server", STUN, "--force-p2p", "--no-reconnect"]);
    assert!(!out.ok, "force_p2p connected although only a relay path exists: {}", out.stdout);
    assert!(out.stderr.contains("force_p2p"), "the error does not say force_p2p ruled the relay out: {}", out.stderr);
    let urls = allocated_urls(&out.stderr);
    assert!(urls.is_empty(), "force_p2p allocated a TURN relay: {urls:?}");
    let error = out.stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    println!("[nat] force_p2p, only a TURN path: failed after {}: {error}", secs(out.took));

    let out = net.client(&sig, &["connection", "--json", "--ice-server", STUN]);
    let pair = Pair::of(&out);
    assert!(pair.local_type == "relay" || pair.remote_type == "relay", "expected a relayed pair: {pair}");
}

/// `--force-relay` (the anchors' name; `--relay-only` is the old one) ends
/// on a relayed pair even where hole punching would work.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn force_relay_uses_a_relay_pair() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    let sig = net.signaling(8081, &["--turn", TURN_UDP, "--turn-secret", TURN_SECRET]);
    net.machine(&[&sig]);

    let out = net.client(&sig, &["connection", "--json", "--ice-server", STUN, "--force-relay"]);
    let pair = Pair::of(&out);
    println!("[nat] force_relay: connect + call {}; {pair}", secs(out.took));
    assert_eq!(pair.local_type, "relay", "{pair}");
    assert_eq!(pair.local_ip(), PUBLIC, "the relayed address is coturn's: {pair}");

    // force_relay with force_p2p can never connect: refused at once.
    let out = net.client(&sig, &["connection", "--json", "--force-relay", "--force-p2p"]);
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("InvalidArgument") && out.stderr.contains("force_p2p"), "{}", out.stderr);
    assert!(out.took < Duration::from_secs(5), "took {:?}", out.took);
}

/// Signaling hands out two TURN servers (on two public addresses);
/// `--turn-uri` keeps one of them, as the relayed address of the selected
/// pair shows; a `--turn-port` rewrite to a port nobody serves leaves no
/// relay.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn turn_uri_selects_one_of_two_turn_servers() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    net.second_coturn();
    let sig = net.signaling(8081, &["--turn", TURN_UDP, "--turn", TURN_UDP_2, "--turn-secret", TURN_SECRET]);
    net.machine(&[&sig]);

    for (uri, ip, name, other) in [
        (format!("turn:{PUBLIC_2}:3478"), PUBLIC_2, "coturn2", "coturn"),
        (format!("turn:{PUBLIC}?transport=udp"), PUBLIC, "coturn", "coturn2"),
    ] {
        let out = net.client(&sig, &["connection", "--json", "--no-stun", "--force-relay", "--turn-uri", &uri]);
        let pair = Pair::of(&out);
        println!("[nat] turn_uri {uri}: connect + call {}; {pair}", secs(out.took));
        assert_eq!(pair.local_type, "relay", "{pair}");
        assert_eq!(pair.local_ip(), ip, "--turn-uri {uri} should relay through {ip}: {pair}");
        assert!(net.allocations(name) >= 1, "{name} allocated nothing");
        // The client's own allocations (the machine allocates on both: it
        // gathers with every TURN server the signaler hands it).
        let urls = allocated_urls(&out.stderr);
        let on_ip = |u: &String| [":", "?"].iter().any(|end| u.contains(&format!(":{ip}{end}"))) || u.ends_with(ip);
        let only_ip = !urls.is_empty() && urls.iter().all(on_ip);
        assert!(only_ip, "the client allocated on {other} although --turn-uri {uri} excludes it: {urls:?}");
    }

    // Rewriting the port to one no TURN server listens on: no relay.
    let out = net.client(
        &sig,
        &[
            "connection",
            "--json",
            "--no-stun",
            "--force-relay",
            "--turn-port",
            "3999",
            "--no-reconnect",
            "--timeout",
            "8",
        ],
    );
    assert!(!out.ok, "connected through a TURN port nobody serves: {}", out.stdout);
}

/// The machine's `TURN_URI` environment override: of the two TURN servers
/// in its config it allocates a relay on both without it, and only on the
/// one named with it.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn machine_turn_uri_environment_override() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    net.second_coturn();
    let sig = net.signaling(8081, &[]);

    // Without the override: a relay on each.
    net.machine_with_turn(&sig, &[TURN_UDP, TURN_UDP_2], &[]);
    let out = net.client(&sig, &["connection", "--json", "--ice-server", STUN]);
    Pair::of(&out);
    let wait_allocations = |net: &Net, name: &str, at_least: usize| {
        let t0 = Instant::now();
        while net.allocations(name) < at_least && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        net.allocations(name)
    };
    let (one, two) = (wait_allocations(&net, "coturn", 1), wait_allocations(&net, "coturn2", 1));
    assert!(one >= 1 && two >= 1, "without TURN_URI the machine should relay on both: {one} and {two} allocations");
    if let Some(m) = net.proc_mut("machine") {
        m.kill();
    }

    // TURN_URI names the second: the first allocates nothing more.
    net.machine_with_turn(&sig, &[TURN_UDP, TURN_UDP_2], &[("TURN_URI", &format!("turn:{PUBLIC_2}:3478"))]);
    let (one, two) = (net.allocations("coturn"), net.allocations("coturn2"));
    let out = net.client(&sig, &["connection", "--json", "--ice-server", STUN]);
    let pair = Pair::of(&out);
    println!("[nat] machine with TURN_URI={PUBLIC_2}: connect + call {}; {pair}", secs(out.took));
    assert!(wait_allocations(&net, "coturn2", two + 1) > two, "the machine allocated nothing on {PUBLIC_2}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(net.allocations("coturn"), one, "the machine allocated on {PUBLIC} although TURN_URI excludes it");

    // A TURN_PORT that is no port: the machine refuses to start, saying why.
    let mut cmd = net.tether(Ns::Machine);
    cmd.args(["machine", "--listen", "0.0.0.0:8090"]).env("TURN_PORT", "x");
    let out = net.finish(cmd, &["machine", "TURN_PORT=x"]);
    assert!(!out.ok && out.stderr.contains("TURN_PORT"), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// TURN over TCP and TLS, and the machine's relay from its signaler (issue 17 item 2)
// ---------------------------------------------------------------------------------------------

/// Both routers forward no UDP at all (the networks of hotels and corporate
/// Wi-Fi that let only TCP out).
fn block_all_udp(net: &Net) {
    for router in [Ns::RouterA, Ns::RouterB] {
        net.nft(
            router,
            "table ip udpblock {
                chain forward {
                    type filter hook forward priority filter - 10; policy accept;
                    meta l4proto udp drop
                }
            }",
        );
    }
}

/// UDP blocked everywhere, TCP to coturn open: the signaler hands out
/// `turn:…?transport=udp` and its TCP copy, and the client and the machine
/// (which has no TURN server of its own) connect through relays they
/// allocated over TCP.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn turn_over_tcp_when_all_udp_is_blocked() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    let sig = net.signaling(8081, &["--turn", TURN_UDP, "--turn-secret", TURN_SECRET]);
    net.machine(&[&sig]);
    block_all_udp(&net);

    let out = net.client(&sig, &["connection", "--json", "--ice-server", STUN]);
    let pair = Pair::of(&out);
    println!("[nat] all UDP blocked, TURN over TCP: connect + call {}; {pair}", secs(out.took));
    assert_eq!((pair.local_type.as_str(), pair.remote_type.as_str()), ("relay", "relay"), "{pair}");
    assert_eq!((pair.local_ip(), pair.remote_ip()), (PUBLIC, PUBLIC), "both relayed addresses are coturn's: {pair}");
    let powered = net.client(&sig, &["motor1", "is-powered", "--json", "--ice-server", STUN]).json();
    assert_eq!(powered["is_on"], false, "{powered}");

    let tcp_url = format!("turn:{PUBLIC}:3478?transport=tcp");
    for (who, log) in [("machine", net.machine_log()), ("client", out.stderr.clone())] {
        let urls = allocated_urls(&log);
        let only_tcp = !urls.is_empty() && urls.iter().all(|u| *u == tcp_url);
        assert!(only_tcp, "the {who}'s TURN allocations: {urls:?}\n{}", tail(&log, 30));
    }
}

/// The same with `turns:` only (TLS to coturn's test certificate, trusted
/// through `SSL_CERT_FILE`); a client that does not trust the certificate
/// gets no relay and cannot connect.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn turn_over_tls_when_all_udp_is_blocked() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn_with(TurnAuth::SharedSecret, true);
    let turns = format!("turns:{PUBLIC}:5349");
    let sig = net.signaling(8081, &["--turn", &turns, "--turn-secret", TURN_SECRET]);
    net.machine(&[&sig]);
    block_all_udp(&net);

    let out = net.client(&sig, &["connection", "--json", "--ice-server", STUN]);
    let pair = Pair::of(&out);
    println!("[nat] all UDP blocked, TURN over TLS: connect + call {}; {pair}", secs(out.took));
    assert_eq!((pair.local_type.as_str(), pair.remote_type.as_str()), ("relay", "relay"), "{pair}");
    for (who, log) in [("machine", net.machine_log()), ("client", out.stderr.clone())] {
        let urls = allocated_urls(&log);
        let only_tls = !urls.is_empty() && urls.iter().all(|u| *u == turns);
        assert!(only_tls, "the {who}'s TURN allocations: {urls:?}\n{}", tail(&log, 30));
    }

    let ca = net.ca_file.take();
    let out = net.client(&sig, &["connection", "--json", "--ice-server", STUN, "--timeout", "6"]);
    net.ca_file = ca;
    assert!(!out.ok, "connected over TLS without trusting coturn's certificate: {}", out.stdout);
    println!("[nat] TURN over TLS, certificate not trusted: no connection (failed after {})", secs(out.took));
}

/// The home-router ruleset with symmetric NAT (a new random port for every
/// destination) and a firewall that lets UDP out only to the TURN server's
/// port: the only way through is relay to relay.
const SYMMETRIC_ROUTER_RULES: &str = r#"
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade random
    }
}
table ip filter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new drop
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state new drop
        iifname "lan" meta l4proto udp ip daddr != 203.0.113.1 drop
        iifname "lan" udp dport != 3478 drop
    }
}
"#;

/// Both sides behind symmetric NATs; the machine has no TURN server of its
/// own (only STUN) and a standalone `tether signaling` mints TURN REST
/// credentials: the machine allocates a relay with what the signaler handed
/// it, and the client connects relay to relay.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn symmetric_nats_connect_relay_to_relay_with_the_signalers_turn() {
    let _serial = serial();
    let mut net = Net::with_router_rules(SYMMETRIC_ROUTER_RULES);
    net.coturn(TurnAuth::SharedSecret);
    let sig = net.signaling(8081, &["--turn", TURN_UDP, "--turn-secret", TURN_SECRET]);
    net.machine(&[&sig]);

    let out = net.client(&sig, &["connection", "--json", "--ice-server", STUN]);
    let pair = Pair::of(&out);
    println!("[nat] symmetric NATs, TURN from the signaler only: connect + call {}; {pair}", secs(out.took));
    assert_eq!((pair.local_type.as_str(), pair.remote_type.as_str()), ("relay", "relay"), "{pair}");
    // The machine's config has STUN only: its relay comes from the signaler's TURN URLs.
    let urls = allocated_urls(&net.machine_log());
    assert!(urls.contains(&TURN_UDP.to_owned()), "the machine's TURN allocations: {urls:?}");
    let powered = net.client(&sig, &["motor1", "is-powered", "--json", "--ice-server", STUN]).json();
    assert_eq!(powered["is_on"], false, "{powered}");
}

/// Connect time and unary latency through a relay on each side, reached
/// over `transport` (`udp` or `tcp`), in the symmetric-NAT topology (UDP out
/// only to coturn's port; for `tcp` no UDP at all). Each side has a static
/// TURN user of its own; the client is relay-only. Returns the
/// `relay_probe` example's JSON.
fn relay_figures(transport: &str) -> serde_json::Value {
    let mut net = Net::with_router_rules(SYMMETRIC_ROUTER_RULES);
    net.coturn(TurnAuth::StaticUser { user: "tether", password: "turn-pass" });
    let sig = net.signaling(8081, &[]);
    let url = format!("turn:{PUBLIC}:3478?transport={transport}");
    net.machine_with(&[&sig], serde_json::json!([{"urls": [url], "username": "tether", "credential": "turn-pass"}]));
    if transport == "tcp" {
        block_all_udp(&net);
    }
    let mut cmd = net.command(Ns::Client, &netns::example("relay_probe"));
    let client_url = format!("turn:tether:turn-pass@{PUBLIC}:3478?transport={transport}");
    cmd.args(["--signaling", &sig.url, "--host", "bot", "--relay-only", "--ice-server", &client_url]);
    cmd.args(["--connects", "11", "--calls", "300"]);
    let out = net.finish(cmd, &["relay_probe", transport]);
    assert!(out.ok, "relay_probe over {transport} failed: {}", out.stderr);
    let v = out.json();
    assert_eq!((v["local_type"].as_str(), v["remote_type"].as_str()), (Some("relay"), Some("relay")), "{v}");
    v
}

/// The issue's bench rows, measured here (the lead copies the figures into
/// docs/PERFORMANCE.md): connect through a TURN-over-TCP relay vs a UDP
/// relay (goal ≤ 1.5x) and unary p50 over them (goal ≤ 1.3x). Asserted
/// only far from the goals (3x), so that a slow box does not fail the suite.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn tcp_relay_costs_little_more_than_udp_relay() {
    let _serial = serial();
    let median = |v: &serde_json::Value| {
        let mut xs: Vec<f64> = v.as_array().expect("an array").iter().filter_map(serde_json::Value::as_f64).collect();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let udp = relay_figures("udp");
    let tcp = relay_figures("tcp");
    let (udp_connect, tcp_connect) = (median(&udp["connect_ms"]), median(&tcp["connect_ms"]));
    let (udp_unary, tcp_unary) = (median(&udp["unary_us"]), median(&tcp["unary_us"]));
    println!(
        "[nat] relay to relay, connect + first call p50: UDP {udp_connect:.0} ms, TCP {tcp_connect:.0} ms ({:.2}x); \
         unary p50: UDP {udp_unary:.0} µs, TCP {tcp_unary:.0} µs ({:.2}x)",
        tcp_connect / udp_connect,
        tcp_unary / udp_unary
    );
    println!("[nat] connect_ms UDP {} TCP {}", udp["connect_ms"], tcp["connect_ms"]);
    assert!(tcp_connect <= 3.0 * udp_connect, "TCP relay connect {tcp_connect:.0} ms vs UDP {udp_connect:.0} ms");
    assert!(tcp_unary <= 3.0 * udp_unary, "TCP relay unary p50 {tcp_unary:.0} µs vs UDP {udp_unary:.0} µs");
}

/// `handover_probe`'s default: pauses between calls longer than this are outages.
const PROBE_GAP_MS: f64 = 150.0;

/// The session heartbeat window of the network-change tests (the issue's).
const HANDOVER_WINDOW: Duration = Duration::from_secs(2);

/// The client moves to another subnet and back (new address, new default
/// route, new NAT mapping) while it drives a motor under a 2 s session
/// window: the connection survives through ICE restarts, the session is the
/// same, nothing is stopped, and calls pause for less than the window.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn client_address_change_is_survived_by_an_ice_restart() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    let sig = net.signaling(8081, &[]);
    net.machine_windowed(&[&sig], serde_json::json!([{"urls": [STUN]}]), HANDOVER_WINDOW);
    net.second_client_subnet();

    let probe = net.handover_probe(&sig, &["--seconds", "8"]);
    std::thread::sleep(Duration::from_secs(1));
    // The first move in steps 300 ms apart: the client notices the new
    // address before the old one goes away, and starts over when it does.
    net.move_client_slowly("10.2.0", "10.3.0", Duration::from_millis(300));
    std::thread::sleep(Duration::from_secs(3));
    net.move_client("10.3.0", "10.2.0");
    let v = probe_report(probe, Duration::from_secs(30));
    // The stepwise move is one restart or two (one per step the client
    // sees), the quick one back is one.
    assert_survived(&net, &v, "client moved to another subnet and back", 2..=3, HANDOVER_WINDOW);
    assert!(probe_gaps(&v).len() <= 3, "more outages than network changes: {v}");
}

/// The bench row "address change → calls flowing again": the outage of an
/// ICE restart (p50 of five moves) against a full redial of the same
/// client with ICE restart off (p50 of three moves), in the same run. The
/// lead copies the figures into docs/PERFORMANCE.md; asserted only as
/// "shorter than a redial" so that a slow box does not fail the suite.
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn address_change_ice_restart_vs_full_redial() {
    let _serial = serial();
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let mut outages = Vec::new();
    for (restart, moves, spacing) in [(true, 5, 2), (false, 3, 7)] {
        let mut net = Net::new();
        net.coturn(TurnAuth::SharedSecret);
        let sig = net.signaling(8081, &[]);
        net.machine_windowed(&[&sig], serde_json::json!([{"urls": [STUN]}]), Duration::from_secs(10));
        net.second_client_subnet();
        let seconds = (1 + moves * spacing + 1).to_string();
        let mut extra = vec!["--seconds", seconds.as_str()];
        if !restart {
            extra.push("--no-ice-restart");
        }
        let probe = net.handover_probe(&sig, &extra);
        std::thread::sleep(Duration::from_secs(1));
        let subnets = ["10.2.0", "10.3.0"];
        for i in 0..moves {
            net.move_client(subnets[i % 2], subnets[(i + 1) % 2]);
            std::thread::sleep(Duration::from_secs(spacing as u64));
        }
        let v = probe_report(probe, Duration::from_secs(120));
        let mut gaps = probe_gaps(&v);
        println!(
            "[nat] {moves} moves, ICE restart {}: outages {gaps:?} ms; restarts {} ms; events {:?}",
            if restart { "on" } else { "off" },
            v["ice_restart_ms"],
            probe_events(&v)
        );
        // One outage per move; a stray pause of a loaded box beyond those
        // is not the move's: the longest `moves` pauses are.
        gaps.sort_by(|a, b| b.total_cmp(a));
        gaps.truncate(moves);
        if restart {
            // One restart per move, or two when the poll saw the move half
            // done (the new address up, the old one not yet gone).
            let events = probe_events(&v);
            let restarted = events.iter().filter(|e| **e == "ice_restarted").count();
            assert!(restarted >= moves, "an ICE restart per move expected: {v}");
            assert!(!events.contains(&"reconnecting"), "the client redialed: {v}");
        }
        // A move whose pause stayed under the probe's threshold (150 ms)
        // counts as the threshold: an upper bound.
        gaps.resize(moves, PROBE_GAP_MS);
        outages.push(median(gaps));
    }
    let (restart, redial) = (outages[0], outages[1]);
    println!(
        "[nat] address change → calls flowing again, p50: ICE restart {restart:.0} ms, full redial {redial:.0} ms ({:.2}x)",
        restart / redial
    );
    assert!(restart < redial, "an ICE restart ({restart:.0} ms) took longer than a redial ({redial:.0} ms)");
}

/// The client's NAT gets a new public address (a new lease on its WAN side)
/// while the client drives a motor: the client's own address does not
/// change, but the machine's datagrams go to the old mapping and stop
/// arriving. The client notices the silence (1.5 s), restarts ICE (its new
/// server-reflexive candidate carries the new address), and the session and
/// the motor carry on.
///
/// The window is 5 s, not 2: calls resume only when SCTP retransmits what
/// was lost, and by the time silence is noticed its retransmission timer
/// has backed off (1 s, then 2 s: about 3 s after the change; see
/// docs/PERFORMANCE.md).
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn client_nat_address_change_is_survived_by_an_ice_restart() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    let sig = net.signaling(8081, &[]);
    let window = Duration::from_secs(5);
    net.machine_windowed(&[&sig], serde_json::json!([{"urls": [STUN]}]), window);

    let probe = net.handover_probe(&sig, &["--seconds", "7"]);
    std::thread::sleep(Duration::from_secs(1));
    // Removing the address drops the conntrack entries masqueraded to it.
    // (Removed first: a namespace does not promote secondary addresses, so
    // removing the primary would take a second one with it.)
    net.ip_in(Ns::RouterB, &["addr", "del", &format!("{ROUTER_B_WAN}/24"), "dev", "wan"]);
    net.ip_in(Ns::RouterB, &["addr", "add", "203.0.113.21/24", "dev", "wan"]);
    let v = probe_report(probe, Duration::from_secs(30));
    assert_survived(&net, &v, "the client's NAT changed its public address", 1..=1, window);
}

/// The machine moves to another subnet behind its NAT while a client drives
/// its motor: the machine notices its new address and reconnects to the
/// signaler at once; the client notices the silence (1.5 s) and restarts
/// ICE through it; the machine gathers on its new address for the restart.
/// The session and the motor carry on. The window is 10 s: the silence
/// path leaves calls waiting for SCTP's backed-off retransmission (about
/// 3.2 s after the change when the restart is done by then, which it is
/// with about 0.5 s to spare here; 7.2 s when it is not).
#[test]
#[ignore = "needs root, iproute2, nftables and coturn; run by scripts/test-all.sh"]
fn machine_address_change_is_survived_by_an_ice_restart() {
    let _serial = serial();
    let mut net = Net::new();
    net.coturn(TurnAuth::SharedSecret);
    let sig = net.signaling(8081, &[]);
    let window = Duration::from_secs(10);
    net.machine_windowed(&[&sig], serde_json::json!([{"urls": [STUN]}]), window);
    net.ip_in(Ns::RouterA, &["addr", "add", "10.4.0.1/24", "dev", "lan"]);

    let probe = net.handover_probe(&sig, &["--seconds", "10"]);
    std::thread::sleep(Duration::from_secs(1));
    net.ip_in(Ns::Machine, &["addr", "add", "10.4.0.2/24", "dev", "eth0"]);
    net.ip_in(Ns::Machine, &["addr", "del", &format!("{MACHINE_IP}/24"), "dev", "eth0"]);
    net.ip_in(Ns::Machine, &["route", "replace", "default", "via", "10.4.0.1"]);
    let v = probe_report(probe, Duration::from_secs(30));
    let machine_log = net.machine_log();
    assert!(machine_log.contains("addresses changed"), "the machine did not notice:\n{}", tail(&machine_log, 30));
    assert_survived(&net, &v, "the machine moved to another subnet", 1..=1, window);
}
