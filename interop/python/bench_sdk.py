"""Timing helper of `tether-bench` (rows 3 and 10): the real Viam Python SDK as a client of a tether machine.

usage: bench_sdk.py ADDRESS [--webrtc] [--connects N] [--warm-connects N] [--calls N] [--runs R] [--warmup W]

Connects `--warm-connects` + `--connects` times (RobotClient.at_address, then close(), which takes
about a second; only the last `--connects` dials are timed), then, with `--calls`, connects once more
and times `--runs` runs of `--calls` sequential motor1 is_powered calls after `--warmup` untimed ones.
Direct dials use no TLS and no WebRTC; with --webrtc the SDK dials WebRTC with the address as its
signaling server (it silently falls back to direct gRPC when WebRTC fails: the caller proves the
transport from the machine's log). Sessions and the background connection checks are off, so nothing
else runs during the timing.

A connect that takes longer than --timeout seconds (default 15) is abandoned and counted.
Prints one JSON line: {"connect_ms": [...], "runs": [[microseconds, ...], ...], "failed_connects": N,
"failed_ms": [...]} (how long each failed connect took); progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from viam.components.motor import Motor
from viam.robot.client import RobotClient

from tether_harness import direct_options, webrtc_options

# Like tether_harness.connect_observer: no session, no background connection checks.
OBSERVER = dict(disable_sessions=True, check_connection_interval=0, attempt_reconnect_interval=0)


def options(webrtc: bool) -> RobotClient.Options:
    return (webrtc_options if webrtc else direct_options)(**OBSERVER)


async def connect(a: argparse.Namespace) -> RobotClient:
    # A dial that hangs is reported instead of hanging the benchmark.
    return await asyncio.wait_for(RobotClient.at_address(a.address, options(a.webrtc)), timeout=a.timeout)


async def close(robot: RobotClient, i: int | str, timeout: float) -> None:
    try:
        await asyncio.wait_for(robot.close(), timeout=timeout)
    except asyncio.TimeoutError:
        print(f"close {i} did not finish within {timeout} s", file=sys.stderr, flush=True)


async def main(a: argparse.Namespace) -> None:
    out: dict[str, list] = {"connect_ms": [], "runs": [], "failed_connects": 0, "failed_ms": []}
    for i in range(a.warm_connects + a.connects):
        t0 = time.perf_counter()
        try:
            robot = await connect(a)
        except Exception as e:  # timeouts, refused or closed connections: all count as failed dials
            elapsed = (time.perf_counter() - t0) * 1e3
            print(f"connect {i} failed after {elapsed / 1e3:.1f} s: {e!r}", file=sys.stderr, flush=True)
            out["failed_connects"] += 1
            out["failed_ms"].append(elapsed)
            continue
        elapsed = (time.perf_counter() - t0) * 1e3
        print(f"connect {i}: {elapsed:.1f} ms", file=sys.stderr, flush=True)
        if i >= a.warm_connects:
            out["connect_ms"].append(elapsed)
        await close(robot, i, a.timeout)
    if a.calls > 0:
        robot = await connect(a)
        try:
            motor = Motor.from_robot(robot, "motor1")
            for _ in range(a.warmup):
                await motor.is_powered()
            for _ in range(a.runs):
                samples = []
                for _ in range(a.calls):
                    t0 = time.perf_counter()
                    await motor.is_powered()
                    samples.append((time.perf_counter() - t0) * 1e6)
                out["runs"].append(samples)
        finally:
            await close(robot, "calls", a.timeout)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("address")
    p.add_argument("--webrtc", action="store_true")
    p.add_argument("--connects", type=int, default=0)
    p.add_argument("--warm-connects", type=int, default=0)
    p.add_argument("--calls", type=int, default=0)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--timeout", type=float, default=15.0)
    asyncio.run(main(p.parse_args()))
