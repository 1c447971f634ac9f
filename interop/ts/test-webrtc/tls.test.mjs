// The real @viamrobotics/sdk (0.61.1) in a real browser (Debian's Chromium, headless, driven by
// playwright-core) dialing a tether machine that serves TLS (network.tls_cert_file/tls_key_file)
// over WebRTC, with the machine's own embedded signaler at https://<machine ip>:<port> as the
// signaling address — with an api-key auth handler and without auth.
//
// Run with `npm run test:webrtc` (scripts/run-in-netns.mjs: a private network namespace with
// 198.18.2.1 and a default route; see webrtc.test.mjs for why).
//
// Certificates: a throwaway CA and a server certificate for the namespace's IP (IP SAN) are made
// with openssl in a temporary directory. Chromium is told to accept exactly that certificate with
// --ignore-certificate-errors-spki-list=<base64 SHA-256 of its SubjectPublicKeyInfo> (it does not
// trust the throwaway CA); a no-cors fetch from the page to the machine's https port checks that
// before the SDK dials, so a refused certificate fails as such and not as a WebRTC failure.
//
// As in webrtc.test.mjs, the SDK's host name has no "local" in it, so it cannot fall back to a
// direct gRPC-Web connection: the tests assert a peer connection with ICE connected in the page
// and `webrtc peer connected` in the machine log.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';

import { bundledPageDir, launchPage, startStaticServer } from '../lib/browser.mjs';
import { makeCertificates } from '../lib/certs.mjs';
import { startMachine, waitForLog } from '../lib/machine.mjs';
import { NS_IP, report, sleep } from '../lib/netns.mjs';

const HOST = 'tether-webrtc-tls-test'; // no "local": no direct gRPC-Web fallback in the SDK
const MACHINE_LOG = 'debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info,tonic_web=info,webrtc_sctp=info';
const TEST_OPTS = { timeout: 60_000 };
const DIAL_TIMEOUT_MS = 10_000;
// Bounds the whole dial as seen from Node (the SDK's dialTimeout covers only part of it).
const DIAL_BOUND_MS = 25_000;
const RAW_IP_FLAGS = ['--disable-features=WebRtcHideLocalIpsWithMdns'];

/** Node's own TLS handshake with the machine, trusting only the throwaway CA (checks the IP SAN). */
function checkMachineTls(machine, caPem) {
  return new Promise((resolve, reject) => {
    const [host, port] = [machine.address.slice(0, machine.address.lastIndexOf(':')), machine.port];
    const sock = tlsConnect({ host, port, ca: caPem, ALPNProtocols: ['h2', 'http/1.1'] }, () => {
      const proto = sock.alpnProtocol;
      sock.end();
      resolve(proto);
    });
    sock.setTimeout(5000, () => sock.destroy(new Error('TLS handshake with the machine timed out')));
    sock.once('error', reject);
  });
}

