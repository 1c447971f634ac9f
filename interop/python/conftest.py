"""pytest fixtures for the Python interop suite.

Every machine and client process a test starts is registered with a fixture and stopped in its
teardown, whether the test passed or not. When a test fails, the machine logs are printed
(pytest shows them under "Captured stdout teardown").
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import pytest

from tether_harness import WEBRTC_MACHINE_LOG, ClientProcess, Machine, NetNS

_TIMINGS: list[tuple[str, str, float]] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


@pytest.fixture
def start_machine(tmp_path, request) -> Iterator[Callable[..., Machine]]:
    """start_machine(config=None) -> Machine. No config = the built-in fake machine."""
    machines: list[Machine] = []

    def start(config: Optional[dict[str, Any]] = None) -> Machine:
        m = Machine(tmp_path / f"machine{len(machines)}", config)
        machines.append(m)
        return m

    yield start
    for m in machines:
        m.stop()
    if _failed(request):
        for i, m in enumerate(machines):
            print(f"--- machine{i} ({m.address}) log ---\n{m.log()}")


@pytest.fixture
def fake_machine(start_machine) -> Machine:
    """The built-in fake machine (all fake components)."""
    return start_machine()


@pytest.fixture(scope="session")
def netns() -> Iterator[NetNS]:
    """One private network namespace (`ttpy-<pid>-…`) for the whole test session, deleted at the
    end — also when tests failed or were interrupted (stale ones of killed runs are removed on
    creation)."""
    ns = NetNS(prefix="ttpy-", subnet=1)
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture
def start_netns_machine(netns, tmp_path, request) -> Iterator[Callable[..., Machine]]:
    """start_netns_machine(config, hosts=()) -> Machine listening on a free port of the namespace's
    198.18.1.1, run with `ip netns exec` and a debug log (printed when a test fails)."""
    machines: list[Machine] = []

    def start(config: Optional[dict[str, Any]] = None, hosts: tuple[str, ...] = ()) -> Machine:
        m = Machine(
            tmp_path / f"nsmachine{len(machines)}",
            config,
            listen=f"{netns.ip}:0",
            netns=netns,
            hosts=hosts,
            env={"TETHER_LOG": WEBRTC_MACHINE_LOG},
        )
        machines.append(m)
        return m

    yield start
    for m in machines:
        m.stop()
    if _failed(request):
        for i, m in enumerate(machines):
            log = m.log()
            if len(log) > 200_000:
                log = "[… earlier lines cut …]\n" + log[-200_000:]
            print(f"--- netns machine{i} ({m.address}) log ---\n{log}")


@pytest.fixture
def start_client(request) -> Iterator[Callable[..., ClientProcess]]:
    """start_client(script, *args, netns=None) -> ClientProcess; killed at teardown."""
    clients: list[ClientProcess] = []

    def start(script: str, *args: str, netns: Optional[NetNS] = None) -> ClientProcess:
        c = ClientProcess(script, *args, netns=netns)
        clients.append(c)
        return c

    yield start
    for c in clients:
        c.stop()
    if _failed(request):
        for i, c in enumerate(clients):
            print(f"--- client{i} output ---\n{c.output()}")


@pytest.fixture
def timing(request) -> Callable[[str, float], None]:
    """timing(label, seconds): recorded and printed in the terminal summary."""

    def record(label: str, seconds: float) -> None:
        _TIMINGS.append((request.node.name, label, seconds))

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _TIMINGS:
        return
    terminalreporter.section("interop timings")
    for test, label, seconds in _TIMINGS:
        terminalreporter.write_line(f"{test}: {label} = {seconds * 1000:.1f} ms")
