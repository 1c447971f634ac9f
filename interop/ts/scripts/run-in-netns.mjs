#!/usr/bin/env node
// Runs a command inside a fresh private network namespace and deletes the namespace afterwards.
//
//   node scripts/run-in-netns.mjs CMD [ARGS...]      (root: uses `ip netns`)
//
// The namespace `ttts-<pid>-<random>` has lo up and a veth pair whose both ends stay inside
// (198.18.2.1/24 and 198.18.2.2/24) with a default route into it: Chromium gathers no ICE
// candidates without a default route, and nothing sent to any other address leaves the namespace
// (forwarding is off in a fresh namespace). The command gets TETHER_NETNS (the name) and
// TETHER_NETNS_IP (198.18.2.1) in its environment. Whatever still runs in the namespace when the
// command ends is killed; namespaces left by killed runs (their pid is gone) are removed first,
// with whatever still runs in them.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { constants } from 'node:os';

const PREFIX = 'ttts-';
const IP = '198.18.2.1';
const PEER_IP = '198.18.2.2';

function ip(...args) {
  const res = spawnSync('ip', args, { encoding: 'utf8' });
  if (res.error) throw new Error(`cannot run ip: ${res.error.message} (iproute2 needed)`);
  if (res.status !== 0) throw new Error(`\`ip ${args.join(' ')}\` failed (${res.status}): ${res.stderr.trim()}`);
  return res.stdout;
}

function removeStale() {
  let names = [];
  try {
    names = readdirSync('/run/netns');
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(PREFIX)) continue;
    const pid = name.slice(PREFIX.length).split('-')[0];
    if (/^\d+$/.test(pid) && !existsSync(`/proc/${pid}`)) destroy(name);
  }
}

function destroy(name) {
  const pids = spawnSync('ip', ['netns', 'pids', name], { encoding: 'utf8' }).stdout ?? '';
  for (const pid of pids.split(/\s+/).filter(Boolean).map(Number)) {
    if (pid === process.pid) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  spawnSync('ip', ['netns', 'del', name]);
}

const cmd = process.argv.slice(2);
if (cmd.length === 0) {
  console.error('usage: run-in-netns.mjs CMD [ARGS...]');
  process.exit(2);
}
if (process.getuid?.() !== 0) {
  console.error('run-in-netns.mjs: needs root (ip netns)');
  process.exit(2);
}

removeStale();
const name = `${PREFIX}${process.pid}-${randomBytes(3).toString('hex')}`;
ip('netns', 'add', name);
let code = 1;
try {
  ip('-n', name, 'link', 'set', 'lo', 'up');
  ip('-n', name, 'link', 'add', 'tt0', 'type', 'veth', 'peer', 'name', 'tt1');
  ip('-n', name, 'addr', 'add', `${IP}/24`, 'dev', 'tt0');
  ip('-n', name, 'addr', 'add', `${PEER_IP}/24`, 'dev', 'tt1');
  ip('-n', name, 'link', 'set', 'tt0', 'up');
  ip('-n', name, 'link', 'set', 'tt1', 'up');
  ip('-n', name, 'route', 'add', 'default', 'via', PEER_IP, 'dev', 'tt0');

  const child = spawn('ip', ['netns', 'exec', name, ...cmd], {
    stdio: 'inherit',
    env: { ...process.env, TETHER_NETNS: name, TETHER_NETNS_IP: IP },
  });
  // Forward a signal; a child still running 5 s later is killed (the namespace is then deleted).
  const forward = (sig) => () => {
    child.kill(sig);
    setTimeout(() => child.kill('SIGKILL'), 5000).unref();
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, forward(sig));
  code = await new Promise((resolve) => {
    child.once('error', (err) => {
      console.error(`run-in-netns.mjs: ${err.message}`);
      resolve(1);
    });
    child.once('exit', (c, sig) => resolve(c ?? 128 + (constants.signals[sig] ?? 0)));
  });
} finally {
  destroy(name);
}
process.exit(code);
