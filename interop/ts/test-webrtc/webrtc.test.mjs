// The real @viamrobotics/sdk (0.61.1) in a real browser (Debian's Chromium, headless, driven by
// playwright-core) dialing a tether machine over WebRTC.
//
// Run with `npm run test:webrtc`: scripts/run-in-netns.mjs runs this file inside a fresh private
// network namespace (198.18.2.1, a default route, nothing reaches outside) where the machine, the
// static server for the page and Chromium all live — Chromium gathers no ICE candidates without a
// default route, and the machine is configured with no ICE servers.
//
// The page dials with createRobotClient({host, signalingAddress, iceServers: []}): signaling is
// gRPC-Web from the page's origin (another port) with credentials: 'include', so the machine's
// CORS answers must echo the origin. The host name has no "local" in it, so the SDK cannot fall
// back to a direct gRPC-Web connection: a successful dial is a WebRTC one, and the tests assert it
// (ICE connected in the page, `webrtc peer connected` in the machine log).
//
// The SDK never starts a session, so only connection-scoped safety can stop a motor when the
// browser vanishes: a sessionless monitored call over WebRTC makes the peer connection the
// motor's last caller, and the machine stops the motor when that connection goes away (ICE
// disconnects a few seconds after a SIGKILL or a bare page.close(); RTCPeerConnection.close()
// tears the connection down at once).
//
// Everything runs twice: Chromium's default (host candidates hidden behind <uuid>.local mDNS
// names) and with --disable-features=WebRtcHideLocalIpsWithMdns (raw IP host candidates).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';

import { bundledPageDir, launchPage, startStaticServer } from '../lib/browser.mjs';
import { isPowered } from '../lib/grpcweb.mjs';
import { startMachine, waitForLog } from '../lib/machine.mjs';
import { NS_IP, report, sleep } from '../lib/netns.mjs';

const HOST = 'tether-webrtc-test'; // no "local": no direct gRPC-Web fallback in the SDK
const MACHINE_LOG = 'debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info,tonic_web=info,webrtc_sctp=info';
const CONFIG = {
  components: [
    { name: 'motor1', api: 'rdk:component:motor', model: 'rdk:builtin:fake' },
    { name: 'sensor1', api: 'rdk:component:sensor', model: 'rdk:builtin:fake' },
  ],
  network: { ice_servers: [], sessions: { heartbeat_window: '1s' } },
};
// Generous bounds for the stop after the browser is gone (measured values are printed).
const KILL_STOP_BOUND_MS = 10_000;
const CLEAN_CLOSE_STOP_BOUND_MS = 1_500;
const POLL_MS = 20;
const TEST_OPTS = { timeout: 60_000 };
const PEER_CONNECTED = /webrtc peer connected remote=Some\((\S+?)\) pair=(.*)/;

const MODES = [
  { name: 'default Chromium (mDNS host candidates)', tag: 'mdns', flags: [], mdns: true },
  {
    name: '--disable-features=WebRtcHideLocalIpsWithMdns (raw IP host candidates)',
    tag: 'raw-ip',
    flags: ['--disable-features=WebRtcHideLocalIpsWithMdns'],
    mdns: false,
  },
];

let pageDir;
let staticServer;

before(async () => {
  pageDir = await bundledPageDir();
  staticServer = await startStaticServer(pageDir, NS_IP);
});

after(async () => {
  await staticServer?.close();
  if (pageDir) rmSync(pageDir, { recursive: true, force: true });
});

/** Machine + Chromium page, WebRTC-connected; everything is torn down after the test. */
async function setup(t, mode) {
  const machine = await startMachine(CONFIG, { listen: `${NS_IP}:0`, hosts: [HOST], env: { TETHER_LOG: MACHINE_LOG } });
  t.after(() => machine.stop());
  const browser = await launchPage(staticServer.origin, mode.flags);
  t.after(() => browser.close());
  let failed = true;
  t.after(() => {
    if (failed) {
      console.error(`--- ${t.name}: page console ---\n${browser.consoleLines.join('\n')}`);
      console.error(`--- ${t.name}: machine log (tail) ---\n${machine.log().slice(-60_000)}`);
    }
  });
  const conf = {
    host: HOST,
    signalingAddress: `http://${machine.address}`,
    iceServers: [],
    noReconnect: true,
    dialTimeout: 10_000,
  };
  const info = await browser.page.evaluate((c) => window.tether.connect(c), conf);
  const ok = () => {
    failed = false;
  };
  return { machine, browser, page: browser.page, info, ok };
}

