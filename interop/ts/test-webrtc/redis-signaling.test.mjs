// The real @viamrobotics/sdk (0.61.1) in Chromium dialing a tether machine through two
// `tether signaling --redis` instances that share one real Redis (Debian's redis-server, started
// here on a free loopback port of the private namespace): the browser's signaling is instance B,
// the machine answers through instance A, so every exchange crosses instances through Redis.
// Then instance A is killed (SIGKILL) and the machine carries on through B; then Redis is
// restarted and a new dial succeeds once the instances have recovered by themselves.
//
// Run with `npm run test:webrtc` (scripts/run-in-netns.mjs: a fresh private network namespace,
// see webrtc.test.mjs for why).
//
// The machine is configured with both signaling URLs, but its URL for B goes through a TCP gate
// (a relay in this process) that refuses connections at first: while it is shut, the machine's
// only Answer streams are on A, so the first dial is cross-instance by construction (and Redis's
// presence key `tether:sig:online:<host>`, which names the instance holding the machine's Answer
// stream, says "sig-a"). The gate opens once A is dead: the machine re-registers through B (the
// presence key turns to "sig-b") and the next browser dial, again through B, succeeds.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { after, before, test } from 'node:test';

import { bundledPageDir, launchPage, startStaticServer } from '../lib/browser.mjs';
import { isPowered } from '../lib/grpcweb.mjs';
import { spawnTether, startMachine } from '../lib/machine.mjs';
import { NS_IP, report, sleep } from '../lib/netns.mjs';

const HOST = 'tether-redis-signaling-test'; // no "local": no direct gRPC-Web fallback in the SDK
const KEY_PREFIX = 'tether:sig:';
const LOG = 'debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info,tonic_web=info,webrtc_sctp=info';
const REDIS_SERVER = process.env.REDIS_SERVER ?? 'redis-server';
// A dial (or the machine's re-registration) after a fault must succeed within this long.
const RECOVERY_BOUND_MS = 25_000;
const PEER_CONNECTED = /webrtc peer connected/g;

async function freePort(host) {
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** One command to Redis over RESP; resolves to the reply (string, number or null), rejects on errors. */
function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.setTimeout(2000, () => socket.destroy(new Error(`redis ${args[0]}: timeout`)));
    let buf = Buffer.alloc(0);
    const done = (err, value) => {
      socket.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    socket.once('error', (err) => done(err));
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      const eol = buf.indexOf('\r\n');
      if (eol < 0) return;
      const head = buf.subarray(0, eol).toString();
      const rest = buf.subarray(eol + 2);
      switch (head[0]) {
        case '+':
          return done(null, head.slice(1));
        case '-':
          return done(new Error(`redis ${args[0]}: ${head.slice(1)}`));
        case ':':
          return done(null, Number(head.slice(1)));
        case '$': {
          const len = Number(head.slice(1));
          if (len < 0) return done(null, null);
          if (rest.length < len + 2) return; // wait for the rest
          return done(null, rest.subarray(0, len).toString());
        }
        default:
          return done(new Error(`redis ${args[0]}: unexpected reply ${head}`));
      }
    });
    socket.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join(''));
  });
}

