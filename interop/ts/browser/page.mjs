// The browser side of the WebRTC interop tests: bundled with the real @viamrobotics/sdk by esbuild
// (lib/browser.mjs) and driven from Node through playwright-core's page.evaluate().
//
// Exposes window.tether: connect(conf) dials with createRobotClient(DialWebRTCConf) and reports
// how the peer connection came up; the other methods are thin wrappers returning plain JSON.
import { createRobotClient, MotorClient, SensorClient, StreamClient } from '@viamrobotics/sdk';

// Record every RTCPeerConnection the SDK creates and the local ICE candidates it gathers (the
// SDK calls `new RTCPeerConnection(config)` on the global at dial time), so a test can see
// whether host candidates were hidden behind mDNS names.
//
// A test can also set the ICE transport policy the SDK's peer connection is created with
// (`conf.iceTransportPolicy`; createRobotClient has no option for it): 'relay' stands for a browser
// whose network offers no usable host path, so that ICE cannot succeed before the browser's own
// relay allocation does.
const localCandidates = [];
let iceTransportPolicy;
const NativePeerConnection = window.RTCPeerConnection;
window.RTCPeerConnection = class extends NativePeerConnection {
  constructor(config, ...rest) {
    super(iceTransportPolicy ? { ...(config ?? {}), iceTransportPolicy } : config, ...rest);
    this.addEventListener('icecandidate', (e) => {
      if (e.candidate && e.candidate.candidate) localCandidates.push(e.candidate.candidate);
    });
  }
};

let robot;

