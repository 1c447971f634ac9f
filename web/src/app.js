// The control page every tether machine serves at GET / (bundled by web/build.mjs into
// crates/machine/assets/). Its client library is the official Viam TypeScript SDK, so the page is
// one more real client of the protocol:
//
// - it dials like an app: WebRTC through the machine's embedded signaler (the page's own origin),
//   and gRPC-Web to the same origin when WebRTC cannot be had;
// - it starts a session right after connecting (the SDK's session manager, which 0.61.1 only
//   starts once it knows the monitored methods), so the machine stops what this tab drove when
//   the tab dies;
// - with API keys it asks for a key id and key and keeps them in sessionStorage (this tab only).
import {
  ArmClient,
  BaseClient,
  ButtonClient,
  CameraClient,
  GantryClient,
  GenericComponentClient,
  GripperClient,
  MotorClient,
  RobotClient,
  SensorClient,
  ServoClient,
  StreamClient,
  Struct,
  SwitchClient,
} from '@viamrobotics/sdk';
import { createGrpcWebTransport } from '@connectrpc/connect-web';

// The SDK dials directly only hosts containing "local"; this name stands for the page's own
// origin (the transport factory below maps it there).
const DIRECT_HOST = 'http://tether-page.local';
globalThis.VIAM = {
  GRPC_TRANSPORT_FACTORY: (opts) =>
    createGrpcWebTransport({ ...opts, baseUrl: opts.baseUrl === DIRECT_HOST ? location.origin : opts.baseUrl }),
};

const CALL_TIMEOUT_MS = 5000;
const DIAL_TIMEOUT_MS = 6000;
const POLL_MS = 500;
const STATUS_MS = 1000;
const RTT_MS = 1000;
const RTT_SAMPLES = 60;
const CREDS_KEY = 'tether.credentials';
// Liveness: this many GetVersion probes in a row without an answer mean the link is dead (a
// killed machine leaves a WebRTC peer connection looking alive for many seconds).
const DEAD_AFTER_PROBES = 3;
// After a loss, the SDK reconnects by itself (a few attempts); past this the page dials anew.
const REDIAL_AFTER_MS = 1500;

const $ = (sel) => document.querySelector(sel);
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
const fmt = (n, d = 2) => (typeof n === 'number' && Number.isFinite(n) ? n.toFixed(d) : String(n));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const errText = (e) => (e?.rawMessage ?? e?.message ?? String(e)).replace(/^\[\w+\]\s*/, '');

function bounded(promise, ms = CALL_TIMEOUT_MS) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

// ---------------------------------------------------------------------------------------------
// State shared with the tests (window.tetherPage) and the view.
// ---------------------------------------------------------------------------------------------
const state = {
  phase: 'starting', // starting | login | connecting | connected | reconnecting | failed
  transport: null, // 'webrtc' | 'grpc-web'
  icePair: null, // 'host/host', ...
  rtt: [],
  resources: [],
  sessionId: '',
  events: [],
  error: null,
  authRequired: false,
};
window.tetherPage = {
  state,
  /** RGBA bytes of a region of camera `name`'s current video frame (for tests reading pixels). */
  videoPixels(name, x, y, w, h) {
    const video = document.querySelector(`video[data-camera="${CSS.escape(name)}"]`);
    if (!video || video.videoWidth === 0) return null;
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(video, 0, 0);
    return Array.from(ctx.getImageData(x, y, w, h).data);
  },
};

function logEvent(text, kind = 'info') {
  const t = new Date();
  const stamp = `${t.toLocaleTimeString([], { hour12: false })}.${String(t.getMilliseconds()).padStart(3, '0')}`;
  state.events.push({ t: t.getTime(), text, kind });
  if (state.events.length > 200) state.events.shift();
  const box = $('#events');
  if (box) {
    box.prepend(el('div', { class: kind }, `${stamp} ${text}`));
    while (box.childElementCount > 200) box.lastElementChild.remove();
  }
}

function setBadge(id, text, cls = '') {
  const b = $(id);
  b.textContent = text;
  b.className = `badge ${cls}`;
}

// ---------------------------------------------------------------------------------------------
// Credentials: AuthService.Authenticate over gRPC-Web, by hand (two strings in, one out).
// ---------------------------------------------------------------------------------------------
const enc = new TextEncoder();
function pbString(field, s) {
  const bytes = enc.encode(s);
  const out = [(field << 3) | 2];
  let n = bytes.length;
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Uint8Array.from([...out, ...bytes]);
}
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
};