/** Debian's redis-server on 127.0.0.1:port (no persistence); resolves once it answers PING. */
async function startRedis(port) {
  const child = spawn(
    REDIS_SERVER,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no',
      '--loglevel', 'warning', '--dir', tmpdir()],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.once('error', (err) => console.error(`cannot start ${REDIS_SERVER}: ${err.message} (install redis-server)`));
  const t0 = Date.now();
  for (;;) {
    try {
      if ((await redisCommand(port, 'PING')) === 'PONG') break;
    } catch {
      // not up yet
    }
    if (child.exitCode !== null || child.signalCode !== null || Date.now() - t0 > 10_000) {
      child.kill('SIGKILL');
      throw new Error(`redis-server did not come up on port ${port}`);
    }
    await sleep(50);
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}/`,
    async kill() {
      process.removeListener('exit', killOnExit);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

/** `tether signaling --redis URL --instance-id ID` on NS_IP; resolves to {id, address, log(), kill()}. */
async function startSignaling(redisUrl, id) {
  const args = ['signaling', '--listen', `${NS_IP}:0`, '--redis', redisUrl, '--instance-id', id];
  const { address, log, kill } = await spawnTether(args, { env: { TETHER_LOG: LOG }, label: `signaling ${id}` });
  return { id, address, log, kill };
}

/**
 * A TCP relay on NS_IP to `target` that drops every connection while shut. Resolves to
 * {address, open(), relayed (count of relayed connections), close()}.
 */
async function startGate(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  let isOpen = false;
  const gate = { relayed: 0, refused: 0 };
  const sockets = new Set();
  const server = net.createServer((inbound) => {
    if (!isOpen) {
      gate.refused++;
      inbound.destroy();
      return;
    }
    gate.relayed++;
    const outbound = net.connect(port, host);
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.once('close', () => sockets.delete(s));
      s.on('error', () => {
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, NS_IP, resolve);
  });
  gate.address = `${NS_IP}:${server.address().port}`;
  gate.open = () => {
    isOpen = true;
  };
  gate.close = () =>
    new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return gate;
}

/** The signaling instance Redis says holds the machine's Answer stream (null: offline). */
const onlineAt = (redis) => redisCommand(redis.port, 'GET', `${KEY_PREFIX}online:${HOST}`);

async function waitFor(what, fn, timeoutMs) {
  const t0 = Date.now();
  for (;;) {
    let last;
    try {
      if (await fn()) return Date.now() - t0;
    } catch (err) {
      last = err;
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (${last.message})` : ''}`);
    await sleep(100);
  }
}

/** Dials HOST through `signaling` from the page until it works; resolves to {info, ms, attempts, errors}. */
async function dialUntilConnected(page, signaling, timeoutMs) {
  const conf = {
    host: HOST,
    signalingAddress: `http://${signaling.address}`,
    iceServers: [],
    noReconnect: true,
    dialTimeout: 10_000,
  };
  const t0 = Date.now();
  const errors = [];
  for (let attempt = 1; ; attempt++) {
    try {
      const info = await page.evaluate((c) => window.tether.connect(c), conf);
      return { info, ms: Date.now() - t0, attempts: attempt, errors };
    } catch (err) {
      errors.push(err.message.split('\n')[0]);
      if (Date.now() - t0 > timeoutMs) {
        throw new Error(`no dial through ${signaling.id} within ${timeoutMs} ms: ${errors.join(' | ')}`);
      }
      await sleep(250);
    }
  }
}

function assertConnected(info) {
  assert.equal(info.hasPeerConnection, true, 'SDK has no peer connection');
  assert.equal(info.isConnected, true, `SDK not connected: ${JSON.stringify(info)}`);
  assert.equal(info.iceConnectionState, 'connected');
}

/** resourceNames, setPower, isPowered (in the page and from a separate gRPC-Web client), stop. */
async function calls(page, machine, power) {
  const names = await page.evaluate(() => window.tether.resourceNames());
  const got = names.filter((n) => n.namespace === 'rdk' && n.type === 'component').map((n) => `${n.subtype}/${n.name}`);
  assert.ok(got.includes('motor/motor1'), `resources ${got}`);
  await page.evaluate((p) => window.tether.setPower('motor1', p), power);
  const [on, pct] = await page.evaluate(() => window.tether.isPowered('motor1'));
  assert.equal(on, true);
  assert.ok(Math.abs(pct - power) < 1e-9, `power ${pct}`);
  assert.deepEqual(await isPowered(machine.address, 'motor1'), [true, power]);
  await page.evaluate(() => window.tether.stop('motor1'));
  assert.deepEqual(await page.evaluate(() => window.tether.isPowered('motor1')), [false, 0]);
}

const peersConnected = (machine) => [...machine.log().matchAll(PEER_CONNECTED)].length;

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