// Every RPC is bounded so that a call the machine never answers fails the test with a clear
// message instead of hanging it.
const RPC_TIMEOUT_MS = 8000;
function bounded(what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} over WebRTC: no answer within ${RPC_TIMEOUT_MS} ms`)),
      RPC_TIMEOUT_MS,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function selectedPair(pc) {
  const stats = await pc.getStats();
  let pair;
  stats.forEach((r) => {
    if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
  });
  if (!pair) {
    stats.forEach((r) => {
      if (r.type === 'candidate-pair' && r.state === 'succeeded' && r.nominated) pair = r;
    });
  }
  if (!pair) return null;
  const cand = (id) => {
    const c = stats.get(id);
    return c
      ? { type: c.candidateType, address: c.address ?? c.ip, port: c.port, protocol: c.protocol, relayProtocol: c.relayProtocol }
      : null;
  };
  return { local: cand(pair.localCandidateId), remote: cand(pair.remoteCandidateId), state: pair.state };
}

// Camera video: the SDK's StreamClient adds the stream, a <video> element plays it, and every
// frame the browser presents is drawn on a canvas and its frame code read back from the pixels
// (the band of 64 blocks the fake camera draws: frame number, then capture time in ms mod 2^32;
// luma averaged over rows 3-6 and the middle half of each block).
const video = { client: undefined, el: undefined, canvas: undefined, presented: 0, codes: [], latencies: [] };

function readFrameCode(ctx, width) {
  const rows = ctx.getImageData(0, 3, width, 4).data;
  let hi = 0;
  let lo = 0;
  for (let i = 0; i < 64; i++) {
    const from = Math.floor((i * width) / 64);
    const to = Math.floor(((i + 1) * width) / 64);
    const q = Math.floor((to - from) / 4);
    const c0 = from + q;
    const c1 = Math.max(to - q, c0 + 1);
    let sum = 0;
    let n = 0;
    for (let row = 0; row < 4; row++) {
      for (let col = c0; col < c1; col++) {
        const p = (row * width + col) * 4;
        sum += 0.299 * rows[p] + 0.587 * rows[p + 1] + 0.114 * rows[p + 2];
        n++;
      }
    }
    const bit = sum / n >= 128 ? 1 : 0;
    if (i < 32) hi = hi * 2 + bit;
    else lo = lo * 2 + bit;
  }
  return { frame: hi, captureMs: lo };
}

function onVideoFrame() {
  const el = video.el;
  if (!el) return;
  video.presented++;
  const w = el.videoWidth;
  const h = el.videoHeight;
  if (w >= 64 && h >= 16) {
    if (video.canvas.width !== w || video.canvas.height !== h) {
      video.canvas.width = w;
      video.canvas.height = h;
    }
    const ctx = video.canvas.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(el, 0, 0, w, h);
    const code = readFrameCode(ctx, w);
    const nowMod = Date.now() % 4294967296;
    video.codes.push(code.frame);
    video.latencies.push((nowMod - code.captureMs + 4294967296) % 4294967296);
    if (video.codes.length > 4000) {
      video.codes.splice(0, 2000);
      video.latencies.splice(0, 2000);
    }
  }
  el.requestVideoFrameCallback(onVideoFrame);
}

async function framesDecoded() {
  const pc = robot?.peerConnection;
  if (!pc) return 0;
  let decoded = 0;
  (await pc.getStats()).forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') decoded += r.framesDecoded ?? 0;
  });
  return decoded;
}

window.tether = {
  async connect({ iceTransportPolicy: policy, ...conf }) {
    iceTransportPolicy = policy;
    const t0 = performance.now();
    robot = await createRobotClient(conf);
    const connectMs = performance.now() - t0;
    const pc = robot.peerConnection;
    return {
      connectMs,
      isConnected: robot.isConnected(),
      hasPeerConnection: pc !== undefined,
      iceConnectionState: pc?.iceConnectionState,
      connectionState: pc?.connectionState,
      iceTransportPolicy: pc?.getConfiguration().iceTransportPolicy,
      selectedPair: pc ? await selectedPair(pc) : null,
      localCandidates: [...localCandidates],
    };
  },
  async resourceNames() {
    const names = await bounded('RobotService.ResourceNames', robot.resourceNames());
    return names.map((n) => ({ namespace: n.namespace, type: n.type, subtype: n.subtype, name: n.name }));
  },
  async setPower(name, power) {
    await bounded('MotorService.SetPower', new MotorClient(robot, name).setPower(power));
  },
  async isPowered(name) {
    const [on, pct] = await bounded('MotorService.IsPowered', new MotorClient(robot, name).isPowered());
    return [on, pct];
  },
  async stop(name) {
    await bounded('MotorService.Stop', new MotorClient(robot, name).stop());
  },
  async isMoving(name) {
    return bounded('MotorService.IsMoving', new MotorClient(robot, name).isMoving());
  },
  async getReadings(name) {
    return bounded('SensorService.GetReadings', new SensorClient(robot, name).getReadings());
  },
  async getSessions() {
    return (await bounded('RobotService.GetSessions', robot.getSessions())).map((s) => ({ id: s.id }));
  },
  async listStreams() {
    video.client ??= new StreamClient(robot);
    return bounded('StreamService.ListStreams', video.client.client.listStreams({})).then((r) => r.names);
  },
  async startStream(name) {
    video.client ??= new StreamClient(robot);
    const stream = await video.client.getStream(name);
    if (!video.el) {
      video.el = document.createElement('video');
      video.el.muted = true;
      video.el.autoplay = true;
      video.el.playsInline = true;
      document.body.appendChild(video.el);
      video.canvas = document.createElement('canvas');
      video.el.requestVideoFrameCallback(onVideoFrame);
    }
    video.el.srcObject = stream;
    await video.el.play();
    return { id: stream.id, tracks: stream.getVideoTracks().length };
  },
  async removeStream(name) {
    await bounded('StreamService.RemoveStream', video.client.remove(name));
  },
  async addStreamError(name) {
    video.client ??= new StreamClient(robot);
    try {
      await bounded('StreamService.AddStream', video.client.add(name));
      return null;
    } catch (e) {
      return String(e?.message ?? e);
    }
  },
  async videoStats() {
    return {
      framesDecoded: await framesDecoded(),
      presented: video.presented,
      width: video.el?.videoWidth ?? 0,
      height: video.el?.videoHeight ?? 0,
      codes: [...video.codes],
      latencies: [...video.latencies],
    };
  },
  async isPoweredQuick(name) {
    const t0 = performance.now();
    await bounded('MotorService.IsPowered', new MotorClient(robot, name).isPowered());
    return performance.now() - t0;
  },
  state() {
    const pc = robot?.peerConnection;
    return { iceConnectionState: pc?.iceConnectionState, connectionState: pc?.connectionState };
  },
  async disconnect() {
    await robot?.disconnect();
  },
};
window.tetherReady = true;