/** Asserts the dial really is WebRTC and that the host candidates match the mode. */
async function assertWebRTC(t, machine, info, mode) {
  assert.equal(info.hasPeerConnection, true, 'SDK has no peer connection');
  assert.equal(info.isConnected, true, `SDK not connected: ${JSON.stringify(info)}`);
  assert.equal(info.iceConnectionState, 'connected');
  const m = await waitForLog(machine, PEER_CONNECTED);
  const hostCands = info.localCandidates.filter((c) => / typ host/.test(c));
  const mdnsCands = hostCands.filter((c) => /\s[0-9a-f-]{36}\.local\s/.test(c));
  report(
    t,
    `[${mode.tag}] WebRTC connect ${info.connectMs.toFixed(0)} ms; page pair ${JSON.stringify(info.selectedPair)}; ` +
      `machine: remote=${m[1]} pair=${m[2]}; ${hostCands.length} host candidates, ${mdnsCands.length} mDNS`,
  );
  assert.ok(hostCands.length > 0, `Chromium gathered no host candidates: ${JSON.stringify(info.localCandidates)}`);
  if (mode.mdns) {
    assert.equal(mdnsCands.length, hostCands.length, `expected only mDNS host candidates: ${hostCands}`);
  } else {
    assert.equal(mdnsCands.length, 0, `expected raw IP host candidates: ${hostCands}`);
  }
}

async function waitStopped(machine, t0, boundMs) {
  for (;;) {
    let on;
    try {
      [on] = await isPowered(machine.address, 'motor1');
    } catch (err) {
      on = undefined; // a slow answer must not end the wait
    }
    const ms = performance.now() - t0;
    if (on === false) return ms;
    if (ms > boundMs) return ms;
    await sleep(POLL_MS);
  }
}

