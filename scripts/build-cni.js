#!/usr/bin/env node
'use strict';
// Builds the CNI plugin shim (cni/shim/weave-net.c) into cni/shim/build/weave-net, statically linked
// so `weave setup-cni` can copy it to any host's /opt/cni/bin. The supported spec versions are
// compiled in from cni/spec.ts (SUPPORTED_VERSIONS), the one place they are written. Skips the
// build when the binary is newer than both sources; never fails an install (setup-cni says what is
// missing), but exits 1 when run directly with --strict.
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const src = path.join(root, 'cni', 'shim', 'weave-net.c');
const spec = path.join(root, 'cni', 'spec.ts');
const outDir = path.join(root, 'cni', 'shim', 'build');
const out = path.join(outDir, 'weave-net');
const strict = process.argv.includes('--strict');

function fail(msg) {
  console.warn(`weave.ts: ${msg}`);
  process.exit(strict ? 1 : 0);
}

function versions() {
  const m = /export const SUPPORTED_VERSIONS = \[([^\]]*)\]/.exec(fs.readFileSync(spec, 'utf8'));
  if (!m) throw new Error(`SUPPORTED_VERSIONS not found in ${spec}`);
  const list = [...m[1].matchAll(/'(\d+\.\d+\.\d+)'/g)].map((x) => x[1]);
  if (list.length === 0) throw new Error(`SUPPORTED_VERSIONS in ${spec} lists no version`);
  return list;
}

function mtime(p) {
  try {
    return fs.statSync(p).mtimeMs;
  } catch {
    return 0;
  }
}

if (!fs.existsSync(src)) process.exit(0);
if (mtime(out) > Math.max(mtime(src), mtime(spec), mtime(__filename))) process.exit(0);
const list = versions();
fs.mkdirSync(outDir, { recursive: true });
const tmp = `${out}.tmp-${process.pid}`;
const cc = process.env.CC || 'gcc';
const args = [
  '-std=c11', '-O2', '-Wall', '-Wextra', '-Werror', '-static', '-s',
  `-DWEAVE_CNI_VERSIONS=${list.map((v) => `"${v}"`).join(',')}`,
  `-DWEAVE_CNI_LATEST="${list[list.length - 1]}"`,
  '-o', tmp, src,
];
let r = spawnSync(cc, args, { stdio: ['ignore', 'inherit', 'inherit'] });
if (r.status !== 0) {
  // no static libc here: a dynamic binary still serves this host
  r = spawnSync(cc, args.filter((a) => a !== '-static'), { stdio: ['ignore', 'inherit', 'inherit'] });
}
if (r.error || r.status !== 0) {
  fs.rmSync(tmp, { force: true });
  fail(`building the CNI plugin with ${cc} failed (${r.error ? r.error.message : `exit ${r.status}`}); weave setup-cni needs it`);
}
fs.renameSync(tmp, out);
