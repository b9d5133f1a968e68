#!/usr/bin/env node
'use strict';
// Runs the compiled test files by layer (unit, sim, netns, vm) in one node --test run, so the
// last lines are the runner's own summary. Usage: run-tests.js [layer...] [--filter substring]
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..');
const argv = process.argv.slice(2);
const fi = argv.indexOf('--filter');
const filter = fi >= 0 ? argv.splice(fi, 2)[1] : undefined;
const layers = argv.length ? argv : ['unit', 'sim', 'netns', 'vm'];

function walk(dir, out) {
  if (!fs.existsSync(dir)) return out;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (e.name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

const files = [];
for (const l of layers) files.push(...walk(path.join(root, 'dist', 'test', l), []).sort());
const selected = filter ? files.filter((f) => f.includes(filter)) : files;
if (selected.length === 0) {
  console.error(`no test files for layers ${layers.join(',')}${filter ? ` matching ${filter}` : ''}`);
  process.exit(1);
}
const env = { ...process.env };
delete env.NODE_TEST_CONTEXT; // a parent runner's context makes a nested run report nothing
const r = spawnSync(process.execPath, [
  '--test', '--enable-source-maps',
  `--test-concurrency=${process.env.WEAVE_TEST_CONCURRENCY || 2}`,
  '--test-timeout=600000',
  ...selected,
], { stdio: 'inherit', env, cwd: root });
process.exit(r.status === null ? 1 : r.status);
