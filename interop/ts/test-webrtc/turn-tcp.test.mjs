// The real @viamrobotics/sdk in Chromium reaching a tether machine through a TURN relay that
// Chromium can reach over TCP only (issue 17: networks that let only TCP out).
//
// Inside the private namespace of scripts/run-in-netns.mjs: a coturn on 198.18.2.1 (TURN REST
// shared secret; relayed ports 20000-20999, below the ephemeral range), a machine whose embedded
// signaler mints TURN credentials for `turn:…?transport=udp` (and hands out its TCP copy), and
// nftables rules that drop every UDP datagram to coturn's port 3478 and every other UDP datagram
// that neither comes from nor goes to a relayed port. So Chromium's UDP TURN allocation, its
// host-to-host pairs and mDNS all fail. Chromium allocates over TCP from the URLs the signaler
// handed out (the page passes no ICE servers of its own), the machine over TCP from the same
// signaler's URLs; the pair ICE selects runs through one of those relays.
//
// One loophole of a single namespace stays open: UDP to a relayed port must pass (that is how
// coturn reaches each peer), so Chromium's host candidate can reach the machine's relayed address.
// If that pair succeeds before Chromium's relay phase starts (it runs one 50 ms allocator step
// after host gathering), Chromium stops gathering and never allocates a relay of its own: this
// test once failed that way in CI. On a network that lets only TCP out, no host pair works at all;
// the page stands for that by creating the SDK's peer connection with `iceTransportPolicy:
// 'relay'` (Chromium's ICE can then only succeed through its own TCP allocation).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { after, before, test } from 'node:test';

import { bundledPageDir, launchPage, startStaticServer } from '../lib/browser.mjs';
import { startMachine, waitForLog } from '../lib/machine.mjs';
import { NS_IP, report, sleep } from '../lib/netns.mjs';

const HOST = 'tether-turn-tcp-test'; // no "local": no direct gRPC-Web fallback in the SDK
const SECRET = 'ts-turn-secret';
const TURN_UDP = `turn:${NS_IP}:3478?transport=udp`;
const PEER_CONNECTED = /webrtc peer connected remote=Some\((\S+?)\) pair=(.*)/;
const TABLE = 'ttturntcp';

let pageDir;
let staticServer;
let coturn;
let coturnLog = '';

function nft(script) {
  const res = spawnSync('nft', ['-f', '-'], { input: script, encoding: 'utf8' });
  if (res.error) throw new Error(`cannot run nft: ${res.error.message} (nftables needed)`);
  if (res.status !== 0) throw new Error(`nft failed: ${res.stderr}`);
}

before(async () => {
  pageDir = await bundledPageDir();
  staticServer = await startStaticServer(pageDir, NS_IP);
  coturn = spawn(
    process.env.TURNSERVER_BIN ?? 'turnserver',
    [
      '-n', '-v', '--simple-log', '--log-file=stdout', '--no-cli', '--no-tls', '--no-dtls',
      `--listening-ip=${NS_IP}`, `--relay-ip=${NS_IP}`, '--listening-port=3478',
      '--min-port=20000', '--max-port=20999', '--realm=tether.test',
      '--use-auth-secret', `--static-auth-secret=${SECRET}`,
      `--pidfile=/tmp/${TABLE}-${process.pid}.pid`, `--db=/tmp/${TABLE}-${process.pid}.db`,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  coturn.stdout.on('data', (d) => {
    coturnLog += d;
  });
  coturn.stderr.on('data', (d) => {
    coturnLog += d;
  });
  for (let i = 0; !coturnLog.includes(`TCP listener opened on : ${NS_IP}:3478`) && i < 100; i++) await sleep(100);
  assert.match(coturnLog, /TCP listener opened on/, `coturn did not start:\n${coturnLog.slice(-3000)}`);
  nft(`table inet ${TABLE} {
    chain output {
      type filter hook output priority filter; policy accept;
      udp dport 3478 drop
      meta l4proto udp udp sport != 20000-20999 udp dport != 20000-20999 drop
    }
  }`);
});

after(async () => {
  spawnSync('nft', ['delete', 'table', 'inet', TABLE]);
  coturn?.kill('SIGKILL');
  await staticServer?.close();
  if (pageDir) rmSync(pageDir, { recursive: true, force: true });
  rmSync(`/tmp/${TABLE}-${process.pid}.db`, { force: true });
});

test('Chromium connects through a TURN-over-TCP relay from the URLs the signaler hands out', { timeout: 60_000 }, async (t) => {
  const config = {
    components: [{ name: 'motor1', api: 'rdk:component:motor', model: 'rdk:builtin:fake' }],
    network: { ice_servers: [], turn: { urls: [TURN_UDP], secret: SECRET } },
  };
  const machine = await startMachine(config, { listen: `${NS_IP}:0`, hosts: [HOST], env: { TETHER_LOG: 'info,tether_transport::webrtc::driver=debug' } });
  t.after(() => machine.stop());
  const browser = await launchPage(staticServer.origin, ['--disable-features=WebRtcHideLocalIpsWithMdns']);
  t.after(() => browser.close());
  let failed = true;
  t.after(() => {
    if (failed) {
      console.error(`--- page console ---\n${browser.consoleLines.join('\n')}`);
      console.error(`--- machine log (tail) ---\n${machine.log().slice(-20_000)}`);
      console.error(`--- coturn log (tail) ---\n${coturnLog.slice(-20_000)}`);
    }
  });
  const conf = {
    host: HOST,
    signalingAddress: `http://${machine.address}`,
    iceServers: [],
    noReconnect: true,
    dialTimeout: 20_000,
    iceTransportPolicy: 'relay',
  };
  const info = await browser.page.evaluate((c) => window.tether.connect(c), conf);
  assert.equal(info.isConnected, true, `SDK not connected: ${JSON.stringify(info)}`);
  assert.equal(info.iceTransportPolicy, 'relay', 'the page did not set the relay-only policy');
  const m = await waitForLog(machine, PEER_CONNECTED);
  const pair = info.selectedPair;
  report(
    t,
    `[turn-tcp] Chromium via TURN over TCP: connect ${info.connectMs.toFixed(0)} ms; page pair ${JSON.stringify(pair)}; machine: remote=${m[1]} pair=${m[2]}`,
  );
  // Chromium's relay candidates can only come from its TCP allocations (UDP to port 3478 is
  // dropped), and so can the machine's.
  const relayCands = info.localCandidates.filter((c) => / typ relay/.test(c));
  assert.ok(relayCands.length > 0, `Chromium has no relay candidate: ${JSON.stringify(info.localCandidates)}`);
  assert.equal(pair?.local?.type, 'relay', `Chromium's side of the pair is not relayed: ${JSON.stringify(pair)}`);
  assert.equal(pair.local.relayProtocol, 'tcp', `Chromium's relay is not reached over TCP: ${JSON.stringify(pair)}`);
  const allocations = [...machine.log().matchAll(/TURN allocation url=(\S+)/g)].map((a) => a[1]);
  assert.ok(allocations.length > 0, 'the machine allocated no relay');
  assert.ok(allocations.every((u) => u.endsWith('?transport=tcp')), `machine allocations: ${allocations}`);
  const [on] = await browser.page.evaluate(() => window.tether.isPowered('motor1'));
  assert.equal(on, false);
  await browser.page.evaluate(() => window.tether.disconnect());
  failed = false;
});
