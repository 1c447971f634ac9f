// Real-browser plumbing for the WebRTC interop tests: bundles browser/page.mjs with the SDK
// (esbuild), serves it from a tiny static HTTP server, and drives Debian's Chromium headless with
// playwright-core (never a downloaded browser).
import { readFileSync, readdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { build } from 'esbuild';
import { chromium } from 'playwright-core';

const TS_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

// The launch flags that work on this kind of machine (see interop-notes.md), plus what
// playwright-core needs (--remote-debugging-pipe) and a fresh --user-data-dir per browser.
// Playwright's own default flags are not used (ignoreDefaultArgs: true).
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Bundles browser/page.mjs + @viamrobotics/sdk into dir/page.js and writes dir/index.html. */
export async function buildPage(dir) {
  await build({
    entryPoints: [path.join(TS_ROOT, 'browser', 'page.mjs')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'chrome120',
    outfile: path.join(dir, 'page.js'),
    logLevel: 'warning',
    define: { 'process.env.NODE_ENV': '"production"' },
  });
  writeFileSync(
    path.join(dir, 'index.html'),
    '<!doctype html><html><head><meta charset="utf-8"><title>tether webrtc interop</title>' +
      '<script type="module" src="/page.js"></script></head><body>tether</body></html>\n',
  );
}

/** Serves the files of dir (no subdirectories) on host:0. Resolves to {origin, close()}. */
export async function startStaticServer(dir, host) {
  const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };
  const files = new Set(readdirSync(dir));
  const server = createServer((req, res) => {
    const name = new URL(req.url, 'http://x').pathname.slice(1) || 'index.html';
    if (!files.has(name)) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': types[path.extname(name)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    res.end(readFileSync(path.join(dir, name)));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const { port } = server.address();
  return {
    origin: `http://${host}:${port}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Pids of every descendant of pid (from /proc), deepest last. */
function descendants(pid) {
  const children = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue;
    }
    // pid (comm) state ppid ...; comm may contain spaces and parentheses.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (!children.has(ppid)) children.set(ppid, []);
    children.get(ppid).push(Number(entry));
  }
  const out = [];
  const walk = (p) => {
    for (const c of children.get(p) ?? []) {
      out.push(c);
      walk(c);
    }
  };
  walk(pid);
  return out;
}

function chromiumMainPid(userDataDir) {
  // The browser process is our child (/usr/bin/chromium execs /usr/lib/chromium/chromium) and the
  // only one whose command line carries this fresh --user-data-dir without a --type= switch.
  for (const pid of descendants(process.pid)) {
    let cmdline;
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (cmdline.includes(`--user-data-dir=${userDataDir}`) && !cmdline.some((a) => a.startsWith('--type='))) return pid;
  }
  return undefined;
}

/**
 * Launches Chromium headless with CHROMIUM_FLAGS + extraFlags and a fresh profile; resolves to
 * {browser, page, consoleLines, pids(), killTree(), close()}. page has already loaded the test page
 * at `origin` and window.tether is ready. Options: `path` (default /index.html) and `ready` (a
 * predicate run in the page, default window.tetherReady === true) for other pages.
 */
export async function launchPage(origin, extraFlags = [], { path: pagePath = '/index.html', ready, viewport } = {}) {
  const userDataDir = mkdtempSync(path.join(tmpdir(), 'tether-chromium-'));
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    ignoreDefaultArgs: true,
    args: [...CHROMIUM_FLAGS, ...extraFlags, `--user-data-dir=${userDataDir}`, '--remote-debugging-pipe'],
    timeout: 30_000,
    // Let a signal end the test process at once (playwright's handlers wait for the browser to
    // close); scripts/run-in-netns.mjs then kills whatever is left in the namespace.
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  const mainPid = chromiumMainPid(userDataDir);
  const consoleLines = [];
  let page;
  try {
    const context = await browser.newContext(viewport ? { viewport } : {});
    page = await context.newPage();
    page.on('console', (msg) => consoleLines.push(`[${msg.type()}] ${msg.text()}`));
    page.on('pageerror', (err) => consoleLines.push(`[pageerror] ${err.message}`));
    await page.goto(`${origin}${pagePath}`);
    await page.waitForFunction(ready ?? (() => window.tetherReady === true), null, { timeout: 10_000 });
  } catch (err) {
    await browser.close().catch(() => {});
    rmSync(userDataDir, { recursive: true, force: true });
    throw err;
  }
  const pids = () => (mainPid === undefined ? [] : [mainPid, ...descendants(mainPid)]);
  return {
    browser,
    page,
    consoleLines,
    mainPid,
    pids,
    /** SIGKILLs the browser process and every process under it; resolves when all are gone. */
    async killTree() {
      const all = pids();
      if (all.length === 0) throw new Error('no chromium process found to kill');
      for (const pid of all) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      const t0 = Date.now();
      while (all.some((pid) => existsPid(pid)) && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
      return all;
    },
    async close() {
      await browser.close().catch(() => {});
      for (const pid of pids()) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

function existsPid(pid) {
  try {
    // A zombie still exists until reaped; treat it as gone.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** A temporary directory with the bundled page. */
export async function bundledPageDir() {
  const dir = mkdtempSync(path.join(tmpdir(), 'tether-page-'));
  await buildPage(dir);
  return dir;
}