test('two Redis-backed signaling instances: browser on B, machine on A; A killed; Redis restarted', { timeout: 180_000 }, async (t) => {
  const redis = await startRedis(await freePort('127.0.0.1'));
  t.after(() => redis.kill());
  const a = await startSignaling(redis.url, 'sig-a');
  t.after(() => a.kill());
  const b = await startSignaling(redis.url, 'sig-b');
  t.after(() => b.kill());
  const gate = await startGate(b.address);
  t.after(() => gate.close());
  const config = {
    components: [{ name: 'motor1', api: 'rdk:component:motor', model: 'rdk:builtin:fake' }],
    network: {
      ice_servers: [],
      sessions: { heartbeat_window: '1s' },
      signaling: [`http://${a.address}`, `http://${gate.address}`],
    },
  };
  const machineStarted = Date.now();
  const machine = await startMachine(config, { listen: `${NS_IP}:0`, hosts: [HOST], env: { TETHER_LOG: LOG } });
  t.after(() => machine.stop());
  const browser = await launchPage(staticServer.origin);
  t.after(() => browser.close());
  let failed = true;
  t.after(() => {
    if (!failed) return;
    console.error(`--- page console ---\n${browser.consoleLines.join('\n')}`);
    console.error(`--- machine log (tail) ---\n${machine.log().slice(-40_000)}`);
    for (const s of [a, b]) console.error(`--- signaling ${s.id} log (tail) ---\n${s.log().slice(-20_000)}`);
  });
  const { page } = browser;

  // 1. The machine registers through A only (its way to B is shut).
  const registered = await waitFor('machine online through sig-a', async () => (await onlineAt(redis)) === 'sig-a', 15_000);
  report(t, `machine registered through sig-a ${registered} ms after it started listening`);

  // 2. The browser dials through B: the offer crosses to A through Redis.
  const first = await dialUntilConnected(page, b, 15_000);
  assertConnected(first.info);
  // The machine is configured with B too and keeps trying it; the gate refuses it.
  assert.ok(gate.refused >= 1, 'the machine tried sig-b and was refused');
  assert.equal(await onlineAt(redis), 'sig-a');
  await waitFor('webrtc peer connected in the machine log', async () => peersConnected(machine) >= 1, 5000);
  report(t, `browser via sig-b -> machine via sig-a: WebRTC connect ${first.info.connectMs.toFixed(0)} ms (${first.attempts} attempt(s))`);
  await calls(page, machine, 0.5);

  // 3. Kill A. The established peer connection does not need signaling and keeps working.
  const killedAt = Date.now();
  await a.kill('SIGKILL');
  report(t, `gate to sig-b refused ${gate.refused} connections of the machine in ${Date.now() - machineStarted} ms`);
  gate.open();
  await calls(page, machine, 0.3);
  await page.evaluate(() => window.tether.disconnect());
  // The machine re-registers through B (a dead A's presence is gone within its 5 s TTL).
  const moved = await waitFor('machine online through sig-b', async () => (await onlineAt(redis)) === 'sig-b', RECOVERY_BOUND_MS);
  report(t, `sig-a killed: machine online through sig-b after ${Date.now() - killedAt} ms (waited ${moved} ms)`);
  assert.ok(gate.relayed >= 1, 'the machine reached sig-b through the gate');
  const second = await dialUntilConnected(page, b, RECOVERY_BOUND_MS);
  assertConnected(second.info);
  await waitFor('second webrtc peer in the machine log', async () => peersConnected(machine) >= 2, 5000);
  report(
    t,
    `after the kill: browser dial via sig-b ${second.ms} ms, ${second.attempts} attempt(s)` +
      (second.errors.length ? `; errors before: ${second.errors.join(' | ')}` : ''),
  );
  await calls(page, machine, -0.4);
  await page.evaluate(() => window.tether.disconnect());

  // 4. Restart Redis (same port, empty): the instances reconnect and re-register the machine by
  // themselves; a new dial succeeds once they have.
  await redis.kill();
  const downAt = Date.now();
  const during = await page
    .evaluate(
      (c) => window.tether.connect(c).then(() => 'connected', (e) => `failed: ${String(e?.message ?? e).split('\n')[0]}`),
      { host: HOST, signalingAddress: `http://${b.address}`, iceServers: [], noReconnect: true, dialTimeout: 10_000 },
    );
  report(t, `dial while Redis is down: ${during} after ${Date.now() - downAt} ms`);
  assert.match(during, /^failed/, 'no dial can be matched while Redis is down');
  await page.evaluate(() => window.tether.disconnect()).catch(() => {});
  const restartedAt = Date.now();
  const restarted = await startRedis(redis.port);
  t.after(() => restarted.kill());
  await waitFor('machine online again after the Redis restart', async () => (await onlineAt(restarted)) === 'sig-b', RECOVERY_BOUND_MS);
  const back = Date.now() - restartedAt;
  const third = await dialUntilConnected(page, b, RECOVERY_BOUND_MS);
  assertConnected(third.info);
  await waitFor('third webrtc peer in the machine log', async () => peersConnected(machine) >= 3, 5000);
  report(
    t,
    `Redis down ${restartedAt - downAt} ms, restarted: machine online again ${back} ms after the restart; browser dial ${third.ms} ms, ${third.attempts} attempt(s)` +
      (third.errors.length ? `; errors before: ${third.errors.join(' | ')}` : ''),
  );
  await calls(page, machine, 0.7);
  await page.evaluate(() => window.tether.disconnect());
  failed = false;
});
