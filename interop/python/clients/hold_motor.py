"""A Viam Python SDK client that powers a motor and then holds its session open forever.

usage: hold_motor.py ADDRESS [MOTOR] [POWER]

Connects directly (no WebRTC, no TLS), calls set_power, which makes the SDK start a session
and heartbeat it from a background thread, prints `READY session=<id> ...` and sleeps until
it is killed. The interop tests SIGKILL it to simulate a client that vanishes.
"""

import asyncio
import sys

from viam.components.motor import Motor
from viam.robot.client import RobotClient
from viam.rpc.dial import DialOptions


async def main(address: str, motor_name: str, power: float) -> None:
    robot = await RobotClient.at_address(
        address, RobotClient.Options(dial_options=DialOptions(disable_webrtc=True, insecure=True))
    )
    motor = Motor.from_robot(robot, motor_name)
    await motor.set_power(power)
    powered, pct = await motor.is_powered()
    # The session id and the heartbeat window the machine returned from StartSession are internal
    # to the SDK; printed so the test can check them.
    sessions = robot._sessions_client
    window = sessions._heartbeat_interval.total_seconds() if sessions._heartbeat_interval else None
    print(f"READY session={sessions._current_id} powered={powered} power={pct} window={window}", flush=True)
    while True:
        await asyncio.sleep(3600)


if __name__ == "__main__":
    addr = sys.argv[1]
    name = sys.argv[2] if len(sys.argv) > 2 else "motor1"
    pwr = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5
    asyncio.run(main(addr, name, pwr))
