#!/usr/bin/env node
'use strict';
// Builds the optional N-API addon (native/) with the node-gyp that ships inside npm.
// Never fails the install: the router falls back to slower I/O and says so in its log.
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const dir = path.join(__dirname, '..', 'native');
if (!fs.existsSync(path.join(dir, 'binding.gyp'))) process.exit(0);

function findNodeGyp() {
  const candidates = [];
  if (process.env.npm_execpath) candidates.push(path.join(path.dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  candidates.push('/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js', '/usr/local/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js');
  return candidates.find((p) => fs.existsSync(p));
}

// `npm run build` calls this too, so a changed addon source is never run against an old binary; the
// rebuild (about 4 s) happens only when a source is newer than the built module.
function upToDate() {
  const built = path.join(dir, 'build', 'Release', 'weave_tunio.node');
  if (!fs.existsSync(built)) return false;
  const t = fs.statSync(built).mtimeMs;
  return fs.readdirSync(dir).filter((f) => /\.(c|h|gyp)$/.test(f)).every((f) => fs.statSync(path.join(dir, f)).mtimeMs <= t);
}
if (process.argv.includes('--if-changed') && upToDate()) process.exit(0);

const gyp = findNodeGyp();
if (!gyp) {
  console.warn('weave.ts: node-gyp not found; the native datapath addon is not built (the router will use the slower fallback)');
  process.exit(0);
}
const args = [gyp, 'rebuild', '--silent'];
if (fs.existsSync('/usr/include/node/node_api.h')) args.push('--nodedir=/usr');
const r = spawnSync(process.execPath, args, { cwd: dir, stdio: ['ignore', 'inherit', 'inherit'] });
if (r.status !== 0) console.warn(`weave.ts: native addon build failed (exit ${r.status}); the router will use the slower fallback`);
