#!/usr/bin/env node
'use strict';
// Installs the Debian packages the tests, demo and benchmarks use (--peers: also bench/peers'), once: a package is only
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
  // CNI (cni/): the plugin shim is C (static, so it needs libc.a); the tests drive it through real
  // runtimes: containerd 1.6's CRI (runc as its runtime), podman 4.3 with the CNI backend (conmon
  // comes with it), Debian's reference plugins (portmap is chained; bridge + host-local are the
  // bench's baseline), libcni for the cni-drive test client built with Go from Debian's packages
  // (no module download), and a static busybox as the userland of the test containers' rootfs.
  ['gcc', 'gcc'],
  ['/usr/include/stdio.h', 'libc6-dev'],
  ['containerd', 'containerd'],
  ['runc', 'runc'],
  ['podman', 'podman'],
  ['/usr/lib/cni/portmap', 'containernetworking-plugins'],
  ['go', 'golang-go'],
  ['/usr/share/gocode/src/github.com/containernetworking/cni/libcni', 'golang-github-appc-cni-dev'],
  // its doc dir, not /bin/busybox: the dynamic busybox package has that too, and cannot run in a bare rootfs
  ['/usr/share/doc/busybox-static', 'busybox-static'],
  // the /ui page's browser test: Debian's Chromium, driven by playwright-core (which never downloads a browser)
  ['/usr/bin/chromium', 'chromium'],
  // Docker (docker/): dockerd 20.10 and its client from Debian's docker.io (it brings containerd,
  // runc and tini); by path, because another docker client may be installed elsewhere (/usr/local/bin)
  // without a daemon. Its own dockerd must not start (the tests run theirs): see policy-rc.d below.
  ['/usr/sbin/dockerd', 'docker.io'],
  // Kubernetes (k8s/): the fixture API server's HTTPS certificate; scripts/build-image.js lists the
  // libraries of what goes into the image with ldd. (kubectl is preinstalled on the test machine:
  // bookworm has no package for it.)
  ['openssl', 'openssl'],
  ['ldd', 'libc-bin'],
  // bench/sleeve and bench/peers: request/response latency (sockperf ping-pong)
  ['sockperf', 'sockperf'],
];
// `ensure-deps.js --peers`: bench/peers' contenders (Debian's nebula, wireguard-go with wg, tinc 1.0);
// only that bench asks for them, npm test does not install them
if (process.argv.includes('--peers')) {
  need.push(['nebula', 'nebula'], ['nebula-cert', 'nebula'], ['wireguard-go', 'wireguard-go'], ['wg', 'wireguard-tools'], ['tincd', 'tinc']);
}

/** A command on the usual paths, or an absolute path that exists. */
function has(cmd) {
  if (cmd.startsWith('/')) return fs.existsSync(cmd);
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
// Packages must not start their services (docker.io would start a dockerd on /var/run/docker.sock in
// the machine's namespace): the standard policy-rc.d that refuses every start, only while we install
// and only when the machine has none of its own. Another apt-get (a parallel install on this machine)
// may hold the dpkg lock for a while: wait for it.
const POLICY = '/usr/sbin/policy-rc.d';
const ownPolicy = !fs.existsSync(POLICY);
if (ownPolicy) fs.writeFileSync(POLICY, '#!/bin/sh\n# weave.ts ensure-deps: no service starts while packages install\nexit 101\n', { mode: 0o755 });
const install = ['-o', 'DPkg::Lock::Timeout=600', 'install', '-y', '-qq', '--no-install-recommends', ...missing];
let r;
try {
  r = spawnSync('apt-get', install, { stdio: 'inherit', env });
  if (r.status !== 0) {
    spawnSync('apt-get', ['-o', 'DPkg::Lock::Timeout=600', 'update', '-qq'], { stdio: 'inherit', env });
    r = spawnSync('apt-get', install, { stdio: 'inherit', env });
  }
} finally {
  if (ownPolicy) fs.rmSync(POLICY, { force: true });
}
if (r.status !== 0) {
  console.error(`weave.ts: apt-get install ${missing.join(' ')} failed (exit ${r.status})`);
  process.exit(1);
}
