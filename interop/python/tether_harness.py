"""Helpers shared by the Python interop tests.

Starts `tether machine` subprocesses on free ports, connects the real Viam Python SDK to them,
and runs helper client processes. Everything started here is stopped by the fixtures in
conftest.py, also when a test fails.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Optional

from viam.robot.client import RobotClient
from viam.rpc.dial import DialOptions

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENTS_DIR = Path(__file__).resolve().parent / "clients"
STARTUP_TIMEOUT_S = 30.0

_LISTENING = re.compile(r"listening on (\S+)")


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

    def __init__(self, workdir: Path, config: Optional[dict[str, Any]] = None):
        workdir.mkdir(parents=True, exist_ok=True)
        binary = tether_bin()
        if not binary.is_file():
            raise FileNotFoundError(f"tether binary not found at {binary}: run `cargo build -p tether` or set TETHER_BIN")
        args = [str(binary), "machine", "--listen", "127.0.0.1:0"]
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
            env={**os.environ, "NO_COLOR": "1"},
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
    """A Python helper client from interop/python/clients run as its own process."""

    def __init__(self, script: str, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(CLIENTS_DIR / script), *args],
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