for (const mode of MODES) {
  describe(mode.name, () => {
    test('WebRTC dial, resourceNames, motor setPower/isPowered/stop, sensor getReadings', TEST_OPTS, async (t) => {
      const { machine, page, info, ok } = await setup(t, mode);
      await assertWebRTC(t, machine, info, mode);

      const names = await page.evaluate(() => window.tether.resourceNames());
      const got = names.filter((n) => n.namespace === 'rdk' && n.type === 'component').map((n) => `${n.subtype}/${n.name}`);
      assert.ok(got.includes('motor/motor1') && got.includes('sensor/sensor1'), `resources ${got}`);

      assert.deepEqual(await page.evaluate(() => window.tether.isPowered('motor1')), [false, 0]);
      await page.evaluate(() => window.tether.setPower('motor1', 0.5));
      const [on, pct] = await page.evaluate(() => window.tether.isPowered('motor1'));
      assert.equal(on, true);
      assert.ok(Math.abs(pct - 0.5) < 1e-9, `power ${pct}`);
      // Seen the same way by a separate gRPC-Web client.
      assert.deepEqual(await isPowered(machine.address, 'motor1'), [true, 0.5]);
      await page.evaluate(() => window.tether.setPower('motor1', -0.25));
      const [on2, pct2] = await page.evaluate(() => window.tether.isPowered('motor1'));
      assert.equal(on2, true);
      assert.ok(Math.abs(pct2 + 0.25) < 1e-9, `power ${pct2}`);
      await page.evaluate(() => window.tether.stop('motor1'));
      assert.deepEqual(await page.evaluate(() => window.tether.isPowered('motor1')), [false, 0]);
      assert.equal(await page.evaluate(() => window.tether.isMoving('motor1')), false);

      const readings = await page.evaluate(() => window.tether.getReadings('sensor1'));
      assert.equal(typeof readings, 'object');
      const keys = Object.keys(readings ?? {});
      assert.ok(keys.length > 0, 'sensor1 returned no readings');
      for (const k of keys) assert.notEqual(readings[k], undefined, `reading ${k}`);

      // 0.61.1 starts no session: the motor is guarded by the connection alone.
      assert.deepEqual(await page.evaluate(() => window.tether.getSessions()), []);
      await page.evaluate(() => window.tether.disconnect());
      ok();
    });

    test('SIGKILL of the browser process tree after setPower: the machine stops the motor', TEST_OPTS, async (t) => {
      const { machine, browser, page, info, ok } = await setup(t, mode);
      await assertWebRTC(t, machine, info, mode);
      await page.evaluate(() => window.tether.setPower('motor1', 0.5));
      assert.deepEqual(await isPowered(machine.address, 'motor1'), [true, 0.5]);
      // Still powered a while later: the live connection keeps it (no session to lapse).
      await sleep(1500);
      assert.deepEqual(await isPowered(machine.address, 'motor1'), [true, 0.5], 'motor stopped while the browser was alive');

      const t0 = performance.now();
      const killed = await browser.killTree();
      const ms = await waitStopped(machine, t0, KILL_STOP_BOUND_MS);
      report(t, `[${mode.tag}] motor stopped ${ms.toFixed(0)} ms after SIGKILL of ${killed.length} chromium processes`);
      assert.ok(ms <= KILL_STOP_BOUND_MS, `motor still powered ${ms.toFixed(0)} ms after the browser was killed`);
      assert.deepEqual(await isPowered(machine.address, 'motor1'), [false, 0]);
      ok();
    });

    test('clean close (robot.disconnect(), then page.close()) after setPower: the machine stops the motor at once', TEST_OPTS, async (t) => {
      const { machine, browser, page, info, ok } = await setup(t, mode);
      await assertWebRTC(t, machine, info, mode);
      await page.evaluate(() => window.tether.setPower('motor1', 0.5));
      assert.deepEqual(await isPowered(machine.address, 'motor1'), [true, 0.5]);

      const t0 = performance.now();
      await page.evaluate(() => window.tether.disconnect()); // RTCPeerConnection.close(): SCTP abort, DTLS close_notify
      await page.close();
      const ms = await waitStopped(machine, t0, CLEAN_CLOSE_STOP_BOUND_MS);
      report(t, `[${mode.tag}] motor stopped ${ms.toFixed(0)} ms after robot.disconnect() + page.close()`);
      assert.ok(ms <= CLEAN_CLOSE_STOP_BOUND_MS, `motor still powered ${ms.toFixed(0)} ms after a clean close`);
      await browser.close();
      ok();
    });

    test('page.close() without disconnect after setPower: the machine stops the motor', TEST_OPTS, async (t) => {
      // Headless Chromium sends nothing when a page with a live RTCPeerConnection closes (no SCTP
      // abort, no DTLS close_notify, as observed): like a kill, the machine learns it from ICE.
      const { machine, page, info, ok } = await setup(t, mode);
      await assertWebRTC(t, machine, info, mode);
      await page.evaluate(() => window.tether.setPower('motor1', 0.5));
      assert.deepEqual(await isPowered(machine.address, 'motor1'), [true, 0.5]);

      const t0 = performance.now();
      await page.close();
      const ms = await waitStopped(machine, t0, KILL_STOP_BOUND_MS);
      report(t, `[${mode.tag}] motor stopped ${ms.toFixed(0)} ms after page.close()`);
      assert.ok(ms <= KILL_STOP_BOUND_MS, `motor still powered ${ms.toFixed(0)} ms after the page was closed`);
      ok();
    });
  });
}

