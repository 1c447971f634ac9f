"""Helpers shared by the Python interop tests.

Starts `tether machine` subprocesses on free ports, connects the real Viam Python SDK to them,
and runs helper client processes. Everything started here is stopped by the fixtures in
conftest.py, also when a test fails.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any, Awaitable, Callable, Optional, Sequence, TypeVar

from viam.robot.client import RobotClient
from viam.rpc.dial import DialOptions

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENTS_DIR = Path(__file__).resolve().parent / "clients"
STARTUP_TIMEOUT_S = 30.0

_LISTENING = re.compile(r"listening on (\S+)")
T = TypeVar("T")


def tether_bin() -> Path:
    """The tether binary: $TETHER_BIN (relative paths are taken from the repo root) or target/debug/tether."""
    raw = os.environ.get("TETHER_BIN")
    path = Path(raw) if raw else REPO_ROOT / "target" / "debug" / "tether"
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def motor_config(heartbeat_window: str) -> dict[str, Any]:
    """A machine with only motor1 and the given session heartbeat window (Go duration string)."""
    return {
        "components": [{"name": "motor1", "api": "rdk:component:motor", "model": "rdk:builtin:fake"}],
        "network": {"sessions": {"heartbeat_window": heartbeat_window}},
    }


class _LineReader:
    """Reads a pipe line by line on a daemon thread so the child never blocks on a full pipe."""

    def __init__(self, stream: IO[str], echo: Optional[IO[str]] = None):
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.all: list[str] = []
        self._echo = echo
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self.all.append(line)
                if self._echo is not None:
                    self._echo.write(line)
                    self._echo.flush()
                self.lines.put(line)
        except ValueError:  # stream closed under us during teardown
            pass
        finally:
            self.lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> Optional[re.Match[str]]:
        """First line matching pattern, or None on EOF/timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                return None
            if line is None:
                return None
            m = pattern.search(line)
            if m:
                return m


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child if the test process dies without cleaning up (Linux)."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # not Linux / no libc: the fixtures still stop every process
        pass


def _stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass


class Machine:
    """A running `tether machine` subprocess."""

    def __init__(
        self,
        workdir: Path,
        config: Optional[dict[str, Any]] = None,
        *,
        listen: str = "127.0.0.1:0",
        netns: Optional["NetNS"] = None,
        hosts: Sequence[str] = (),
        env: Optional[dict[str, str]] = None,
    ):
        """A machine on `listen` (port 0 = a free one), inside `netns` when given (`ip netns exec`)."""
        workdir.mkdir(parents=True, exist_ok=True)
        binary = tether_bin()
        if not binary.is_file():
            raise FileNotFoundError(f"tether binary not found at {binary}: run `cargo build -p tether` or set TETHER_BIN")
        args = [str(binary), "machine", "--listen", listen]
        for host in hosts:
            args += ["--host", host]
        if netns is not None:
            args = netns.exec_prefix() + args
        if config is not None:
            config_path = workdir / "machine.json"
            config_path.write_text(json.dumps(config, indent=2))
            args += ["--config", str(config_path)]
        self.log_path = workdir / "machine.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
            preexec_fn=_die_with_parent,
        )
        self._stdout = _LineReader(self.proc.stdout)
        m = self._stdout.wait_for(_LISTENING, STARTUP_TIMEOUT_S)
        if m is None:
            self.stop()
            raise RuntimeError(
                f"tether machine did not print 'listening on ADDR' within {STARTUP_TIMEOUT_S}s "
                f"(exit code {self.proc.returncode}); args={args}\n--- log ---\n{self.log()}"
            )
        self.address: str = m.group(1)
        self.port: int = int(self.address.rsplit(":", 1)[1])

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        try:
            stderr = self.log_path.read_text(errors="replace")
        except OSError:
            stderr = ""
        return "".join(self._stdout.all) + stderr

    def stop(self) -> None:
        _stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class ClientProcess:
    """A Python helper client from interop/python/clients run as its own process (inside `netns` if given)."""

    def __init__(self, script: str, *args: str, netns: Optional["NetNS"] = None):
        argv = [sys.executable, "-u", str(CLIENTS_DIR / script), *args]
        if netns is not None:
            argv = netns.exec_prefix() + argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_die_with_parent,
        )
        self._out = _LineReader(self.proc.stdout)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        m = self._out.wait_for(re.compile(pattern), timeout)
        if m is None:
            raise AssertionError(
                f"client did not print /{pattern}/ within {timeout}s (exit code {self.proc.poll()})\n"
                f"--- client output ---\n{self.output()}"
            )
        return m

    def output(self) -> str:
        return "".join(self._out.all)

    def kill(self) -> None:
        """SIGKILL: no cleanup in the client, its sockets are just closed by the kernel."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        _stop_process(self.proc, signal.SIGKILL)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def direct_options(**kwargs: Any) -> RobotClient.Options:
    """SDK options for a direct (no WebRTC), insecure (no TLS), unauthenticated connection."""
    return RobotClient.Options(dial_options=DialOptions(disable_webrtc=True, insecure=True), **kwargs)


async def connect(address: str, **kwargs: Any) -> RobotClient:
    return await RobotClient.at_address(address, direct_options(**kwargs))


async def connect_observer(address: str) -> RobotClient:
    """A client that only watches: never starts a session and runs no background reconnect task."""
    return await connect(address, disable_sessions=True, check_connection_interval=0, attempt_reconnect_interval=0)


# ---------------------------------------------------------------------------------------------
# Private network namespaces for the WebRTC tests.
#
# The SDK's native WebRTC library runs an mDNS query on every interface and asks a public STUN
# server for candidates, so WebRTC tests run machine and SDK clients in a namespace of their own:
# lo up, a veth pair whose both ends stay inside (198.18.N.1/24 and 198.18.N.2/24) and a default
# route into it (WebRTC stacks gather no candidates without one). Packets for any other address
# go nowhere: forwarding is off in a fresh namespace.
# ---------------------------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
# TETHER_LOG for machines in WebRTC tests: debug for tether and the WebRTC stack, without the
# per-frame HTTP/2 and SCTP chatter.
WEBRTC_MACHINE_LOG = "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info,tonic_web=info,webrtc_sctp=info"
NETNS_DIR = Path("/run/netns")


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({res.returncode}): {res.stderr.strip()}")


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def remove_stale_netns(prefix: str) -> list[str]:
    """Deletes `<prefix><pid>-…` namespaces whose creating process is gone (left by a killed run),
    killing what still runs in them."""
    removed = []
    try:
        names = [p.name for p in NETNS_DIR.iterdir()]
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            # Only that run's processes live there (a machine or client it could not stop).
            res = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for p in res.stdout.split():
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    return removed


class NetNS:
    """A private network namespace `<prefix><pid>-<random>` with 198.18.<subnet>.1 and .2 inside."""

    def __init__(self, prefix: str = "ttpy-", subnet: int = 1):
        if os.geteuid() != 0:
            raise PermissionError("WebRTC interop tests need root for `ip netns` (network namespaces)")
        remove_stale_netns(prefix)
        self.name = f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.ip = f"198.18.{subnet}.1"
        self.peer_ip = f"198.18.{subnet}.2"
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("-n", self.name, "link", "add", "tt0", "type", "veth", "peer", "name", "tt1")
            _ip("-n", self.name, "addr", "add", f"{self.ip}/24", "dev", "tt0")
            _ip("-n", self.name, "addr", "add", f"{self.peer_ip}/24", "dev", "tt1")
            _ip("-n", self.name, "link", "set", "tt0", "up")
            _ip("-n", self.name, "link", "set", "tt1", "up")
            _ip("-n", self.name, "route", "add", "default", "via", self.peer_ip, "dev", "tt0")
        except Exception:
            self.delete()
            raise

    def exec_prefix(self) -> list[str]:
        """argv prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def pids(self) -> list[int]:
        res = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(p) for p in res.stdout.split()]

    def delete(self) -> None:
        """Kills whatever still runs inside (only processes this run started live there) and deletes it."""
        for pid in self.pids():
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def run(self, coro_fn: Callable[[], Awaitable[T]], timeout: float = 90.0) -> T:
        """Runs `asyncio.run(coro_fn())` on a fresh thread that has joined the namespace.

        setns(CLONE_NEWNET) changes only the calling thread; every thread it starts (asyncio's
        executor, the SDK's native WebRTC runtime and its heartbeat thread) and every socket it
        opens inherit the namespace, so an in-process SDK client behaves as one started with
        `ip netns exec`.
        """
        import asyncio

        result: list[Any] = []
        error: list[BaseException] = []

        def target() -> None:
            try:
                fd = os.open(NETNS_DIR / self.name, os.O_RDONLY)
                try:
                    _setns(fd)
                finally:
                    os.close(fd)
                result.append(asyncio.run(coro_fn()))
            except BaseException as e:  # re-raised on the caller's thread
                error.append(e)

        thread = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"coroutine in namespace {self.name} still running after {timeout}s")
        if error:
            raise error[0]
        return result[0]


def webrtc_options(**kwargs: Any) -> RobotClient.Options:
    """SDK options for WebRTC (the default) without TLS; signaling goes to the dialed address."""
    return RobotClient.Options(dial_options=DialOptions(insecure=True), **kwargs)


def webrtc_config(heartbeat_window: str = "1s") -> dict[str, Any]:
    """motor1 + sensor1, no ICE servers (there is no STUN here), the given session window."""
    return {
        "components": [
            {"name": "motor1", "api": "rdk:component:motor", "model": "rdk:builtin:fake"},
            {"name": "sensor1", "api": "rdk:component:sensor", "model": "rdk:builtin:fake"},
        ],
        "network": {"ice_servers": [], "sessions": {"heartbeat_window": heartbeat_window}},
    }
