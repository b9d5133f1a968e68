#!/usr/bin/env node
'use strict';
// Installs the Debian packages the tests, demo and benchmarks use, once: a package is only
// installed when its command is missing, so a second run does nothing and needs no network.
const { spawnSync } = require('child_process');
const fs = require('fs');

const need = [
  ['ip', 'iproute2'],
  ['nft', 'nftables'],
  ['iperf3', 'iperf3'],
  ['dig', 'bind9-dnsutils'],
  ['kdig', 'knot-dnsutils'],
  ['tcpdump', 'tcpdump'],
  ['ping', 'iputils-ping'],
  ['dnsmasq', 'dnsmasq-base'],
  ['dnsperf', 'dnsperf'],
  ['pkill', 'procps'],
  // `promtool check metrics` lints /metrics in the tests (the package brings the Prometheus server too; nothing starts it)
  ['promtool', 'prometheus'],
];

function has(cmd) {
  return ['/usr/sbin', '/usr/bin', '/sbin', '/bin', '/usr/local/bin', '/usr/local/sbin'].some((d) => fs.existsSync(`${d}/${cmd}`));
}

const missing = [...new Set(need.filter(([cmd]) => !has(cmd)).map(([, pkg]) => pkg))];
if (missing.length === 0) process.exit(0);
if (process.getuid && process.getuid() !== 0) {
  console.error(`weave.ts: missing Debian packages ${missing.join(' ')}; run as root or install them`);
  process.exit(1);
}
console.log(`weave.ts: installing Debian packages: ${missing.join(' ')}`);
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
let r = spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { stdio: 'inherit', env });
if (r.status !== 0) {
  spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  r = spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { stdio: 'inherit', env });
}
if (r.status !== 0) {
  console.error(`weave.ts: apt-get install ${missing.join(' ')} failed (exit ${r.status})`);
  process.exit(1);
}
