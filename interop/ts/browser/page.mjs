// The browser side of the WebRTC interop tests: bundled with the real @viamrobotics/sdk by esbuild
// (lib/browser.mjs) and driven from Node through playwright-core's page.evaluate().
//
// Exposes window.tether: connect(conf) dials with createRobotClient(DialWebRTCConf) and reports
// how the peer connection came up; the other methods are thin wrappers returning plain JSON.
import { createRobotClient, MotorClient, SensorClient } from '@viamrobotics/sdk';

// Record every RTCPeerConnection the SDK creates and the local ICE candidates it gathers (the
// SDK calls `new RTCPeerConnection(config)` on the global at dial time), so a test can see
// whether host candidates were hidden behind mDNS names.
const localCandidates = [];
const NativePeerConnection = window.RTCPeerConnection;
window.RTCPeerConnection = class extends NativePeerConnection {
  constructor(...args) {
    super(...args);
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

window.tether = {
  async connect(conf) {
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
  state() {
    const pc = robot?.peerConnection;
    return { iceConnectionState: pc?.iceConnectionState, connectionState: pc?.connectionState };
  },
  async disconnect() {
    await robot?.disconnect();
  },
};
window.tetherReady = true;
