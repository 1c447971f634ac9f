// Camera video through the real @viamrobotics/sdk (0.61.1) StreamClient in Debian's Chromium:
// AddStream over the WebRTC connection, the machine renegotiates a VP8 track over the
// `negotiation` data channel, a <video> element plays it, and the page reads the fake camera's
// frame code (frame number, capture time) back from the decoded pixels.
//
// Runs inside the private network namespace of `npm run test:webrtc` (see webrtc.test.mjs).
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, test } from 'node:test';

import { bundledPageDir, launchPage, startStaticServer } from '../lib/browser.mjs';
import { startMachine, waitForLog } from '../lib/machine.mjs';
import { NS_IP, report, sleep } from '../lib/netns.mjs';

const HOST = 'tether-stream-test';
const CONFIG = {
  components: [
    { name: 'camera1', api: 'rdk:component:camera', model: 'rdk:builtin:fake', attributes: { width_px: 640, height_px: 480, frame_rate: 30 } },
    { name: 'motor1', api: 'rdk:component:motor', model: 'rdk:builtin:fake' },
  ],
  network: { ice_servers: [] },
};
const MACHINE_LOG = 'info,tether_machine::video=debug';
const TEST_OPTS = { timeout: 90_000 };

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

async function setup(t) {
  const machine = await startMachine(CONFIG, { listen: `${NS_IP}:0`, hosts: [HOST], env: { TETHER_LOG: MACHINE_LOG } });
  t.after(() => machine.stop());
  const browser = await launchPage(staticServer.origin, []);
  t.after(() => browser.close());
  let failed = true;
  t.after(() => {
    if (failed) {
      console.error(`--- ${t.name}: page console ---\n${browser.consoleLines.join('\n')}`);
      console.error(`--- ${t.name}: machine log (tail) ---\n${machine.log().slice(-30_000)}`);
    }
  });
  const conf = { host: HOST, signalingAddress: `http://${machine.address}`, iceServers: [], noReconnect: true, dialTimeout: 10_000 };
  const info = await browser.page.evaluate((c) => window.tether.connect(c), conf);
  assert.equal(info.iceConnectionState, 'connected', `not connected over WebRTC: ${JSON.stringify(info)}`);
  return { machine, browser, page: browser.page, ok: () => (failed = false) };
}

function percentile(values, p) {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

/** Waits until the page has presented `n` more frames than `from`; returns the stats. */
async function waitFrames(page, from, n, timeoutMs = 15_000) {
  const t0 = Date.now();
  for (;;) {
    const s = await page.evaluate(() => window.tether.videoStats());
    if (s.presented >= from + n) return s;
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(`only ${s.presented - from} of ${n} frames presented in ${timeoutMs} ms: ${JSON.stringify({ ...s, codes: s.codes.slice(-5), latencies: [] })}`);
    }
    await sleep(100);
  }
}

function assertIncreasing(codes, what) {
  assert.ok(codes.length >= 10, `${what}: only ${codes.length} frame codes read`);
  for (let i = 1; i < codes.length; i++) {
    assert.ok(codes[i] > codes[i - 1], `${what}: frame number ${codes[i]} after ${codes[i - 1]} (codes ${codes.slice(Math.max(0, i - 5), i + 5)})`);
  }
}

test('StreamClient plays camera1: frames decode, frame numbers read from pixels increase; remove and add again', TEST_OPTS, async (t) => {
  const { machine, page, ok } = await setup(t);
  assert.deepEqual(await page.evaluate(() => window.tether.listStreams()), ['camera1']);

  const got = await page.evaluate(() => window.tether.startStream('camera1'));
  assert.equal(got.id, 'camera1');
  assert.equal(got.tracks, 1);
  const s1 = await waitFrames(page, 0, 60);
  assert.equal(s1.width, 640);
  assert.equal(s1.height, 480);
  assert.ok(s1.framesDecoded >= 60, `getStats framesDecoded ${s1.framesDecoded}`);
  const codes = s1.codes.slice(-50);
  assertIncreasing(codes, 'first stream');
  const lat = s1.latencies.slice(-50);
  report(t, `first stream: ${s1.presented} frames presented, ${s1.framesDecoded} decoded; capture→presented p50 ${percentile(lat, 50)} ms, p99 ${percentile(lat, 99)} ms`);
  assert.ok(percentile(lat, 50) < 2000, `capture-to-display p50 ${percentile(lat, 50)} ms`);
  await waitForLog(machine, /video encoder started/);

  // RemoveStream: the machine drops the track and, as the last viewer left, the encoder.
  await page.evaluate(() => window.tether.removeStream('camera1'));
  await waitForLog(machine, /video encoder stopped/, 5000);
  const before = (await page.evaluate(() => window.tether.videoStats())).presented;
  await sleep(1000);
  const still = (await page.evaluate(() => window.tether.videoStats())).presented;
  assert.ok(still - before <= 5, `frames kept coming after RemoveStream: ${still - before}`);

  // And again: a new track, a new encoder, frames flowing.
  const again = await page.evaluate(() => window.tether.startStream('camera1'));
  assert.equal(again.id, 'camera1');
  const s2 = await waitFrames(page, still, 30);
  const codes2 = s2.codes.slice(-25);
  assertIncreasing(codes2, 'second stream');
  assert.ok(codes2[0] > codes[codes.length - 1], 'the camera kept counting across the two streams');
  ok();
});

test('AddStream errors say what went wrong (non-camera, unknown name)', TEST_OPTS, async (t) => {
  const { page, ok } = await setup(t);
  const motor = await page.evaluate(() => window.tether.addStreamError('motor1'));
  assert.match(motor ?? '', /not a camera/);
  const unknown = await page.evaluate(() => window.tether.addStreamError('nope'));
  assert.match(unknown ?? '', /no camera named/);
  ok();
});

test('a viewer that closes its page: the machine drops its track and encoder', TEST_OPTS, async (t) => {
  const { machine, browser, page, ok } = await setup(t);
  await page.evaluate(() => window.tether.startStream('camera1'));
  await waitFrames(page, 0, 10);
  await browser.killTree();
  await waitForLog(machine, /video encoder stopped/, 15_000);
  ok();
});