/** Exchanges {id, key} for an access token; throws an Error whose message says why not. */
async function authenticate(creds) {
  const credentials = concat(pbString(1, 'api-key'), pbString(2, creds.key));
  const msg = concat(pbString(1, creds.id), concat(Uint8Array.of((2 << 3) | 2, ...varint(credentials.length)), credentials));
  const frame = concat(Uint8Array.of(0, ...u32(msg.length)), msg);
  const res = await fetch('/proto.rpc.v1.AuthService/Authenticate', {
    method: 'POST',
    headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1' },
    body: frame,
  });
  const body = new Uint8Array(await res.arrayBuffer());
  let data;
  let trailer = '';
  for (let off = 0; off + 5 <= body.length; ) {
    const len = (body[off + 1] << 24) | (body[off + 2] << 16) | (body[off + 3] << 8) | body[off + 4];
    const payload = body.subarray(off + 5, off + 5 + len);
    if (body[off] & 0x80) trailer = new TextDecoder().decode(payload);
    else data = payload;
    off += 5 + len;
  }
  const status = /grpc-status:\s*(\d+)/i.exec(trailer)?.[1] ?? res.headers.get('grpc-status');
  const message = decodeURIComponent(/grpc-message:\s*(.*)/i.exec(trailer)?.[1]?.trim() ?? res.headers.get('grpc-message') ?? '');
  if (status !== '0' || !data) {
    if (status === '16') throw new Error(`wrong API key id or key (${message || 'invalid credentials'})`);
    throw new Error(`authentication failed: HTTP ${res.status}, gRPC status ${status}: ${message}`);
  }
  // AuthenticateResponse { string access_token = 1; }
  let off = 1;
  let len = 0;
  for (let shift = 0; ; shift += 7) {
    const b = data[off++];
    len |= (b & 0x7f) << shift;
    if (!(b & 0x80)) break;
  }
  return new TextDecoder().decode(data.subarray(off, off + len));
}
function varint(n) {
  const out = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return out;
}
const u32 = (n) => [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];

function savedCreds() {
  try {
    const c = JSON.parse(sessionStorage.getItem(CREDS_KEY) ?? 'null');
    return c && typeof c.id === 'string' && typeof c.key === 'string' ? c : null;
  } catch {
    return null;
  }
}

/** Shows the key prompt (with `error`, if any) and resolves to the credentials entered. */
function promptCreds(error) {
  state.phase = 'login';
  const dialog = $('#login');
  $('#login-error').textContent = error ?? '';
  if (!dialog.open) dialog.showModal();
  return new Promise((resolve) => {
    $('#login-form').onsubmit = (ev) => {
      ev.preventDefault();
      const creds = { id: $('#key-id').value.trim(), key: $('#key').value };
      $('#login-error').textContent = 'checking…';
      resolve(creds);
    };
  });
}

let token = null;
let creds = null;