function bounded(what, promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

let pageDir;
let staticServer;
let certDir;
let certs;

before(async () => {
  certDir = mkdtempSync(path.join(tmpdir(), 'tether-tls-'));
  certs = makeCertificates(certDir, NS_IP);
  pageDir = await bundledPageDir();
  staticServer = await startStaticServer(pageDir, NS_IP);
});

after(async () => {
  await staticServer?.close();
  if (pageDir) rmSync(pageDir, { recursive: true, force: true });
  if (certDir) rmSync(certDir, { recursive: true, force: true });
});

const COMPONENTS = [{ name: 'motor1', api: 'rdk:component:motor', model: 'rdk:builtin:fake' }];

/**
 * A TLS machine (auth: the config's `auth` section or none) and a Chromium page that accepts its
 * certificate; the SDK dials it over WebRTC through https://<machine>, with credentials if given.
 * Asserts the dial is WebRTC, then SetPower / IsPowered / Stop on motor1.
 */
async function dialAndDrive(t, { auth, credentials, callerRe }) {
  const config = {
    components: COMPONENTS,
    network: { ice_servers: [], tls_cert_file: certs.certFile, tls_key_file: certs.keyFile },
    ...(auth ? { auth } : {}),
  };
  const machine = await startMachine(config, { listen: `${NS_IP}:0`, hosts: [HOST], env: { TETHER_LOG: MACHINE_LOG } });
  t.after(() => machine.stop());
  const signalingAddress = `https://${machine.address}`;

  // The machine really serves our certificate, valid for its IP under the throwaway CA.
  const alpn = await checkMachineTls(machine, certs.caPem);

  const browser = await launchPage(staticServer.origin, [
    ...RAW_IP_FLAGS,
    `--ignore-certificate-errors-spki-list=${certs.spki}`,
  ]);
  t.after(() => browser.close());
  let failed = true;
  t.after(() => {
    if (failed) {
      console.error(`--- ${t.name}: page console ---\n${browser.consoleLines.join('\n')}`);
      console.error(`--- ${t.name}: machine log (tail) ---\n${machine.log().slice(-60_000)}`);
    }
  });
  const page = browser.page;

  // Chromium accepts the certificate: an opaque (no-cors) fetch over https resolves (the machine
  // answers 404, which the page console shows as "Failed to load resource"); a refused certificate
  // rejects with "Failed to fetch" (net::ERR_CERT_AUTHORITY_INVALID in the console).
  const reach = await page.evaluate(async (url) => {
    try {
      const r = await fetch(url, { mode: 'no-cors', cache: 'no-store' });
      return { ok: true, type: r.type };
    } catch (err) {
      return { ok: false, error: String(err) };
    }
  }, `${signalingAddress}/`);
  assert.ok(reach.ok, `Chromium cannot reach ${signalingAddress} over TLS (certificate not accepted?): ${reach.error}`);
  t.diagnostic(`machine TLS ok (Node ALPN ${alpn}); Chromium fetch over https: ${reach.type}`);

  const conf = {
    host: HOST,
    signalingAddress,
    iceServers: [],
    noReconnect: true,
    dialTimeout: DIAL_TIMEOUT_MS,
    ...(credentials ? { credentials } : {}),
  };
  let info;
  try {
    info = await bounded(
      `WebRTC dial via ${signalingAddress}`,
      page.evaluate((c) => window.tether.connect(c), conf),
      DIAL_BOUND_MS,
    );
  } catch (err) {
    // The SDK only says "Failed to connect via all methods"; its console says why WebRTC failed
    // (e.g. "[not_found] host appears to be offline" when the machine's answerers never got the
    // offer).
    const why = browser.consoleLines.find((l) => l.includes('Failed to connect via WebRTC'));
    err.message += `\n  SDK: ${why ? why.split('\n')[0] : '(no WebRTC error in the page console)'}`;
    throw err;
  }

  // WebRTC, not a fallback.
  assert.equal(info.hasPeerConnection, true, 'SDK has no peer connection');
  assert.equal(info.isConnected, true, `SDK not connected: ${JSON.stringify(info)}`);
  assert.equal(info.iceConnectionState, 'connected');
  const m = await waitForLog(machine, callerRe ?? /webrtc peer connected .*/);
  report(t, `WebRTC via ${signalingAddress} connected in ${info.connectMs.toFixed(0)} ms; machine: ${m[0].slice(0, 160)}`);

  await page.evaluate(() => window.tether.setPower('motor1', 0.5));
  const [on, pct] = await page.evaluate(() => window.tether.isPowered('motor1'));
  assert.equal(on, true);
  assert.ok(Math.abs(pct - 0.5) < 1e-9, `power ${pct}`);
  await page.evaluate(() => window.tether.stop('motor1'));
  assert.deepEqual(await page.evaluate(() => window.tether.isPowered('motor1')), [false, 0]);
  await page.evaluate(() => window.tether.disconnect());
  failed = false;
}

describe('WebRTC through the embedded signaler of a TLS machine (https://<ip>:<port>)', () => {
  test('TLS with API keys: a keyed WebRTC dial drives motor1', TEST_OPTS, async (t) => {
    const keyId = randomUUID();
    await dialAndDrive(t, {
      auth: { handlers: [{ type: 'api-key', config: { keys: [{ id: keyId, key: 'ts-tls-secret' }] } }] },
      credentials: { type: 'api-key', payload: 'ts-tls-secret', authEntity: keyId },
      callerRe: new RegExp(`webrtc peer connected .*caller="?${keyId}`),
    });
  });

  test('TLS without auth: an anonymous WebRTC dial drives motor1', TEST_OPTS, async (t) => {
    await dialAndDrive(t, {});
  });
});
