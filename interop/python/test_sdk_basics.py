"""The real Viam Python SDK against the built-in fake machine over direct, insecure gRPC (h2c)."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from PIL import Image
from viam.components.camera import Camera
from viam.components.motor import Motor
from viam.components.sensor import Sensor
from viam.media.video import CameraMimeType

from tether_harness import connect

# (subtype, name) of every component of the built-in fake machine.
FAKE_COMPONENTS = {
    ("motor", "motor1"),
    ("arm", "arm1"),
    ("base", "base1"),
    ("gripper", "gripper1"),
    ("servo", "servo1"),
    ("gantry", "gantry1"),
    ("button", "button1"),
    ("switch", "switch1"),
    ("sensor", "sensor1"),
    ("camera", "camera1"),
}

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_connect_list_resources_close(fake_machine, timing):
    async def run():
        t0 = time.monotonic()
        robot = await connect(fake_machine.address)
        timing("connect", time.monotonic() - t0)
        try:
            names = robot.resource_names
            got = {(n.subtype, n.name) for n in names if n.namespace == "rdk" and n.type == "component"}
            missing = FAKE_COMPONENTS - got
            assert not missing, f"missing components {sorted(missing)}; machine listed {[str(n) for n in names]}"
            # A fresh ResourceNames call (not the list cached at connect) says the same.
            await robot.refresh()
            assert {(n.subtype, n.name) for n in robot.resource_names} >= FAKE_COMPONENTS
        finally:
            t0 = time.monotonic()
            await robot.close()
            timing("close", time.monotonic() - t0)

    asyncio.run(run())


def test_motor_set_power_is_powered_stop(fake_machine):
    async def run():
        robot = await connect(fake_machine.address)
        try:
            motor = Motor.from_robot(robot, "motor1")
            assert await motor.is_powered() == (False, 0.0)

            await motor.set_power(0.5)
            powered, pct = await motor.is_powered()
            assert powered is True
            assert pct == pytest.approx(0.5)

            await motor.set_power(-0.25)
            powered, pct = await motor.is_powered()
            assert powered is True
            assert pct == pytest.approx(-0.25)

            await motor.stop()
            assert await motor.is_powered() == (False, 0.0)
            assert await motor.is_moving() is False
        finally:
            await robot.close()

    asyncio.run(run())


def test_sensor_get_readings(fake_machine):
    async def run():
        robot = await connect(fake_machine.address)
        try:
            sensor = Sensor.from_robot(robot, "sensor1")
            readings = await sensor.get_readings()
            assert isinstance(readings, dict)
            assert readings, "sensor1 returned no readings"
            for key, value in readings.items():
                assert isinstance(key, str) and key
                assert value is not None
        finally:
            await robot.close()

    asyncio.run(run())


def test_camera_get_images(fake_machine):
    async def run():
        robot = await connect(fake_machine.address)
        try:
            camera = Camera.from_robot(robot, "camera1")
            images, _metadata = await camera.get_images()
            assert len(images) >= 1, "camera1 returned no images"
            for img in images:
                data = img.data
                assert isinstance(data, bytes) and len(data) > 0
                if img.mime_type == CameraMimeType.JPEG:
                    assert data.startswith(JPEG_MAGIC), f"{img.name}: image/jpeg without JPEG magic: {data[:8]!r}"
                    expected_format = "JPEG"
                elif img.mime_type == CameraMimeType.PNG:
                    assert data.startswith(PNG_MAGIC), f"{img.name}: image/png without PNG magic: {data[:8]!r}"
                    expected_format = "PNG"
                else:
                    pytest.fail(f"{img.name}: unexpected mime type {img.mime_type!r}")
                decoded = Image.open(io.BytesIO(data))
                decoded.load()  # decodes every pixel: a truncated/corrupt image raises here
                assert decoded.format == expected_format
                width, height = decoded.size
                assert width > 0 and height > 0

            # Asking for one named source returns just that one.
            first = images[0].name
            if first:
                only, _ = await camera.get_images(filter_source_names=[first])
                assert [i.name for i in only] == [first]
        finally:
            await robot.close()

    asyncio.run(run())
