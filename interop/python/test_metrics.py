"""Prometheus metrics of `tether machine` and `tether signaling` (`--metrics-listen`, or
`network.metrics_listen` in the machine's config).

Every scrape is parsed by the real `prometheus_client` parsers (Prometheus text 0.0.4, and
OpenMetrics when the scraper asks for it, as Prometheus does). The counters must move as real
clients use the machine: the Viam Python SDK starts a session and powers a motor, is SIGKILLed,
and the machine stops the motor when the session lapses; then `tether call` drives the motor over
WebRTC through a standalone signaler without a session and exits, and the machine stops the motor
when the peer connection dies.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus
from viam.components.motor import Motor

from tether_harness import (
    STARTUP_TIMEOUT_S,
    _die_with_parent,
    _LineReader,
    _stop_process,
    connect_observer,
    tether_bin,
)

WINDOW_S = 0.5
METRICS_LINE = re.compile(r"metrics on (http://\S+/metrics)")
READY = r"READY session=(\S*) powered=(\S+) power=(\S+) window=(\S+)"

# Every family a machine exposes from its start (names as the Prometheus text parser reports them:
# counters without their _total suffix). tether_webrtc_peers_by_pair and tether_signaling_refused
# appear with their first peer / refusal.
MACHINE_FAMILIES = {
    "tether_connections": "counter",
    "tether_connections_open": "gauge",
    "tether_connections_shed": "counter",
    "tether_incomplete_messages_dropped": "counter",
    "tether_sessions_started": "counter",
    "tether_sessions_resumed": "counter",
    "tether_sessions_expired": "counter",
    "tether_sessions_active": "gauge",
    "tether_safety_stops": "counter",
    "tether_safety_stop_latency_seconds": "histogram",
    "tether_webrtc_offers_answering": "gauge",
    "tether_webrtc_offers_shed": "counter",
    "tether_webrtc_partial_messages_dropped": "counter",
    "tether_webrtc_partial_messages_stalled": "counter",
    "tether_signaling_calls": "counter",
    "tether_signaling_exchanges_ended": "counter",
    "tether_signaling_pending_offers": "gauge",
    "tether_signaling_exchanges": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
}
SIGNALER_FAMILIES = {
    name: kind
    for name, kind in MACHINE_FAMILIES.items()
    if name.startswith(("tether_signaling_", "tether_connections", "tether_incomplete", "process_"))
}


class Scrape:
    """One scrape, parsed: `value(name, **labels)` sums the samples that carry those labels."""

    def __init__(self, url: str):
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
            content_type = resp.headers["Content-Type"]
            text = resp.read().decode()
        assert content_type.startswith("text/plain; version=0.0.4"), content_type
        self.text = text
        self.families = {f.name: f for f in parse_prometheus(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        hits = [s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        return sum(hits)


def scrape_openmetrics(url: str) -> dict:
    req = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text"), resp.headers["Content-Type"]
        text = resp.read().decode()
    # The strict parser: raises on anything OpenMetrics does not allow (and on a missing # EOF).
    return {f.name: f for f in parse_openmetrics(text)}


def check_families(url: str, expected: dict[str, str]) -> Scrape:
    scrape = Scrape(url)
    for name, kind in expected.items():
        assert name in scrape.families, f"no {name} in the scrape:\n{scrape.text}"
        assert scrape.families[name].type == kind, (name, scrape.families[name].type)
    om = scrape_openmetrics(url)
    for name, kind in expected.items():
        assert name in om and om[name].type == kind, (name, om.get(name))
    assert scrape.value("process_resident_memory_bytes") > 1 << 20
    assert scrape.value("process_open_fds") > 3
    return scrape


def wait_for(fetch: Callable[[], Scrape], pred: Callable[[Scrape], bool], timeout: float, what: str) -> Scrape:
    deadline = time.monotonic() + timeout
    while True:
        scrape = fetch()
        if pred(scrape):
            return scrape
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s; last scrape:\n{scrape.text}")
        time.sleep(0.05)


class Tether:
    """A `tether` subprocess that prints `listening on ADDR` (and `metrics on URL` before it)."""

    def __init__(self, workdir: Path, name: str, *args: str):
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "w")
        argv = [str(tether_bin()), *args]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, text=True, preexec_fn=_die_with_parent
        )
        self._out = _LineReader(self.proc.stdout)
        m = self._out.wait_for(re.compile(r"listening on (\S+)"), STARTUP_TIMEOUT_S)
        if m is None:
            self.stop()
            raise RuntimeError(f"{argv} did not start:\n{self.log_path.read_text(errors='replace')}")
        self.address = m.group(1)
        self.metrics_url = metrics_url("".join(self._out.all))

    def stop(self) -> None:
        _stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def metrics_url(stdout: str) -> str:
    m = METRICS_LINE.search(stdout)
    assert m, f"no 'metrics on URL' line before 'listening on':\n{stdout}"
    return m.group(1)


@pytest.fixture
def start_tether(tmp_path, request):
    started: list[Tether] = []

    def start(name: str, *args: str) -> Tether:
        t = Tether(tmp_path, name, *args)
        started.append(t)
        return t

    yield start
    failed = getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed
    for t in reversed(started):
        t.stop()
        if failed:
            print(f"--- {t.log_path.name} ---\n{t.log_path.read_text(errors='replace')}")


def test_machine_metrics_follow_a_session_that_expires_and_stops_a_motor(start_machine, start_client, timing):
    config = {
        "components": [{"name": "motor1", "api": "rdk:component:motor", "model": "rdk:builtin:fake"}],
        "network": {"sessions": {"heartbeat_window": "500ms"}, "metrics_listen": "127.0.0.1:0"},
    }
    machine = start_machine(config)
    url = metrics_url(machine.log())
    before = check_families(url, MACHINE_FAMILIES)
    assert before.value("tether_sessions_active") == 0
    assert before.value("tether_sessions_started_total") == 0
    assert before.value("tether_safety_stops_total") == 0
    # Other paths and methods are refused.
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url.replace("/metrics", "/"), timeout=5)
    assert err.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"), timeout=5)
    assert err.value.code == 405

    holder = start_client("hold_motor.py", machine.address, "motor1", "0.5")
    holder.wait_for(READY, timeout=30)
    held = Scrape(url)
    assert held.value("tether_sessions_started_total") == 1, held.text
    assert held.value("tether_sessions_active") == 1, held.text
    grpc_total = held.value("tether_connections_total", transport="grpc")
    grpc_open = held.value("tether_connections_open", transport="grpc")
    assert grpc_total >= 1 and grpc_open >= 1, held.text

    holder.kill()
    t_kill = time.monotonic()
    stopped = wait_for(
        lambda: Scrape(url),
        lambda s: s.value("tether_safety_stops_total", cause="session_expired") >= 1,
        WINDOW_S + 3,
        "safety stop counted after the SDK client was killed",
    )
    timing("safety stop in metrics after SIGKILL", time.monotonic() - t_kill)
    assert stopped.value("tether_sessions_expired_total") == 1, stopped.text
    assert stopped.value("tether_sessions_active") == 0, stopped.text
    assert stopped.value("tether_safety_stops_total", cause="connection_lost") == 0
    latency_count = stopped.value("tether_safety_stop_latency_seconds_count", cause="session_expired")
    latency_sum = stopped.value("tether_safety_stop_latency_seconds_sum", cause="session_expired")
    assert latency_count == 1, stopped.text
    # From the deadline to the stop: milliseconds, well under a second even on a loaded host.
    assert 0 <= latency_sum < 1.0, latency_sum
    assert stopped.value("tether_safety_stop_latency_seconds_bucket", cause="session_expired", le="+Inf") == 1
    # The killed client's connection closed.
    assert stopped.value("tether_connections_open", transport="grpc") < grpc_open, stopped.text

    async def motor_is_stopped():
        observer = await connect_observer(machine.address)
        try:
            return await Motor.from_robot(observer, "motor1").is_powered()
        finally:
            await observer.close()

    assert asyncio.run(motor_is_stopped()) == (False, 0.0)


def tether_call(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(tether_bin()), "call", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_signaler_and_machine_metrics_over_webrtc(start_tether):
    signaler = start_tether(
        "signaling", "signaling", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"
    )
    sig_url = f"http://{signaler.address}"
    check_families(signaler.metrics_url, SIGNALER_FAMILIES)
    machine = start_tether(
        "machine",
        "machine",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--host",
        "metrics-bot",
        "--signaling",
        sig_url,
    )
    check_families(machine.metrics_url, MACHINE_FAMILIES)
    # The machine's Answer stream is a gRPC connection of the signaler's.
    wait_for(
        lambda: Scrape(signaler.metrics_url),
        lambda s: s.value("tether_connections_open", transport="grpc") >= 1,
        10,
        "the machine's Answer stream at the signaler",
    )

    # A sessionless monitored call over WebRTC: the peer connection is the motor's last caller.
    common = ["--signaling", sig_url, "--no-stun", "--disable-sessions"]
    done = tether_call("metrics-bot", "motor1", "set-power", "0.5", *common)
    assert done.returncode == 0, done.stdout + done.stderr
    # A call for a host nobody answers for is refused (NOT_FOUND).
    refused = tether_call("nobody-here", "resources", "--signaling", sig_url, "--no-stun", "--no-reconnect", timeout=60)
    assert refused.returncode != 0, refused.stdout

    sig = wait_for(
        lambda: Scrape(signaler.metrics_url),
        lambda s: s.value("tether_signaling_exchanges_ended_total", outcome="finished") >= 1
        and s.value("tether_signaling_refused_total", rpc="call") >= 1,
        10,
        "the signaler's exchange and refusal",
    )
    assert sig.value("tether_signaling_calls_total") >= 1, sig.text
    assert sig.value("tether_signaling_refused_total", rpc="call", code="NOT_FOUND") >= 1, sig.text
    assert sig.value("tether_signaling_pending_offers") == 0, sig.text

    # The caller exited: its peer connection dies, the machine stops the motor (connection_lost).
    m = wait_for(
        lambda: Scrape(machine.metrics_url),
        lambda s: s.value("tether_safety_stops_total", cause="connection_lost") >= 1,
        15,
        "safety stop after the WebRTC caller exited",
    )
    assert m.value("tether_connections_total", transport="webrtc") >= 1, m.text
    assert m.value("tether_connections_open", transport="webrtc") == 0, m.text
    assert m.value("tether_webrtc_peers_by_pair_total", local="host") >= 1, m.text
    assert m.value("tether_sessions_started_total") == 0, m.text
    assert m.value("tether_safety_stop_latency_seconds_count", cause="connection_lost") >= 1, m.text
    # The offer went through the external signaler, not the embedded one.
    assert m.value("tether_signaling_calls_total") == 0, m.text
