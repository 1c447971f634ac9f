#!/usr/bin/env node
// Timing helper of `tether-bench` (row 3): how fast Chromium opens a data channel to itself.
//
//   node bench/dc_open.mjs [COUNT] [WARMUP]
//
// Launches Debian's Chromium headless (the flags of lib/browser.mjs, never a downloaded browser)
// and, in one page, connects two RTCPeerConnections COUNT + WARMUP times: a negotiated, ordered
// channel `data` (id 0, as tether's), offer/answer and trickled candidates handed over in-page (no
// signaling server), host candidates as raw IPs (mDNS hiding off, like tether's stack). Each run
// records, in ms since the first peer was created: `signaling` (both descriptions applied), `ice`
// (the offerer's ICE connected), `dtls` (its connectionState connected), `open` (its channel open)
// and `first` (a message echoed back by the other side). Run it where Chromium can gather
// candidates (a default route; `tether-bench` runs it in its network namespace).
//
// Prints one JSON line: {"runs": [{signaling, ice, dtls, open, first}, ...]} (warm-up runs dropped).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { chromium } from 'playwright-core';

import { CHROMIUM, CHROMIUM_FLAGS } from '../lib/browser.mjs';

const count = Number(process.argv[2] ?? 20);
const warmup = Number(process.argv[3] ?? 3);

const userDataDir = mkdtempSync(path.join(tmpdir(), 'tether-bench-chromium-'));
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  ignoreDefaultArgs: true,
  args: [
    ...CHROMIUM_FLAGS,
    '--disable-features=WebRtcHideLocalIpsWithMdns',
    `--user-data-dir=${userDataDir}`,
    '--remote-debugging-pipe',
  ],
  timeout: 30_000,
});
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto('about:blank');
  const runs = await page.evaluate(
    async ({ count, warmup }) => {
      const once = async () => {
        const t0 = performance.now();
        const at = {};
        const mark = (k) => {
          if (at[k] === undefined) at[k] = performance.now() - t0;
        };
        const pc1 = new RTCPeerConnection();
        const pc2 = new RTCPeerConnection();
        // Candidates wait until their receiver has the remote description.
        const queue = new Map([
          [pc1, []],
          [pc2, []],
        ]);
        const ready = new Set();
        const relay = (from, to) => {
          from.onicecandidate = (e) => {
            if (!e.candidate) return;
            if (ready.has(to)) to.addIceCandidate(e.candidate).catch(() => {});
            else queue.get(to).push(e.candidate);
          };
        };
        const remoteSet = (pc) => {
          ready.add(pc);
          for (const c of queue.get(pc)) pc.addIceCandidate(c).catch(() => {});
        };
        relay(pc1, pc2);
        relay(pc2, pc1);
        pc1.oniceconnectionstatechange = () => {
          if (pc1.iceConnectionState === 'connected' || pc1.iceConnectionState === 'completed') mark('ice');
        };
        pc1.onconnectionstatechange = () => {
          if (pc1.connectionState === 'connected') mark('dtls');
        };
        const dc1 = pc1.createDataChannel('data', { negotiated: true, id: 0, ordered: true });
        const dc2 = pc2.createDataChannel('data', { negotiated: true, id: 0, ordered: true });
        const open1 = new Promise((resolve) => (dc1.onopen = resolve));
        dc2.onmessage = (e) => dc2.send(e.data);
        await pc1.setLocalDescription(await pc1.createOffer());
        await pc2.setRemoteDescription(pc1.localDescription);
        remoteSet(pc2);
        await pc2.setLocalDescription(await pc2.createAnswer());
        await pc1.setRemoteDescription(pc2.localDescription);
        remoteSet(pc1);
        mark('signaling');
        await open1;
        mark('open');
        const echoed = new Promise((resolve) => (dc1.onmessage = resolve));
        // The answerer's side may open a moment later; send once it is.
        if (dc2.readyState !== 'open') await new Promise((resolve) => (dc2.onopen = resolve));
        dc1.send('ping');
        await echoed;
        mark('first');
        // `mark` keeps the first time of each phase. A state event that never
        // fired (or came late) is filled in here with the `first` time, so the
        // phases still add up; such a dial shows as ice == dtls == first.
        mark('ice');
        mark('dtls');
        pc1.close();
        pc2.close();
        return at;
      };
      const out = [];
      for (let i = 0; i < warmup + count; i++) {
        const at = await once();
        if (i >= warmup) out.push(at);
      }
      return out;
    },
    { count, warmup },
  );
  console.log(JSON.stringify({ runs }));
} finally {
  await browser.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
