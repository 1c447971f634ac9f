// The real @viamrobotics/sdk (pinned in package.json) against tether machines, over gRPC-Web
// (HTTP/1.1 fetch in Node 20), direct dial, no WebRTC.
//
// Facts about the SDK these tests rely on (see /work/shared/spec/interop-notes.md):
// - a direct dial only accepts a host containing "local", so we dial http://localhost:PORT;
// - createRobotClient() rejects every direct connection in 0.61.1, so we use new RobotClient().dial();
// - its GetOperations liveness loop keeps a timer alive after disconnect(), which is why
//   `npm test` runs node --test with --test-force-exit.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MotorClient, RobotClient, SensorClient } from '@viamrobotics/sdk';

import { motorConfig, startMachine } from '../lib/machine.mjs';

const FAKE_COMPONENTS = [
  ['motor', 'motor1'],
  ['arm', 'arm1'],
  ['base', 'base1'],
  ['gripper', 'gripper1'],
  ['servo', 'servo1'],
  ['gantry', 'gantry1'],
  ['button', 'button1'],
  ['switch', 'switch1'],
  ['sensor', 'sensor1'],
  ['camera', 'camera1'],
];

/** Starts a machine and connects the SDK to it; both are torn down after the test. */
async function setup(t, config) {
  const machine = await startMachine(config);
  t.after(() => machine.stop());
  const robot = new RobotClient();
  const t0 = performance.now();
  try {
    await robot.dial({ host: `http://localhost:${machine.port}`, noReconnect: true });
  } catch (err) {
    t.diagnostic(`machine log:\n${machine.log()}`);
    throw err;
  }
  const connectMs = performance.now() - t0;
  t.after(() => robot.disconnect());
  return { machine, robot, connectMs };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test('dials http://localhost over gRPC-Web and lists the fake machine resources', async (t) => {
  const { robot, connectMs } = await setup(t);
  t.diagnostic(`connect took ${connectMs.toFixed(1)} ms`);
  const names = await robot.resourceNames();
  const got = new Set(
    names.filter((n) => n.namespace === 'rdk' && n.type === 'component').map((n) => `${n.subtype}/${n.name}`),
  );
  const missing = FAKE_COMPONENTS.map(([s, n]) => `${s}/${n}`).filter((k) => !got.has(k));
  assert.deepEqual(missing, [], `machine listed ${[...got].join(', ')}`);
});

test('motor setPower / isPowered / stop', async (t) => {
  const { robot } = await setup(t);
  const motor = new MotorClient(robot, 'motor1');
  assert.deepEqual([...(await motor.isPowered())], [false, 0]);

  await motor.setPower(0.5);
  const [on, pct] = await motor.isPowered();
  assert.equal(on, true);
  assert.ok(Math.abs(pct - 0.5) < 1e-9, `power ${pct}`);

  await motor.setPower(-0.25);
  const [on2, pct2] = await motor.isPowered();
  assert.equal(on2, true);
  assert.ok(Math.abs(pct2 + 0.25) < 1e-9, `power ${pct2}`);

  await motor.stop();
  assert.deepEqual([...(await motor.isPowered())], [false, 0]);
  assert.equal(await motor.isMoving(), false);
});

test('a call on a missing resource rejects with the machine status', async (t) => {
  const { robot } = await setup(t);
  const ghost = new MotorClient(robot, 'no-such-motor');
  await assert.rejects(ghost.isPowered(), (err) => {
    assert.match(String(err.message), /no-such-motor/);
    return true;
  });
});

test('sensor getReadings', async (t) => {
  const { robot } = await setup(t);
  const sensor = new SensorClient(robot, 'sensor1');
  const readings = await sensor.getReadings();
  assert.equal(typeof readings, 'object');
  assert.ok(readings !== null);
  const keys = Object.keys(readings);
  assert.ok(keys.length > 0, 'sensor1 returned no readings');
  for (const k of keys) {
    assert.notEqual(readings[k], undefined, `reading ${k}`);
  }
});

test('sessionless client (SDK 0.61.1 starts no session): its motor is not stopped', async (t) => {
  const { robot } = await setup(t, motorConfig('300ms'));
  const motor = new MotorClient(robot, 'motor1');
  await motor.setPower(0.4);
  await sleep(1000); // more than three heartbeat windows
  const [on, pct] = await motor.isPowered();
  assert.equal(on, true, 'motor of a sessionless client was stopped');
  assert.ok(Math.abs(pct - 0.4) < 1e-9, `power ${pct}`);
  assert.deepEqual(await robot.getSessions(), []);
  await motor.stop();
});

test('CORS preflight echoes the Origin and allows credentials', async (t) => {
  const machine = await startMachine();
  t.after(() => machine.stop());
  const origin = 'http://app.localhost:5173';
  const res = await fetch(`http://localhost:${machine.port}/viam.robot.v1.RobotService/ResourceNames`, {
    method: 'OPTIONS',
    headers: {
      Origin: origin,
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'content-type,x-grpc-web,x-user-agent,viam-sid',
    },
  });
  assert.ok(res.status === 200 || res.status === 204, `preflight status ${res.status}`);
  assert.equal(res.headers.get('access-control-allow-origin'), origin);
  assert.equal(res.headers.get('access-control-allow-credentials'), 'true');
  const methods = (res.headers.get('access-control-allow-methods') ?? '').toUpperCase();
  assert.match(methods, /POST/);
  const allowed = (res.headers.get('access-control-allow-headers') ?? '').toLowerCase();
  for (const h of ['content-type', 'x-grpc-web', 'x-user-agent', 'viam-sid']) {
    assert.ok(allowed === '*' || allowed.split(/\s*,\s*/).includes(h), `allow-headers "${allowed}" lacks ${h}`);
  }
});

test('gRPC-Web response to a cross-origin call: origin echoed, grpc-status exposed, trailer OK', async (t) => {
  const machine = await startMachine();
  t.after(() => machine.stop());
  const origin = 'http://app.localhost:5173';
  // IsPoweredRequest{name: "motor1"}: field 1, length-delimited.
  const msg = Buffer.concat([Buffer.from([0x0a, 6]), Buffer.from('motor1')]);
  const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, msg.length]), msg]);
  const res = await fetch(`http://localhost:${machine.port}/viam.component.motor.v1.MotorService/IsPowered`, {
    method: 'POST',
    headers: {
      Origin: origin,
      'content-type': 'application/grpc-web+proto',
      'x-grpc-web': '1',
    },
    body: frame,
  });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^application\/grpc-web/);
  assert.equal(res.headers.get('access-control-allow-origin'), origin);
  assert.equal(res.headers.get('access-control-allow-credentials'), 'true');
  const exposed = (res.headers.get('access-control-expose-headers') ?? '').toLowerCase().split(/\s*,\s*/);
  assert.ok(exposed.includes('grpc-status') && exposed.includes('grpc-message'), `expose-headers ${exposed}`);

  // Body: a data frame (flag 0x00) with IsPoweredResponse, then a trailer frame (flag 0x80).
  const body = Buffer.from(await res.arrayBuffer());
  const frames = [];
  for (let off = 0; off < body.length; ) {
    const len = body.readUInt32BE(off + 1);
    frames.push({ flag: body[off], data: body.subarray(off + 5, off + 5 + len) });
    off += 5 + len;
  }
  assert.equal(frames.length, 2, `frames ${JSON.stringify(frames.map((f) => f.flag))}`);
  assert.equal(frames[0].flag, 0x00);
  assert.equal(frames[1].flag, 0x80);
  assert.match(frames[1].data.toString('latin1'), /grpc-status:\s*0/i);
});