/** Asks the machine whether it needs a key; gets a token for the status view when it does. */
async function login() {
  const probe = await fetch('/tether/status', { cache: 'no-store' });
  state.authRequired = probe.status === 401;
  if (!state.authRequired) return;
  creds = savedCreds();
  let error = null;
  for (;;) {
    if (!creds) creds = await promptCreds(error);
    try {
      token = await authenticate(creds);
      sessionStorage.setItem(CREDS_KEY, JSON.stringify(creds));
      $('#login').close();
      return;
    } catch (e) {
      error = e.message;
      state.error = error;
      logEvent(`authentication failed: ${error}`, 'bad');
      sessionStorage.removeItem(CREDS_KEY);
      creds = null;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Connecting: WebRTC through the embedded signaler, else gRPC-Web.
// ---------------------------------------------------------------------------------------------
let robot;
const sdkCreds = () => (creds ? { type: 'api-key', payload: creds.key, authEntity: creds.id } : undefined);

function newRobot() {
  const r = new RobotClient();
  // A fresh client resumes this page's session if the machine still has it (private in the SDK).
  if (state.sessionId) r.sessionManager.currentSessionID = state.sessionId;
  watchConnection(r);
  return r;
}

/** The name to dial over WebRTC: how this page reached the machine if it answers for that. */
async function webrtcHost() {
  const hosts = (await fetchStatus().catch(() => null))?.webrtc_hosts;
  if (!Array.isArray(hosts)) return location.host; // an older machine: try the page's own address
  if (hosts.includes(location.host)) return location.host;
  if (hosts.includes(location.hostname)) return location.hostname;
  return hosts[0] ?? null;
}

async function dial() {
  // One attempt per method: a WebRTC path that cannot connect falls back to gRPC-Web within the
  // dial timeout, and after a loss the page's own supervisor keeps dialing (supervise()).
  const common = { credentials: sdkCreds(), reconnectMaxAttempts: 1, dialTimeout: DIAL_TIMEOUT_MS };
  robot = newRobot();
  const host = await webrtcHost();
  try {
    if (!host) throw new Error('the machine answers no WebRTC calls');
    logEvent(`dialing over WebRTC (signaling ${location.origin}, host ${host})`);
    await robot.dial({ ...common, host, signalingAddress: location.origin });
    if (!robot.peerConnection) throw new Error('no peer connection');
    state.transport = 'webrtc';
  } catch (e) {
    logEvent(`WebRTC failed (${errText(e.cause?.[0] ?? e)}); falling back to gRPC-Web`, 'warn');
    await robot.disconnect().catch(() => {});
    robot = newRobot();
    await robot.dial({ ...common, host: DIRECT_HOST });
    state.transport = 'grpc-web';
  }
  await startSession();
  logEvent(`connected over ${state.transport === 'webrtc' ? 'WebRTC' : 'gRPC-Web'}`, 'ok');
}

/** Starts (or resumes) the SDK's session: StartSession, the monitored-method list, heartbeats. */
async function startSession() {
  const before = state.sessionId;
  try {
    // Private in the SDK's types: in 0.61.1 sessions start only from a monitored call once the
    // monitored methods are known, and they are only learnt when a session starts.
    await bounded(robot.sessionManager.getSessionMetadata());
    state.sessionId = robot.sessionId;
  } catch (e) {
    logEvent(`could not start a session: ${errText(e)}`, 'bad');
    return;
  }
  if (!before) logEvent('session started');
  else if (before === state.sessionId) logEvent('session resumed', 'ok');
  else logEvent('session lapsed while disconnected; the machine stopped what it drove; new session started', 'warn');
}

let lostAt = 0;
function connectionLost(why) {
  state.phase = 'reconnecting';
  lostAt = performance.now();
  setBadge('#transport', 'reconnecting', 'warn');
  setBadge('#rtt', '—');
  logEvent(`connection lost (${why}); reconnecting`, 'warn');
}

function watchConnection(r) {
  let lost = false;
  r.on('disconnected', () => {
    if (r !== robot || state.phase !== 'connected') return;
    lost = true;
    connectionLost('closed');
  });
  r.on('dialing', (ev) => {
    if (r === robot && lost) logEvent(`dialing (${ev?.method ?? '?'}, attempt ${ev?.attempt ?? '?'})`);
  });
  r.on('connected', () => {
    if (r !== robot || !lost) return;
    lost = false;
    state.phase = 'connected';
    logEvent('reconnected', 'ok');
    showTransport();
    startSession();
  });
}

async function selectedPair(pc) {
  const stats = await pc.getStats();
  let pair;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && (pair = s));
  if (!pair) return null;
  const type = (id) => stats.get(id)?.candidateType ?? '?';
  return `${type(pair.localCandidateId)}/${type(pair.remoteCandidateId)}`;
}

async function showTransport() {
  if (state.transport === 'webrtc') {
    setBadge('#transport', 'WebRTC', 'ok');
    const pc = robot.peerConnection;
    state.icePair = pc ? await selectedPair(pc).catch(() => null) : null;
    setBadge('#ice-pair', state.icePair ?? '?', state.icePair ? 'ok' : 'warn');
  } else {
    setBadge('#transport', 'gRPC-Web', 'warn');
    state.icePair = null;
    setBadge('#ice-pair', 'n/a');
  }
}

// ---------------------------------------------------------------------------------------------
// Live link health: RTT (GetVersion round trips) and its chart; the machine's status view.
// ---------------------------------------------------------------------------------------------
async function rttLoop() {
  let misses = 0;
  for (;;) {
    if (state.phase === 'connected') {
      const t0 = performance.now();
      try {
        await bounded(robot.getVersion(), 2000);
        const ms = performance.now() - t0;
        state.rtt.push(ms);
        if (state.rtt.length > RTT_SAMPLES) state.rtt.shift();
        setBadge('#rtt', `${ms.toFixed(1)} ms`, 'ok');
        drawRtt();
        misses = 0;
      } catch {
        setBadge('#rtt', 'timeout', 'bad');
        misses += 1;
        if (misses >= DEAD_AFTER_PROBES && state.phase === 'connected') {
          connectionLost(`${misses} liveness probes unanswered`);
          lostAt -= REDIAL_AFTER_MS; // the SDK has not noticed: dial anew at once
        }
      }
      if (state.transport === 'webrtc' && state.rtt.length % 5 === 1) showTransport();
    }
    await sleep(RTT_MS);
  }
}

function drawRtt() {
  const w = 140;
  const h = 30;
  const max = Math.max(5, ...state.rtt) * 1.1;
  const step = w / (RTT_SAMPLES - 1);
  const off = RTT_SAMPLES - state.rtt.length;
  const pts = state.rtt.map((v, i) => `${((off + i) * step).toFixed(1)},${(h - (v / max) * (h - 2) - 1).toFixed(1)}`);
  $('#rtt-chart polyline').setAttribute('points', pts.join(' '));
}

async function fetchStatus() {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (state.sessionId) headers['viam-sid'] = state.sessionId;
  let res = await fetch('/tether/status', { headers, cache: 'no-store' });
  if (res.status === 401 && creds) {
    token = await authenticate(creds); // the machine restarted: its tokens did not survive
    headers.authorization = `Bearer ${token}`;
    res = await fetch('/tether/status', { headers, cache: 'no-store' });
  }
  const body = await res.json();
  if (!res.ok) throw new Error(body.error ?? `HTTP ${res.status}`);
  return body;
}

async function statusLoop() {
  for (;;) {
    try {
      renderStatus(await fetchStatus());
      $('#status-error').textContent = '';
    } catch (e) {
      $('#status-error').textContent = `status: ${errText(e)}`;
    }
    await sleep(STATUS_MS);
  }
}

function renderStatus(s) {
  const tbody = $('#clients tbody');
  tbody.replaceChildren(
    ...s.clients.map((c) => {
      const sess = c.session;
      let hb = '';
      if (sess) {
        const frac = Math.min(1, sess.heartbeat_age_ms / sess.window_ms);
        hb = el(
          'div',
          { title: `${fmt(sess.heartbeat_age_ms, 0)} ms since the last heartbeat, window ${fmt(sess.window_ms, 0)} ms` },
          el('div', { class: 'bar' }, el('i', { class: frac > 0.6 ? 'late' : '', style: `width:${(frac * 100).toFixed(0)}%` })),
          `${fmt(sess.heartbeat_age_ms, 0)}/${fmt(sess.window_ms, 0)} ms`,
        );
      }
      return el(
        'tr',
        { class: sess?.yours ? 'yours' : '' },
        el('td', {}, c.transport === 'webrtc' ? 'WebRTC' : 'gRPC'),
        el('td', {}, c.remote ?? '?'),
        el('td', {}, c.ice_pair ?? (c.transport === 'webrtc' ? '?' : '—')),
        el('td', {}, sess ? (sess.yours ? 'session (this page)' : 'session') : 'sessionless'),
        el('td', { class: 'hb' }, hb),
      );
    }),
  );
  if (s.clients.length === 0) tbody.append(el('tr', {}, el('td', { colspan: 5 }, 'no clients')));
  const stops = $('#stops tbody');
  stops.replaceChildren(
    ...s.safety_stops.map((x) =>
      el(
        'tr',
        {},
        el('td', {}, new Date(x.at_unix_ms).toLocaleTimeString([], { hour12: false })),
        el('td', {}, x.resource),
        el('td', {}, x.cause),
        el('td', {}, `${fmt(x.delay_ms, 1)} ms`),
      ),
    ),
  );
  if (s.safety_stops.length === 0) stops.append(el('tr', {}, el('td', { colspan: 4 }, 'none')));
}

// ---------------------------------------------------------------------------------------------
// Panels, one per resource, grouped by kind.
// ---------------------------------------------------------------------------------------------
const KINDS = [
  ['motor', 'Motors'],
  ['base', 'Bases'],
  ['camera', 'Cameras'],
  ['sensor', 'Sensors'],
  ['arm', 'Arms'],
  ['gantry', 'Gantries'],
  ['gripper', 'Grippers'],
  ['servo', 'Servos'],
  ['switch', 'Switches'],
  ['button', 'Buttons'],
  ['generic', 'Generic'],
];
const pollers = new Set();

/** Runs `fn` every `ms` while the page is connected; errors show in `errBox`. */
function poll(fn, errBox, ms = POLL_MS) {
  const p = { alive: true };
  pollers.add(p);
  (async () => {
    while (p.alive) {
      if (state.phase === 'connected' && document.visibilityState === 'visible') {
        try {
          await bounded(fn());
          errBox.textContent = '';
        } catch (e) {
          errBox.textContent = errText(e);
        }
      }
      await sleep(ms);
    }
  })();
}

/** Runs an action from a button; shows its error in the panel. */
function act(errBox, fn) {
  return async () => {
    try {
      errBox.textContent = '';
      await bounded(fn());
    } catch (e) {
      errBox.textContent = errText(e);
    }
  };
}

function doCommandBox(client, errBox) {
  const input = el('textarea', { rows: 2, 'aria-label': 'DoCommand JSON' });
  input.value = '{}';
  const out = el('div', { class: 'live' });
  const run = act(errBox, async () => {
    let cmd;
    try {
      cmd = JSON.parse(input.value);
    } catch (e) {
      throw new Error(`not JSON: ${e.message}`);
    }
    out.textContent = JSON.stringify(await client.doCommand(Struct.fromJson(cmd)), null, 1);
  });
  return el('details', {}, el('summary', {}, 'DoCommand'), input, el('div', { class: 'row' }, el('button', { onclick: run }, 'Send')), out);
}

function panel(kind, name, ...body) {
  const errBox = el('div', { class: 'err' });
  const p = el('div', { class: 'panel', 'data-kind': kind, 'data-name': name }, el('h3', {}, name, el('small', {}, kind)));
  const content = typeof body[0] === 'function' ? body[0](errBox) : body;
  p.append(...content, errBox);
  return p;
}

const PANELS = {
  motor(name) {
    const m = new MotorClient(robot, name);
    return panel('motor', name, (err) => {
      const live = el('div', { class: 'live', 'data-live': 'motor' }, '…');
      const value = el('span', {}, '0%');
      const slider = el('input', { type: 'range', min: -100, max: 100, step: 1, value: 0, 'aria-label': 'power' });
      slider.addEventListener('input', () => (value.textContent = `${slider.value}%`));
      const setPower = act(err, () => m.setPower(Number(slider.value) / 100));
      slider.addEventListener('change', setPower);
      const rpm = el('input', { type: 'number', value: 60, 'aria-label': 'rpm' });
      const revs = el('input', { type: 'number', value: 2, 'aria-label': 'revolutions' });
      poll(async () => {
        const [[on, pct], pos] = await Promise.all([m.isPowered(), m.getPosition()]);
        live.textContent = `${on ? 'powered' : 'off'} ${fmt(pct * 100, 0)}%  position ${fmt(pos, 2)} rev`;
        live.dataset.powered = String(on);
        live.dataset.power = String(pct);
      }, err);
      return [
        live,
        el('div', { class: 'row' }, 'power', slider, value),
        el('div', { class: 'row' }, el('button', { class: 'primary', 'data-action': 'set-power', onclick: setPower }, 'Set power'),
          el('button', { 'data-action': 'stop', onclick: act(err, async () => {
            await m.stop();
            slider.value = 0;
            value.textContent = '0%';
          }) }, 'Stop')),
        el('div', { class: 'row' }, 'go for', rpm, 'rpm ×', revs, 'rev',
          el('button', { onclick: act(err, () => m.goFor(Number(rpm.value), Number(revs.value))) }, 'Go')),
        doCommandBox(m, err),
      ];
    });
  },
  base(name) {
    const b = new BaseClient(robot, name);
    return panel('base', name, (err) => {
      const live = el('div', { class: 'live', 'data-live': 'base' }, '…');
      const speed = el('input', { type: 'range', min: 10, max: 100, step: 5, value: 50, 'aria-label': 'speed' });
      const keys = el('input', { type: 'checkbox', 'aria-label': 'arrow keys drive this base' });
      const ctl = deadMan(b, () => Number(speed.value) / 100, err);
      keys.checked = !keyBase;
      if (keys.checked) keyBase = ctl;
      keys.addEventListener('change', () => {
        keyBase = keys.checked ? ctl : keyBase === ctl ? null : keyBase;
      });
      const btn = (dir, label, cls) => {
        const e = el('button', { class: cls, 'data-dir': dir, 'aria-label': `${dir} (hold)` }, label);
        e.addEventListener('pointerdown', (ev) => {
          e.setPointerCapture?.(ev.pointerId);
          e.classList.add('held');
          ctl.press(dir);
        });
        for (const t of ['pointerup', 'pointercancel', 'lostpointercapture']) {
          e.addEventListener(t, () => {
            e.classList.remove('held');
            ctl.release(dir);
          });
        }
        return e;
      };
      poll(async () => {
        const moving = await b.isMoving();
        live.textContent = `${moving ? 'moving' : 'stopped'}  ${ctl.describe()}`;
        live.dataset.moving = String(moving);
      }, err);
      return [
        live,
        el('div', { class: 'row' }, el('div', { class: 'pad' }, btn('forward', '▲', 'up'), btn('left', '◀', 'left'), btn('backward', '▼', 'down'), btn('right', '▶', 'right')),
          el('div', {}, el('div', {}, 'hold to move; release stops'), el('label', {}, keys, ' arrow keys / WASD'))),
        el('div', { class: 'row' }, 'speed', speed),
        el('div', { class: 'row' }, el('button', { onclick: act(err, () => ctl.stop()) }, 'Stop')),
        doCommandBox(b, err),
      ];
    });
  },
  arm(name) {
    const a = new ArmClient(robot, name);
    return panel('arm', name, (err) => {
      const live = el('div', { class: 'live' }, '…');
      poll(async () => {
        const [pose, joints, moving] = await Promise.all([a.getEndPosition(), a.getJointPositions(), a.isMoving()]);
        live.textContent =
          `end x ${fmt(pose.x, 1)} y ${fmt(pose.y, 1)} z ${fmt(pose.z, 1)} mm, θ ${fmt(pose.theta, 1)}°\n` +
          `joints ${joints.values.map((v) => fmt(v, 1)).join(', ')}°${moving ? '\nmoving' : ''}`;
      }, err, 1000);
      const joints = el('input', { type: 'text', placeholder: 'joint degrees, e.g. 0, 45, 90', 'aria-label': 'joint positions' });
      return [
        live,
        el('div', { class: 'row' }, joints, el('button', { onclick: act(err, () => a.moveToJointPositions(joints.value.split(',').map(Number))) }, 'Move')),
        el('div', { class: 'row' }, el('button', { onclick: act(err, () => a.stop()) }, 'Stop')),
        doCommandBox(a, err),
      ];
    });
  },
  gantry(name) {
    const g = new GantryClient(robot, name);
    return panel('gantry', name, (err) => {
      const live = el('div', { class: 'live' }, '…');
      poll(async () => {
        const [pos, lengths] = await Promise.all([g.getPosition(), g.getLengths()]);
        live.textContent = `position ${pos.map((v) => fmt(v, 1)).join(', ')} mm\nlengths ${lengths.map((v) => fmt(v, 0)).join(', ')} mm`;
      }, err, 1000);
      const target = el('input', { type: 'text', placeholder: 'mm per axis, e.g. 10, 20', 'aria-label': 'target position' });
      return [
        live,
        el('div', { class: 'row' }, target, el('button', { onclick: act(err, () => {
          const p = target.value.split(',').map(Number);
          return g.moveToPosition(p, p.map(() => 50));
        }) }, 'Move')),
        el('div', { class: 'row' }, el('button', { onclick: act(err, () => g.home()) }, 'Home'), el('button', { onclick: act(err, () => g.stop()) }, 'Stop')),
        doCommandBox(g, err),
      ];
    });
  },
  gripper(name) {
    const g = new GripperClient(robot, name);
    return panel('gripper', name, (err) => {
      const live = el('div', { class: 'live' }, '…');
      poll(async () => {
        live.textContent = (await g.isMoving()) ? 'moving' : 'idle';
      }, err, 1000);
      return [
        live,
        el('div', { class: 'row' }, el('button', { onclick: act(err, () => g.open()) }, 'Open'), el('button', { onclick: act(err, () => g.grab()) }, 'Grab'),
          el('button', { onclick: act(err, () => g.stop()) }, 'Stop')),
        doCommandBox(g, err),
      ];
    });
  },
  servo(name) {
    const s = new ServoClient(robot, name);
    return panel('servo', name, (err) => {
      const live = el('div', { class: 'live' }, '…');
      const slider = el('input', { type: 'range', min: 0, max: 180, step: 1, value: 90, 'aria-label': 'angle' });
      slider.addEventListener('change', act(err, () => s.move(Number(slider.value))));
      poll(async () => {
        live.textContent = `angle ${await s.getPosition()}°`;
      }, err);
      return [live, el('div', { class: 'row' }, '0°', slider, '180°'), el('div', { class: 'row' }, el('button', { onclick: act(err, () => s.stop()) }, 'Stop')), doCommandBox(s, err)];
    });
  },
  switch(name) {
    const s = new SwitchClient(robot, name);
    return panel('switch', name, (err) => {
      const live = el('div', { class: 'live' }, '…');
      const select = el('select', { 'aria-label': 'position' });
      let labels = null;
      select.addEventListener('change', act(err, () => s.setPosition(Number(select.value))));
      poll(async () => {
        if (!labels) {
          const [n, names] = await s.getNumberOfPositions();
          labels = Array.from({ length: n }, (_, i) => names[i] || `position ${i}`);
          select.replaceChildren(...labels.map((l, i) => el('option', { value: i }, l)));
        }
        const pos = await s.getPosition();
        live.textContent = `position ${pos}${labels[pos] ? ` (${labels[pos]})` : ''}`;
        if (document.activeElement !== select) select.value = String(pos);
      }, err, 1000);
      return [live, el('div', { class: 'row' }, 'set', select), doCommandBox(s, err)];
    });
  },
  button(name) {
    const b = new ButtonClient(robot, name);
    return panel('button', name, (err) => {
      let pushes = 0;
      const live = el('div', { class: 'live' }, 'not pushed yet');
      return [
        live,
        el('div', { class: 'row' }, el('button', { class: 'primary', onclick: act(err, async () => {
          await b.push();
          live.textContent = `pushed ${++pushes}×`;
        }) }, 'Push')),
        doCommandBox(b, err),
      ];
    });
  },
  sensor(name) {
    const s = new SensorClient(robot, name);
    return panel('sensor', name, (err) => {
      const live = el('div', { class: 'live', 'data-live': 'sensor' }, '…');
      poll(async () => {
        const r = await s.getReadings();
        live.textContent = Object.entries(r).map(([k, v]) => `${k}: ${typeof v === 'number' ? fmt(v, 3) : JSON.stringify(v)}`).join('\n') || '(no readings)';
      }, err);
      return [live, doCommandBox(s, err)];
    });
  },
  camera(name) {
    const c = new CameraClient(robot, name);
    return panel('camera', name, (err) => {
      const mode = el('div', { class: 'live', 'data-live': 'camera' }, 'starting…');
      const view = el('div', {});
      startCamera(c, name, view, mode, err);
      return [view, mode, doCommandBox(c, err)];
    });
  },
  generic(name) {
    const g = new GenericComponentClient(robot, name);
    return panel('generic', name, (err) => [doCommandBox(g, err)]);
  },
};

/** Live video through the StreamService over WebRTC; GetImages snapshots when that fails. */
async function startCamera(cam, name, view, mode, err) {
  if (state.transport === 'webrtc') {
    try {
      const stream = await new StreamClient(robot).getStream(name);
      const video = el('video', { class: 'cam', autoplay: '', muted: '', playsinline: '', 'data-camera': name });
      video.muted = true;
      video.srcObject = stream;
      view.replaceChildren(video);
      mode.textContent = 'live video (WebRTC stream)';
      mode.dataset.mode = 'video';
      // Frames presented so far, for people and tests alike.
      const count = (_now, meta) => {
        mode.dataset.frames = String(meta.presentedFrames);
        mode.textContent = `live video (WebRTC stream), ${video.videoWidth}x${video.videoHeight}, ${meta.presentedFrames} frames`;
        video.requestVideoFrameCallback(count);
      };
      video.requestVideoFrameCallback?.(count);
      return;
    } catch (e) {
      mode.dataset.reason = errText(e);
    }
  }
  const img = el('img', { class: 'cam', alt: `${name} snapshot`, 'data-camera': name });
  view.replaceChildren(img);
  mode.dataset.mode = 'snapshot';
  let frames = 0;
  let url;
  const why = state.transport === 'webrtc' ? `no video stream: ${mode.dataset.reason ?? '?'}` : 'gRPC-Web has no video';
  poll(async () => {
    const { images } = await cam.getImages();
    const image = images[0];
    if (!image) throw new Error('the camera returned no image');
    const next = URL.createObjectURL(new Blob([image.image], { type: image.mimeType || 'image/jpeg' }));
    img.src = next;
    if (url) URL.revokeObjectURL(url);
    url = next;
    frames += 1;
    mode.dataset.frames = String(frames);
    mode.textContent = `snapshots every ${POLL_MS} ms (${why}); ${frames} frames`;
  }, err);
}

// The dead-man base control: motion only while a direction is held.
let keyBase = null;
const KEYS = { ArrowUp: 'forward', KeyW: 'forward', ArrowDown: 'backward', KeyS: 'backward', ArrowLeft: 'left', KeyA: 'left', ArrowRight: 'right', KeyD: 'right' };
const allBases = new Set();

function deadMan(base, power, err) {
  const held = new Set();
  let sent = 'stop';
  let chain = Promise.resolve();
  // Commands go out one at a time and in order, so a release can never overtake its press.
  const send = () => {
    const lin = (held.has('forward') ? 1 : 0) - (held.has('backward') ? 1 : 0);
    const ang = (held.has('left') ? 1 : 0) - (held.has('right') ? 1 : 0);
    const p = power();
    const want = lin === 0 && ang === 0 ? 'stop' : `${lin * p},${ang * p}`;
    if (want === sent) return chain;
    sent = want;
    chain = chain
      .then(() => bounded(want === 'stop' ? base.stop() : base.setPower({ x: 0, y: lin * p, z: 0 }, { x: 0, y: 0, z: ang * p })))
      .then(() => {
        err.textContent = '';
      })
      .catch((e) => {
        err.textContent = errText(e);
        sent = '?';
      });
    return chain;
  };
  const ctl = {
    press(dir) {
      held.add(dir);
      return send();
    },
    release(dir) {
      held.delete(dir);
      return send();
    },
    releaseAll() {
      if (held.size === 0 && sent === 'stop') return chain;
      held.clear();
      return send();
    },
    stop() {
      held.clear();
      sent = '?';
      return send();
    },
    describe: () => (held.size ? `held: ${[...held].join('+')}` : ''),
  };
  allBases.add(ctl);
  return ctl;
}

function releaseAllBases(why) {
  let any = false;
  for (const b of allBases) any = b.describe() !== '' || any;
  for (const b of allBases) b.releaseAll();
  for (const e of document.querySelectorAll('.pad button.held')) e.classList.remove('held');
  if (any) logEvent(`base released (${why})`);
}

// Keys that belong to the focused control: text fields take every key, a slider its arrows.
const ownKey = (t, code) =>
  t instanceof HTMLElement &&
  (t.isContentEditable || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || (t.tagName === 'INPUT' && !['range', 'checkbox'].includes(t.type)) || (t.type === 'range' && code.startsWith('Arrow')));
window.addEventListener('keydown', (ev) => {
  const dir = KEYS[ev.code];
  if (!dir || !keyBase || ownKey(ev.target, ev.code)) return;
  ev.preventDefault();
  if (!ev.repeat) keyBase.press(dir);
});
window.addEventListener('keydown', (ev) => {
  if (ev.code === 'Escape' && !ev.repeat && robot && !$('#login').open) stopAll();
});
window.addEventListener('keyup', (ev) => {
  const dir = KEYS[ev.code];
  if (dir && keyBase) keyBase.release(dir);
});
window.addEventListener('blur', () => releaseAllBases('window lost focus'));
document.addEventListener('visibilitychange', () => document.visibilityState === 'hidden' && releaseAllBases('page hidden'));
window.addEventListener('pagehide', () => releaseAllBases('page closed'));

async function stopAll() {
  releaseAllBases('STOP ALL');
  try {
    await bounded(robot.stopAll());
    logEvent('STOP ALL: every actuator stopped', 'ok');
  } catch (e) {
    logEvent(`STOP ALL failed: ${errText(e)}`, 'bad');
  }
}

async function buildPanels() {
  const names = await bounded(robot.resourceNames());
  state.resources = names
    .filter((n) => n.type === 'component')
    .map((n) => ({ subtype: n.subtype, name: n.name }))
    .sort((a, b) => a.name.localeCompare(b.name));
  const root = $('#resources');
  root.replaceChildren();
  const known = new Set(KINDS.map(([k]) => k));
  const groups = [...KINDS, ...[...new Set(state.resources.map((r) => r.subtype))].filter((k) => !known.has(k)).map((k) => [k, k])];
  for (const [kind, title] of groups) {
    const members = state.resources.filter((r) => r.subtype === kind);
    if (members.length === 0) continue;
    const grid = el('div', { class: 'kind', 'data-kind': kind });
    for (const r of members) {
      const make = PANELS[kind];
      grid.append(make ? make(r.name) : panel(kind, r.name, (err) => [el('div', { class: 'live' }, 'no panel for this kind'), doCommandBox(new GenericComponentClient(robot, r.name), err)]));
    }
    root.append(el('div', { class: 'group' }, el('h2', {}, `${title} (${members.length})`), grid));
  }
  if (state.resources.length === 0) root.append(el('div', { id: 'splash' }, 'This machine has no components.'));
}

/** Dials anew (a fresh RobotClient, new panels) when the SDK's own reconnection gave up. */
async function supervise() {
  for (;;) {
    await sleep(500);
    if (state.phase !== 'reconnecting' || performance.now() - lostAt < REDIAL_AFTER_MS) continue;
    // Dial only once the machine answers HTTP again: a dial into a machine that is still starting
    // would settle for gRPC-Web.
    const up = await fetch('/tether/status', { cache: 'no-store', signal: AbortSignal.timeout(2000) }).then(
      () => true,
      () => false,
    );
    if (!up) {
      setBadge('#transport', 'unreachable', 'bad');
      continue;
    }
    logEvent('the machine answers again; dialing it anew');
    for (const p of pollers) p.alive = false;
    pollers.clear();
    allBases.clear();
    keyBase = null;
    const old = robot;
    robot = undefined;
    old?.disconnect().catch(() => {});
    try {
      await dial();
      state.phase = 'connected';
      logEvent('reconnected', 'ok');
      await showTransport();
      await buildPanels();
    } catch (e) {
      lostAt = performance.now() - REDIAL_AFTER_MS + 1000; // again in a second
      logEvent(`redial failed: ${errText(e)}`, 'bad');
    }
  }
}

async function main() {
  $('#title').textContent = `tether machine at ${location.host}`;
  $('#stop-all').addEventListener('click', stopAll);
  try {
    await login();
    state.phase = 'connecting';
    await dial();
    state.phase = 'connected';
    await showTransport();
    await buildPanels();
    $('#subtitle').textContent = `${state.resources.length} components · ${state.authRequired ? `key ${creds.id}` : 'open machine (no API keys)'}`;
    rttLoop();
    statusLoop();
    supervise();
  } catch (e) {
    state.phase = 'failed';
    state.error = errText(e);
    setBadge('#transport', 'failed', 'bad');
    $('#subtitle').textContent = `cannot connect: ${state.error}`;
    $('#resources').replaceChildren(el('div', { id: 'splash', class: 'err' }, `Cannot connect to the machine: ${state.error}`));
    logEvent(`cannot connect: ${state.error}`, 'bad');
  }
}

main();
