#!/usr/bin/env node
// Builds the control page into crates/machine/assets/ (embedded in the tether binary by
// crates/machine/src/page.rs): src/app.js bundled with the Viam TypeScript SDK by esbuild
// (minified, ESM, no source map), src/index.html as is, and a gzip (level 9) and brotli
// (quality 11) copy of each. The output depends only on the sources and the locked packages.
//
//   node build.mjs               # rebuild the committed bundle
//   node build.mjs --out DIR     # build into DIR instead
//   node build.mjs --check       # build into a temporary directory and fail if the committed
//                                # bundle differs (the test that catches a stale bundle)
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

import { build } from 'esbuild';

const WEB = path.dirname(fileURLToPath(import.meta.url));
const ASSETS = path.resolve(WEB, '..', 'crates', 'machine', 'assets');
const FILES = ['index.html', 'app.js'];

export async function buildInto(out) {
  mkdirSync(out, { recursive: true });
  await build({
    entryPoints: [path.join(WEB, 'src', 'app.js')],
    absWorkingDir: WEB,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    minify: true,
    legalComments: 'eof',
    charset: 'utf8',
    outfile: path.join(out, 'app.js'),
    logLevel: 'warning',
    define: { 'process.env.NODE_ENV': '"production"' },
  });
  writeFileSync(path.join(out, 'index.html'), readFileSync(path.join(WEB, 'src', 'index.html')));
  for (const f of FILES) {
    const raw = readFileSync(path.join(out, f));
    writeFileSync(path.join(out, `${f}.gz`), zlib.gzipSync(raw, { level: 9 }));
    writeFileSync(
      path.join(out, `${f}.br`),
      zlib.brotliCompressSync(raw, {
        params: {
          [zlib.constants.BROTLI_PARAM_QUALITY]: 11,
          [zlib.constants.BROTLI_PARAM_SIZE_HINT]: raw.length,
          [zlib.constants.BROTLI_PARAM_MODE]: zlib.constants.BROTLI_MODE_TEXT,
        },
      }),
    );
  }
}

/** Files of `dir` that differ from a fresh build in `fresh` (compressed copies: by content). */
export function differences(fresh, dir) {
  const bad = [];
  for (const f of FILES) {
    const want = readFileSync(path.join(fresh, f));
    const file = path.join(dir, f);
    if (!existsSync(file) || !want.equals(readFileSync(file))) {
      bad.push(f);
      continue;
    }
    // zlib's output may differ across Node builds; what must hold is that each copy decodes to
    // exactly the fresh file.
    const gz = path.join(dir, `${f}.gz`);
    const br = path.join(dir, `${f}.br`);
    if (!existsSync(gz) || !zlib.gunzipSync(readFileSync(gz)).equals(want)) bad.push(`${f}.gz`);
    if (!existsSync(br) || !zlib.brotliDecompressSync(readFileSync(br)).equals(want)) bad.push(`${f}.br`);
  }
  return bad;
}

function sizes(dir) {
  return FILES.map((f) => {
    const s = (x) => readFileSync(path.join(dir, x)).length;
    return `${f}: ${s(f)} B, gzip ${s(`${f}.gz`)} B, brotli ${s(`${f}.br`)} B`;
  }).join('; ');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  if (args[0] === '--check') {
    const tmp = mkdtempSync(path.join(tmpdir(), 'tether-page-check-'));
    try {
      await buildInto(tmp);
      const bad = differences(tmp, ASSETS);
      if (bad.length > 0) {
        console.error(`the committed control page in ${ASSETS} is stale (${bad.join(', ')} differ from a fresh build): run \`cd web && npm run build\` and commit the result`);
        process.exitCode = 1;
      } else {
        console.log(`control page bundle is up to date (${sizes(ASSETS)})`);
      }
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  } else {
    const out = args[0] === '--out' ? path.resolve(args[1]) : ASSETS;
    await buildInto(out);
    console.log(`built ${out}: ${sizes(out)}`);
  }
}
