#!/usr/bin/env node
// Timing helper of `tether-bench` (row 11): a tether machine with a fake 640x480 camera at 30 fps,
// and the real @viamrobotics/sdk StreamClient in Debian's Chromium playing it for SECONDS. Every
// presented frame is drawn on a canvas and its frame code read back from the pixels (see
// browser/page.mjs): capture → presented latency, and frames delivered / frames captured.
//
//   node scripts/run-in-netns.mjs node bench/video.mjs [SECONDS]     (TETHER_BIN: the binary)
//
// Prints one JSON line: {"p50", "p99", "delivered", "presented", "frames", "decoded"} (the first
// second is warm-up and not counted).
import { rmSync } from 'node:fs';

import { bundledPageDir, launchPage, startStaticServer } from '../lib/browser.mjs';
import { startMachine } from '../lib/machine.mjs';
import { NS_IP, sleep } from '../lib/netns.mjs';

const seconds = Number(process.argv[2] ?? 20);
const HOST = 'tether-video-bench';
const CONFIG = {
  components: [
    { name: 'camera1', api: 'rdk:component:camera', model: 'rdk:builtin:fake', attributes: { width_px: 640, height_px: 480, frame_rate: 30 } },
  ],
  network: { ice_servers: [] },
};

const pageDir = await bundledPageDir();
const server = await startStaticServer(pageDir, NS_IP);
const machine = await startMachine(CONFIG, { listen: `${NS_IP}:0`, hosts: [HOST], env: { TETHER_LOG: 'warn' } });
const browser = await launchPage(server.origin, []);
try {
  const conf = { host: HOST, signalingAddress: `http://${machine.address}`, iceServers: [], noReconnect: true, dialTimeout: 10_000 };
  await browser.page.evaluate((c) => window.tether.connect(c), conf);
  await browser.page.evaluate(() => window.tether.startStream('camera1'));
  await sleep(1000);
  const warm = await browser.page.evaluate(() => window.tether.videoStats());
  await sleep(seconds * 1000);
  const s = await browser.page.evaluate(() => window.tether.videoStats());
  const skip = warm.codes.length;
  const codes = s.codes.slice(skip);
  const lat = s.latencies.slice(skip).sort((a, b) => a - b);
  const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))];
  const distinct = [...new Set(codes)];
  const span = distinct.length ? Math.max(...distinct) - Math.min(...distinct) + 1 : 0;
  // Delivered: frames Chromium decoded in the window over frames the camera captured in it (the
  // span of frame numbers read); `presented` counts only frames the compositor showed and read
  // back (a headless compositor skips some when two arrive within one refresh).
  const decoded = s.framesDecoded - warm.framesDecoded;
  console.log(
    JSON.stringify({
      p50: q(0.5),
      p99: q(0.99),
      delivered: span ? Math.min(1, decoded / span) : 0,
      presented: span ? distinct.length / span : 0,
      frames: codes.length,
      decoded,
    }),
  );
} finally {
  await browser.close();
  await machine.stop();
  await server.close();
  rmSync(pageDir, { recursive: true, force: true });
}