describe('API keys over WebRTC (identity vouched by the signaler)', () => {
  test('the machine refuses anonymous and wrong-key dials and learns the caller of a keyed one', TEST_OPTS, async (t) => {
    const keyId = randomUUID();
    const config = {
      ...CONFIG,
      auth: { handlers: [{ type: 'api-key', config: { keys: [{ id: keyId, key: 'ts-secret' }] } }] },
    };
    const machine = await startMachine(config, { listen: `${NS_IP}:0`, hosts: [HOST], env: { TETHER_LOG: MACHINE_LOG } });
    t.after(() => machine.stop());
    const browser = await launchPage(staticServer.origin, MODES[1].flags);
    t.after(() => browser.close());
    const base = {
      host: HOST,
      signalingAddress: `http://${machine.address}`,
      iceServers: [],
      noReconnect: true,
      dialTimeout: 10_000,
    };
    const dial = (conf) => browser.page.evaluate((c) => window.tether.connect(c), conf);

    // No credentials, then a wrong secret: the embedded signaler refuses both (the SDK reports
    // "Failed to connect via all methods").
    await assert.rejects(dial(base), /Failed to connect/);
    const wrong = { ...base, credentials: { type: 'api-key', payload: 'guess', authEntity: keyId } };
    await assert.rejects(dial(wrong), /Failed to connect/);
    assert.doesNotMatch(machine.log(), /webrtc peer connected/);

    // The right key: a WebRTC connection whose caller the machine knows, with no credentials on
    // the data channel.
    const right = { ...base, credentials: { type: 'api-key', payload: 'ts-secret', authEntity: keyId } };
    const info = await dial(right);
    assert.equal(info.iceConnectionState, 'connected');
    const m = await waitForLog(machine, new RegExp(`webrtc peer connected .*caller="?${keyId}`));
    report(t, `[api-key] WebRTC connect ${info.connectMs.toFixed(0)} ms; machine: ${m[0].slice(0, 160)}`);
    await browser.page.evaluate(() => window.tether.setPower('motor1', 0.5));
    const [on, pct] = await browser.page.evaluate(() => window.tether.isPowered('motor1'));
    assert.equal(on, true);
    assert.ok(Math.abs(pct - 0.5) < 1e-9, `power ${pct}`);
    await browser.page.evaluate(() => window.tether.disconnect());
  });
});

describe('priority and max_webrtc_connections', () => {
  test('the SDK priority reaches the machine; a full machine refuses lower and evicts for higher', TEST_OPTS, async (t) => {
    const config = { ...CONFIG, network: { ...CONFIG.network, max_webrtc_connections: 1 } };
    const machine = await startMachine(config, { listen: `${NS_IP}:0`, hosts: [HOST], env: { TETHER_LOG: MACHINE_LOG } });
    t.after(() => machine.stop());
    const browser = await launchPage(staticServer.origin, MODES[1].flags);
    t.after(() => browser.close());
    const base = {
      host: HOST,
      signalingAddress: `http://${machine.address}`,
      iceServers: [],
      noReconnect: true,
      dialTimeout: 10_000,
    };
    const dial = (conf) => browser.page.evaluate((c) => window.tether.connect(c), conf);

    // The SDK appends `a=x-priority:7` to its offer (additionalSdpFields); the machine reads it.
    const first = await dial({ ...base, priority: 7 });
    assert.equal(first.iceConnectionState, 'connected');
    await waitForLog(machine, /webrtc peer connected .*priority=7/);

    // The only slot is taken: a caller of lower priority is refused (RESOURCE_EXHAUSTED).
    await assert.rejects(dial({ ...base, priority: 3 }), /Failed to connect/);
    await waitForLog(machine, /answering failed: .*max_webrtc_connections/);

    // A higher priority gets in by closing the idle, sessionless priority-7 peer.
    const third = await dial({ ...base, priority: 9 });
    assert.equal(third.iceConnectionState, 'connected');
    await waitForLog(machine, /closing an idle, sessionless WebRTC connection/);
    await waitForLog(machine, /webrtc peer connected .*priority=9/);
    const names = await browser.page.evaluate(() => window.tether.resourceNames());
    assert.equal(names.length, 2);
    report(t, `[priority] 7 admitted, 3 refused at the limit of 1, 9 admitted by closing 7`);
    await browser.page.evaluate(() => window.tether.disconnect());
  });
});
