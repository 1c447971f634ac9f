"""The real Viam Python SDK against a tether machine over WebRTC.

viam-sdk dials WebRTC through its native library (rust-utils, webrtc-rs): the dialed address is
also the signaling server, `rpc-host` is exactly what was dialed, and the answerer is the machine
itself (its embedded signaling service answers for every ip:port it listens on). Addresses with
`localhost`/`.local` never try WebRTC, so these tests dial a literal IP — 198.18.1.1 inside a
private network namespace (fixture `netns`): the library runs mDNS on every interface and asks
public STUN servers for candidates, and the machine is configured with no ICE servers.

The SDK silently falls back to direct gRPC when WebRTC fails, so every test proves the transport:
the machine logs `webrtc peer connected` for the dial, and GetSessions reports the client's session
with PEER_CONNECTION_TYPE_WEBRTC.

Machines run with `ip netns exec`; in-process SDK clients run on a thread that joined the namespace
(NetNS.run), client processes with `ip netns exec`.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid

import pytest
from grpclib import Status
from grpclib.exceptions import GRPCError
from viam.components.motor import Motor
from viam.components.sensor import Sensor
from viam.proto.robot import GetSessionsRequest, PeerConnectionType, SendSessionHeartbeatRequest
from viam.robot.client import RobotClient

from tether_harness import connect_observer, webrtc_config, webrtc_options

WINDOW_S = 1.0
WINDOW = "1s"
# After SIGKILL the machine must stop the motor within the window plus this margin.
STOP_MARGIN_S = 2.5
POLL_S = 0.01
PEER_CONNECTED = re.compile(r"webrtc peer connected remote=Some\((\S+?)\) pair=(.*)")
READY = r"READY session=(\S*) powered=(\S+) power=(\S+) window=(\S+) transport=(\S+)"
WEBRTC = PeerConnectionType.PEER_CONNECTION_TYPE_WEBRTC


def _wait_for_log(machine, pattern: re.Pattern[str], timeout: float = 5.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        m = pattern.search(machine.log())
        if m or time.monotonic() > deadline:
            assert m, f"machine log has no /{pattern.pattern}/ within {timeout}s"
            return m
        time.sleep(0.05)


async def _sessions(robot: RobotClient) -> list:
    # RobotClient has no get_sessions(): call RobotService.GetSessions through the SDK's own stub.
    resp = await robot._client.GetSessions(GetSessionsRequest(), timeout=5)
    return list(resp.sessions)


async def _connect_webrtc(address: str, timing=None) -> RobotClient:
    t0 = time.monotonic()
    robot = await RobotClient.at_address(address, webrtc_options())
    if timing is not None:
        timing("WebRTC connect (signaling + ICE + data channel + first RPCs)", time.monotonic() - t0)
    return robot


def test_webrtc_connect_list_resources(netns, start_netns_machine, timing):
    machine = start_netns_machine(webrtc_config(WINDOW))
    assert machine.address.startswith(netns.ip + ":"), machine.address

    async def run():
        robot = await _connect_webrtc(machine.address, timing)
        try:
            got = {(n.subtype, n.name) for n in robot.resource_names if n.namespace == "rdk" and n.type == "component"}
            assert {("motor", "motor1"), ("sensor", "sensor1")} <= got, f"machine listed {sorted(got)}"
            await robot.refresh()
            assert {(n.subtype, n.name) for n in robot.resource_names} >= {("motor", "motor1"), ("sensor", "sensor1")}
        finally:
            t0 = time.monotonic()
            await robot.close()
            timing("close", time.monotonic() - t0)

    netns.run(run)
    # Not a silent fallback to direct gRPC: the machine answered a WebRTC call from this client.
    m = _wait_for_log(machine, PEER_CONNECTED)
    print(f"machine: webrtc peer connected remote={m.group(1)} pair={m.group(2)}")


def test_webrtc_motor_sensor_and_session_transport(netns, start_netns_machine):
    machine = start_netns_machine(webrtc_config(WINDOW))

    async def run():
        robot = await _connect_webrtc(machine.address)
        try:
            motor = Motor.from_robot(robot, "motor1")
            assert await motor.is_powered() == (False, 0.0)

            await motor.set_power(0.5)  # monitored: the SDK starts a session first
            powered, pct = await motor.is_powered()
            assert powered is True and pct == pytest.approx(0.5)

            # The machine sees this client's session on a WebRTC peer connection.
            session_id = robot._sessions_client._current_id
            assert session_id and uuid.UUID(session_id).version == 4, f"no SDK session id: {session_id!r}"
            by_id = {s.id: s for s in await _sessions(robot)}
            assert session_id in by_id, f"own session {session_id} not in GetSessions {list(by_id)}"
            info = by_id[session_id].peer_connection_info
            assert info.type == WEBRTC, f"session transport {PeerConnectionType.Name(info.type)}, want WEBRTC"
            assert info.remote_address, "WebRTC session without the peer's address"

            await motor.set_power(-0.25)
            powered, pct = await motor.is_powered()
            assert powered is True and pct == pytest.approx(-0.25)
            await motor.stop()
            assert await motor.is_powered() == (False, 0.0)
            assert await motor.is_moving() is False

            sensor = Sensor.from_robot(robot, "sensor1")
            readings = await sensor.get_readings()
            assert isinstance(readings, dict) and readings, f"sensor1 readings {readings!r}"
            for key, value in readings.items():
                assert isinstance(key, str) and key and value is not None
        finally:
            await robot.close()

    netns.run(run)
    _wait_for_log(machine, PEER_CONNECTED)


def test_webrtc_killed_client_motor_stops(netns, start_netns_machine, start_client, timing):
    machine = start_netns_machine(webrtc_config(WINDOW))
    holder = start_client("hold_motor.py", "--webrtc", machine.address, "motor1", "0.5", netns=netns)
    ready = holder.wait_for(READY, timeout=45)
    assert ready.group(2) == "True", ready.group(0)
    assert float(ready.group(4)) == WINDOW_S, ready.group(0)
    assert ready.group(5) == "PEER_CONNECTION_TYPE_WEBRTC", f"holder's session is not on WebRTC: {ready.group(0)}"
    _wait_for_log(machine, PEER_CONNECTED)
    deadline_s = WINDOW_S + STOP_MARGIN_S

    async def run() -> float:
        observer = await connect_observer(machine.address)  # direct gRPC, sessions disabled
        try:
            motor = Motor.from_robot(observer, "motor1")
            # Held for more than a window: heartbeats flow over the WebRTC data channel.
            await asyncio.sleep(1.5 * WINDOW_S)
            powered, pct = await motor.is_powered()
            assert powered is True and pct == pytest.approx(0.5), f"motor not held before the kill: {(powered, pct)}"
            assert holder.proc.poll() is None, f"holder exited early:\n{holder.output()}"
            sessions = await _sessions(observer)
            assert [s.peer_connection_info.type for s in sessions] == [WEBRTC], sessions

            t_kill = time.monotonic()
            holder.kill()  # SIGKILL (the pid is the python process: `ip netns exec` execs in place)
            while True:
                if (await motor.is_powered())[0] is False:
                    break
                if time.monotonic() - t_kill > deadline_s:
                    break
                await asyncio.sleep(POLL_S)
            delay = time.monotonic() - t_kill
            print(f"motor stopped {delay * 1000:.0f} ms after SIGKILL of the WebRTC client (window {WINDOW})")
            assert delay <= deadline_s, f"motor still powered {delay:.2f}s after the WebRTC client was killed"
            assert await motor.is_powered() == (False, 0.0)
            return delay
        finally:
            await observer.close()

    delay = netns.run(run)
    timing(f"motor stop after SIGKILL of a WebRTC client (window {WINDOW})", delay)
    stops = [line for line in machine.log().splitlines() if "safety stop" in line or "session expired" in line]
    print("machine:\n" + "\n".join(stops))


def test_webrtc_api_keys_own_their_sessions(netns, start_netns_machine):
    """Identity over WebRTC: each SDK client authenticates to the machine's embedded signaler with
    its own API key; the signaler hands that caller to the machine's answerer in process, and the
    machine owns the session by that key.
    A second key cannot heartbeat the first key's session, though neither sends credentials on the
    data channel."""
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    config = webrtc_config("2s")
    config["auth"] = {
        "handlers": [
            {
                "type": "api-key",
                "config": {"keys": [{"id": alice, "key": "alice-secret"}, {"id": bob, "key": "bob-secret"}]},
            }
        ]
    }
    machine = start_netns_machine(config)

    def options(key_id: str, secret: str) -> RobotClient.Options:
        opts = RobotClient.Options.with_api_key(api_key=secret, api_key_id=key_id)
        opts.dial_options.insecure = True
        opts.dial_options.allow_insecure_with_creds_downgrade = True
        return opts

    async def run():
        robot_a = await RobotClient.at_address(machine.address, options(alice, "alice-secret"))
        robot_b = await RobotClient.at_address(machine.address, options(bob, "bob-secret"))
        try:
            await Motor.from_robot(robot_a, "motor1").set_power(0.5)
            await Motor.from_robot(robot_b, "motor1").set_power(0.25)
            sid_a = robot_a._sessions_client._current_id
            sid_b = robot_b._sessions_client._current_id
            assert sid_a and sid_b and sid_a != sid_b
            # Each key sees its own session with its id and the other's without it: a session id is
            # a secret of its owner (it is what heartbeats and resumes the session).
            for me, mine, theirs in ((robot_a, sid_a, sid_b), (robot_b, sid_b, sid_a)):
                listed = await _sessions(me)
                by_id = {s.id: s for s in listed}
                assert by_id[mine].peer_connection_info.type == WEBRTC, f"session {mine} is not on WebRTC"
                assert theirs not in by_id, "GetSessions showed another key's session id"
                hidden = [s.peer_connection_info.type for s in listed if not s.id]
                assert hidden == [WEBRTC], f"the other key's session is not listed without its id: {listed}"
            # Bob's client heartbeating alice's session is refused as if it did not exist.
            try:
                await robot_b._client.SendSessionHeartbeat(SendSessionHeartbeatRequest(id=sid_a), timeout=5)
                raise AssertionError("bob heartbeated alice's session")
            except GRPCError as e:
                assert e.status == Status.INVALID_ARGUMENT and e.message == "SESSION_EXPIRED", (e.status, e.message)
            # Her own heartbeat still works.
            await robot_a._client.SendSessionHeartbeat(SendSessionHeartbeatRequest(id=sid_a), timeout=5)
        finally:
            await robot_a.close()
            await robot_b.close()

    netns.run(run)
    # The machine learned each caller from the signaling exchange.
    for key_id in (alice, bob):
        _wait_for_log(machine, re.compile(r"webrtc peer connected .*caller=\"?" + re.escape(key_id)))


TURN_SECRET = "py-turn-secret"
TURN_TABLE = "ttpyturn"
ALLOCATED = re.compile(r"TURN allocation url=(\S+)")
# The remote may be an mDNS name (remote=None): match any.
CONNECTED_ANY = re.compile(r"webrtc peer connected remote=\S+ pair=(.*)")


def test_webrtc_machine_reachable_only_through_its_turn_over_tcp_relay(netns, start_netns_machine, tmp_path):
    """The machine's embedded signaler mints TURN credentials for `turn:…?transport=udp` and hands out
    its TCP copy too. nftables then drop every UDP datagram to coturn's port and every UDP datagram
    that neither comes from nor goes to a relayed port (20000-20999; mDNS stays, the SDK's host
    candidates are `.local` names): the machine can allocate only
    over TCP, and the only way to it is that relay. The Python SDK's webrtc-rs has no TURN over TCP
    (webrtc-ice's gather_candidates_relay handles `turn:` over UDP only and logs "Unable to handle
    URL" for the rest), so it cannot relay itself here; it must still dial (the TCP copy must not
    break its configuration) and reach the machine through the machine's TCP relay."""
    coturn = subprocess.Popen(
        [
            *netns.exec_prefix(), "turnserver", "-n", "-v", "--simple-log", "--log-file=stdout", "--no-cli",
            "--no-tls", "--no-dtls", f"--listening-ip={netns.ip}", f"--relay-ip={netns.ip}",
            "--listening-port=3478", "--min-port=20000", "--max-port=20999", "--realm=tether.test",
            "--use-auth-secret", f"--static-auth-secret={TURN_SECRET}",
            f"--pidfile={tmp_path / 'turnserver.pid'}", f"--db={tmp_path / 'turndb'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    rules = f"""table inet {TURN_TABLE} {{
        chain output {{
            type filter hook output priority filter; policy accept;
            udp dport 3478 drop
            udp dport 5353 accept
            meta l4proto udp udp sport != 20000-20999 udp dport != 20000-20999 drop
        }}
    }}"""
    try:
        time.sleep(1.0)  # coturn's listeners
        assert coturn.poll() is None, "coturn exited at start"
        subprocess.run([*netns.exec_prefix(), "nft", "-f", "-"], input=rules, text=True, check=True)
        config = webrtc_config(WINDOW)
        config["network"]["turn"] = {"urls": [f"turn:{netns.ip}:3478?transport=udp"], "secret": TURN_SECRET}
        machine = start_netns_machine(config)

        async def run():
            robot = await _connect_webrtc(machine.address)
            try:
                powered, _ = await Motor.from_robot(robot, "motor1").is_powered()
                return powered
            finally:
                await robot.close()

        assert netns.run(run) is False
        m = _wait_for_log(machine, CONNECTED_ANY)
        assert m.group(1).startswith('Some(("relay"'), f"the machine's side is not its relay: {m.group(0)}"
        urls = ALLOCATED.findall(machine.log())
        assert urls and all(u.endswith("?transport=tcp") for u in urls), f"the machine's TURN allocations: {urls}"
    finally:
        subprocess.run([*netns.exec_prefix(), "nft", "delete", "table", "inet", TURN_TABLE], capture_output=True)
        coturn.kill()
        coturn.wait()
