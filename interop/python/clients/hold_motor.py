"""A Viam Python SDK client that powers a motor and then holds its session open forever.

usage: hold_motor.py [--webrtc] ADDRESS [MOTOR] [POWER]

Connects directly (no WebRTC, no TLS) — or with --webrtc over WebRTC, signaling through ADDRESS —
calls set_power, which makes the SDK start a session and heartbeat it from a background thread,
prints `READY session=<id> ...` and sleeps until it is killed. The interop tests SIGKILL it to
simulate a client that vanishes. With --webrtc it also prints the transport the machine reports
for its own session (`transport=` the PeerConnectionType name from GetSessions).
"""

import asyncio
import sys

from viam.components.motor import Motor
from viam.proto.robot import GetSessionsRequest, PeerConnectionType
from viam.robot.client import RobotClient
from viam.rpc.dial import DialOptions


async def main(address: str, motor_name: str, power: float, webrtc: bool) -> None:
    robot = await RobotClient.at_address(
        address, RobotClient.Options(dial_options=DialOptions(disable_webrtc=not webrtc, insecure=True))
    )
    motor = Motor.from_robot(robot, motor_name)
    await motor.set_power(power)
    powered, pct = await motor.is_powered()
    # The session id and the heartbeat window the machine returned from StartSession are internal
    # to the SDK; printed so the test can check them.
    sessions = robot._sessions_client
    window = sessions._heartbeat_interval.total_seconds() if sessions._heartbeat_interval else None
    transport = ""
    if webrtc:
        resp = await robot._client.GetSessions(GetSessionsRequest(), timeout=5)
        mine = [s for s in resp.sessions if s.id == sessions._current_id]
        transport = " transport=" + (PeerConnectionType.Name(mine[0].peer_connection_info.type) if mine else "none")
    print(f"READY session={sessions._current_id} powered={powered} power={pct} window={window}{transport}", flush=True)
    while True:
        await asyncio.sleep(3600)


if __name__ == "__main__":
    args = sys.argv[1:]
    use_webrtc = "--webrtc" in args
    args = [a for a in args if a != "--webrtc"]
    addr = args[0]
    name = args[1] if len(args) > 1 else "motor1"
    pwr = float(args[2]) if len(args) > 2 else 0.5
    asyncio.run(main(addr, name, pwr, use_webrtc))
