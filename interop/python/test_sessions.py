"""Sessions with the real Viam Python SDK.

A separate Python process (clients/hold_motor.py) connects, calls motor set_power — the SDK then
starts a session and heartbeats it every window/5 from a background thread — and sleeps. The test
watches through a second SDK client that has sessions disabled (so it can never own or disturb the
motor's session), then SIGKILLs the holder and checks that the machine stops the motor once the
session's heartbeat window lapses.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest
from viam.components.motor import Motor
from viam.proto.robot import GetSessionsRequest, PeerConnectionType

from tether_harness import connect_observer, motor_config

WINDOW_S = 0.5
WINDOW = "500ms"
# The motor must be stopped within the window plus this margin after the kill.
STOP_MARGIN_S = 2.5
STOP_DEADLINE_S = WINDOW_S + STOP_MARGIN_S
# With heartbeats every window/5 the session has about 4/5 of a window left at the kill; a
# machine that stopped much earlier would be tying sessions to connections, which the protocol
# does not do (a session survives a reconnect within its window).
STOP_EARLIEST_FRACTION = 0.4
POLL_S = 0.01
READY = r"READY session=(\S*) powered=(\S+) power=(\S+) window=(\S+)"


async def _sessions(robot) -> list:
    # RobotClient has no get_sessions(): call RobotService.GetSessions through the SDK's own stub.
    resp = await robot._client.GetSessions(GetSessionsRequest(), timeout=5)
    return list(resp.sessions)


async def _wait(predicate, timeout: float, interval: float = POLL_S) -> tuple[bool, float]:
    """Polls an async predicate; returns (became true, seconds waited)."""
    t0 = time.monotonic()
    while True:
        if await predicate():
            return True, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return False, time.monotonic() - t0
        await asyncio.sleep(interval)


def test_sdk_session_listed_while_client_alive(start_machine, start_client, timing):
    machine = start_machine(motor_config(WINDOW))
    holder = start_client("hold_motor.py", machine.address, "motor1", "0.5")
    ready = holder.wait_for(READY, timeout=30)
    session_id = ready.group(1)
    assert uuid.UUID(session_id).version == 4, f"session id {session_id!r} is not a UUIDv4"
    # The SDK read heartbeat_window from StartSession: the configured 500 ms.
    assert float(ready.group(4)) == WINDOW_S, ready.group(0)

    async def run():
        observer = await connect_observer(machine.address)
        try:
            sessions = await _sessions(observer)
            assert len(sessions) >= 1, "GetSessions lists no session while the SDK client holds one"
            # The observer calls from the holder's host: on a machine without auth that is the same
            # caller (tether_machine::monitor::identity), so it sees the id; another host would not.
            by_id = {s.id: s for s in sessions}
            assert session_id in by_id, f"client's session {session_id} not in GetSessions {list(by_id)}"
            info = by_id[session_id].peer_connection_info
            assert info.type == PeerConnectionType.PEER_CONNECTION_TYPE_GRPC
            assert info.remote_address.startswith("127.0.0.1:"), info.remote_address
            assert info.local_address == machine.address, info.local_address

            # Heartbeats keep it alive well past the window.
            await asyncio.sleep(4 * WINDOW_S)
            assert session_id in {s.id for s in await _sessions(observer)}, "session lapsed while the client was alive"
            motor = Motor.from_robot(observer, "motor1")
            assert (await motor.is_powered())[0] is True

            holder.kill()

            async def gone():
                return session_id not in {s.id for s in await _sessions(observer)}

            expired, waited = await _wait(gone, STOP_DEADLINE_S)
            assert expired, f"session still listed {waited:.2f}s after the client was killed"
            timing("session removed after SIGKILL", waited)
        finally:
            await observer.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    "config_window, window_s",
    [
        pytest.param(WINDOW, WINDOW_S, id="window-500ms"),
        # No config: the built-in fake machine with the default 2 s window.
        pytest.param(None, 2.0, id="default-window-2s"),
    ],
)
def test_killed_sdk_client_motor_stops_after_window(start_machine, start_client, timing, config_window, window_s):
    machine = start_machine(motor_config(config_window) if config_window else None)
    holder = start_client("hold_motor.py", machine.address, "motor1", "0.5")
    ready = holder.wait_for(READY, timeout=30)
    assert ready.group(2) == "True", ready.group(0)
    assert float(ready.group(4)) == window_s, ready.group(0)
    # Stopped within the window plus a generous margin; not before most of the window has passed.
    deadline_s = window_s + STOP_MARGIN_S
    earliest_s = STOP_EARLIEST_FRACTION * window_s
    label = f"window {window_s * 1000:.0f}ms"

    async def run():
        observer = await connect_observer(machine.address)
        try:
            motor = Motor.from_robot(observer, "motor1")
            # Stays powered for more than a window: the SDK's heartbeats reach the machine.
            await asyncio.sleep(1.5 * window_s)
            powered, pct = await motor.is_powered()
            assert powered is True and abs(pct - 0.5) < 1e-9, f"motor not held before the kill: {(powered, pct)}"
            assert holder.proc.poll() is None, f"holder exited early:\n{holder.output()}"

            os.kill(holder.proc.pid, signal.SIGKILL)
            t_kill = time.monotonic()
            holder.kill()  # reap

            async def stopped():
                return (await motor.is_powered())[0] is False

            ok, _ = await _wait(stopped, deadline_s)
            delay = time.monotonic() - t_kill
            print(f"motor stopped {delay * 1000:.0f} ms after SIGKILL ({label})")
            timing(f"motor stop after SIGKILL ({label})", delay)
            assert ok, f"motor still powered {delay:.2f}s after the client was killed ({label})"
            assert delay >= earliest_s, (
                f"motor stopped {delay * 1000:.0f} ms after the kill, before the session could have lapsed ({label})"
            )
            assert await motor.is_powered() == (False, 0.0)
            assert await _sessions(observer) == []
        finally:
            await observer.close()

    asyncio.run(run())
