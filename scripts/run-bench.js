#!/usr/bin/env node
'use strict';
// Runs the compiled benchmarks (dist/bench/*.js), or those named: run-bench.js [name...] -- [args]
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const dir = path.join(__dirname, '..', 'dist', 'bench');
const argv = process.argv.slice(2);
const dd = argv.indexOf('--');
const names = dd >= 0 ? argv.slice(0, dd) : argv;
const extra = dd >= 0 ? argv.slice(dd + 1) : [];
const all = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.js')).map((f) => f.replace(/\.js$/, '')).sort() : [];
const chosen = names.length ? names : all;
let failed = 0;
for (const n of chosen) {
  if (!all.includes(n)) {
    console.error(`no benchmark "${n}" (have: ${all.join(', ')})`);
    failed++;
    continue;
  }
  console.log(`\n=== bench/${n}`);
  const r = spawnSync(process.execPath, [path.join(dir, `${n}.js`), ...extra], { stdio: 'inherit' });
  if (r.status !== 0) failed++;
}
process.exit(failed ? 1 : 0);
