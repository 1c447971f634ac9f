// Starts `tether machine` subprocesses on free ports for the TypeScript interop tests.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const STARTUP_TIMEOUT_MS = 30_000;

/** $TETHER_BIN (relative paths are taken from the repo root) or target/debug/tether. */
export function tetherBin() {
  const raw = process.env.TETHER_BIN;
  const bin = raw ? path.resolve(REPO_ROOT, raw) : path.join(REPO_ROOT, 'target', 'debug', 'tether');
  if (!existsSync(bin)) {
    throw new Error(`tether binary not found at ${bin}: run \`cargo build -p tether\` or set TETHER_BIN`);
  }
  return bin;
}

/** A machine with only motor1 and the given session heartbeat window. */
export function motorConfig(heartbeatWindow) {
  return {
    components: [{ name: 'motor1', api: 'rdk:component:motor', model: 'rdk:builtin:fake' }],
    network: { sessions: { heartbeat_window: heartbeatWindow } },
  };
}

/**
 * Spawns `tether ARGS…` and resolves once it prints `listening on ADDR`, to
 * {address, child, exited, log(), kill(signal = 'SIGKILL')}. The process never outlives the test
 * process; on a failed start it is killed and the error carries its log, headed by `label`.
 */
export async function spawnTether(args, { env = {}, label = 'tether' } = {}) {
  const child = spawn(tetherBin(), args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1', ...env },
  });
  // Never outlive the test process, even if it exits before t.after() hooks run.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const output = [];
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => output.push(chunk));

  const exited = new Promise((resolve) =>
    child.once('exit', (code, signal) => {
      process.removeListener('exit', killOnExit);
      resolve({ code, signal });
    }),
  );
  const kill = async (signal = 'SIGKILL') => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill(signal);
      await exited;
    }
  };
  const log = () => output.join('');

  const lines = createInterface({ input: child.stdout });
  let timer;
  try {
    const address = await new Promise((resolve, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${label} did not print 'listening on' within ${STARTUP_TIMEOUT_MS} ms`)),
        STARTUP_TIMEOUT_MS,
      );
      child.once('error', reject);
      exited.then(({ code, signal }) => reject(new Error(`${label} exited early (${code ?? signal})`)));
      lines.on('line', (line) => {
        output.push(line + '\n');
        const m = /listening on (\S+)/.exec(line);
        if (m) resolve(m[1]);
      });
    });
    return { address, child, exited, log, kill };
  } catch (err) {
    await kill();
    err.message += `\n--- ${label} log ---\n${log()}`;
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Starts a machine (the built-in fake machine when config is undefined) listening on a free port
 * of 127.0.0.1. Resolves to {address, port, log(), stop()}; stop() must be called (use t.after).
 * Options: listen (default '127.0.0.1:0'), hosts (--host names), env (extra environment).
 */
export async function startMachine(config, { listen = '127.0.0.1:0', hosts = [], env = {} } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'tether-interop-'));
  const args = ['machine', '--listen', listen];
  for (const host of hosts) args.push('--host', host);
  if (config !== undefined) {
    const file = path.join(dir, 'machine.json');
    writeFileSync(file, JSON.stringify(config));
    args.push('--config', file);
  }
  let machine;
  try {
    machine = await spawnTether(args, { env, label: 'tether machine' });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const { address, child, exited, log } = machine;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const port = Number(address.slice(address.lastIndexOf(':') + 1));
  return { address, port, log, stop };
}

/** Polls a machine's log (from startMachine) until `re` matches; the match, or an error after `timeoutMs`. */
export async function waitForLog(machine, re, timeoutMs = 5000) {
  const t0 = Date.now();
  for (;;) {
    const m = re.exec(machine.log());
    if (m) return m;
    if (Date.now() - t0 > timeoutMs) throw new Error(`machine log has no ${re} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
