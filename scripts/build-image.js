#!/usr/bin/env node
'use strict';
// Builds a runnable OCI image archive of weave.ts OFFLINE, from this checkout's build and this
// machine's own files (no registry, no base image, no network):
//
//   1. the product: the files `npm pack` would ship (package.json "files"), the built native addon
//      and CNI shim, and the production node_modules (every package-lock entry not marked dev),
//      laid out in /opt/weave with /usr/local/bin/weave pointing at its launcher;
//   2. the userland it runs: node, ip, nft, nsenter and env from this host, with every shared
//      library `ldd` lists for them and for the native modules (merged-/usr layout, as Debian);
//   3. one uncompressed layer tar (sorted, mtime 0, root-owned: the same inputs give the same
//      bytes), its config and manifest as sha256-addressed blobs, an OCI index naming the image
//      IMAGE (default weave.local/weave-ts:<version>, the name k8s/weave-daemonset.yaml uses), all
//      tarred as an OCI image layout that `ctr images import` and `docker load` (25+) accept.
//
// The archive is cached in .cache/image/ under a hash of everything that goes into it (each file's
// path, mode and content, the image name and this script), so a second run with nothing changed
// only hashes (about a second) and prints the same path.
//
// Usage: node scripts/build-image.js [--image NAME:TAG] [--out FILE] [--json]
//        node scripts/build-image.js --stage DIR    (only step 1 into DIR: what image/Dockerfile copies)
// Needs `npm run build` first (dist/, native/build, cni/shim/build).
const { spawnSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const ROOT = path.join(__dirname, '..');
const PKG = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
const APP = 'opt/weave';
/** built artefacts `files` leaves out (they are made by `npm ci`'s prepare on the user's machine) */
const BUILT = ['native/build/Release/weave_tunio.node', 'cni/shim/build/weave-net'];
/** host programs the router runs (host/ip.ts: ip, nft, nsenter) or needs to start (env for bin/weave's #!) */
const HOST_BINS = ['/usr/bin/node', '/usr/sbin/ip', '/usr/sbin/nft', '/usr/bin/nsenter', '/usr/bin/env'];
const ENV_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function fail(msg) {
  process.stderr.write(`build-image: ${msg}\n`);
  process.exit(1);
}

function sh(argv, opts = {}) {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  if (r.error) fail(`cannot run ${argv[0]}: ${r.error.message}`);
  if (r.status !== 0) fail(`${argv.join(' ')} exited ${r.status}: ${(r.stderr || '').trim().slice(-2000)}`);
  return r.stdout;
}

function parseArgs(argv) {
  const o = { image: `weave.local/weave-ts:${PKG.version}`, out: undefined, json: false, stage: undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--image') o.image = val();
    else if (a === '--out') o.out = path.resolve(val());
    else if (a === '--stage') o.stage = path.resolve(val());
    else if (a === '--json') o.json = true;
    else fail(`unknown argument ${a} (usage: build-image.js [--image NAME:TAG] [--out FILE] [--json] | --stage DIR)`);
  }
  if (!/^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$/.test(o.image)) fail(`--image ${o.image}: want NAME:TAG (lower-case name)`);
  return o;
}

/** The product's files, relative to ROOT: what `npm pack` ships, the built artefacts, production node_modules. */
function productFiles() {
  const pack = JSON.parse(sh(['npm', 'pack', '--ignore-scripts', '--dry-run', '--json'], { cwd: ROOT }));
  const files = pack[0].files.map((f) => f.path);
  for (const b of BUILT) {
    if (!fs.existsSync(path.join(ROOT, b))) fail(`${b} is missing: run "npm run build" (or npm ci) first`);
    files.push(b);
  }
  if (!fs.existsSync(path.join(ROOT, 'dist', 'weave.js'))) fail('dist/weave.js is missing: run "npm run build" first');
  const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'package-lock.json'), 'utf8'));
  for (const [key, meta] of Object.entries(lock.packages)) {
    if (!key || meta.dev || meta.link) continue;
    const dir = path.join(ROOT, key);
    if (!fs.existsSync(dir)) {
      if (meta.optional) continue; // another platform's optional package
      fail(`${key} is in package-lock.json but not installed: run npm ci`);
    }
    walk(dir, (f) => files.push(path.relative(ROOT, f)));
  }
  return [...new Set(files)].filter((f) => !otherPlatform(f)).sort();
}

/** Native modules' prebuilt binaries for other platforms (sodium-native, koffi, lmdb ship them all):
 *  left out, the image is this machine's architecture on Linux with glibc. */
function otherPlatform(rel) {
  const arch = process.arch;
  return new RegExp(`/prebuilds/(?!linux-${arch}/)[^/]+/`).test(rel) || new RegExp(`/koffi/build/koffi/(?!linux_${arch}/)[^/]+/`).test(rel) || /\.musl\.node$/.test(rel);
}

/** The OCI name of this machine's architecture. */
const OCI_ARCH = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' }[process.arch] || process.arch;

function walk(dir, visit) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    // nested packages are entries of their own in the lock (and may be dev-only)
    if (e.isDirectory()) { if (e.name !== 'node_modules') walk(p, visit); } else if (e.isFile() || e.isSymbolicLink()) visit(p);
  }
}

/** Shared libraries (absolute, resolved by the host's loader) that an ELF file needs; [] for non-ELF. */
function libsOf(file) {
  const head = Buffer.alloc(4);
  const fd = fs.openSync(file, 'r');
  try { fs.readSync(fd, head, 0, 4, 0); } finally { fs.closeSync(fd); }
  if (head.toString('latin1') !== '\x7fELF') return [];
  const r = spawnSync('ldd', [file], { encoding: 'utf8' });
  if (r.status !== 0) return []; // statically linked (the CNI shim)
  const out = [];
  for (const line of r.stdout.split('\n')) {
    if (/not found/.test(line)) fail(`${file}: ${line.trim()}`);
    const m = line.match(/(?:=>\s*)?(\/\S+)\s+\(0x/);
    if (m) out.push(m[1]);
  }
  return out;
}

/** Where a host file goes in the merged-/usr rootfs (/lib/x -> usr/lib/x, /lib64/x -> usr/lib64/x). */
function rootfsPath(abs) {
  return abs.replace(/^\/(lib|lib64|bin|sbin)\//, '/usr/$1/').slice(1);
}

/** [rootfs path, host path] of every file of the image, with the ELF closure of libraries. */
function imageInputs(product) {
  const entries = product.map((rel) => [path.posix.join(APP, rel), path.join(ROOT, rel)]);
  const elf = [...HOST_BINS, ...product.filter((r) => r.endsWith('.node') || BUILT.includes(r)).map((r) => path.join(ROOT, r))];
  const libs = new Set();
  for (const f of HOST_BINS) if (!fs.existsSync(f)) fail(`${f} is missing on this machine (install nodejs, iproute2, nftables, util-linux)`);
  for (const f of elf) for (const l of libsOf(f)) libs.add(l);
  for (const f of HOST_BINS) entries.push([rootfsPath(f), f]);
  for (const l of libs) entries.push([rootfsPath(l), l]);
  return entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

function inputsHash(entries, image) {
  const h = crypto.createHash('sha256');
  h.update(fs.readFileSync(__filename));
  h.update(`\0${image}\0`);
  for (const [dst, src] of entries) {
    const st = fs.statSync(src);
    h.update(`${dst}\0${st.mode & 0o777}\0${st.size}\0`);
    h.update(fs.readFileSync(src));
  }
  return h.digest('hex');
}

function copyInto(root, entries) {
  for (const [dst, src] of entries) {
    const to = path.join(root, dst);
    fs.mkdirSync(path.dirname(to), { recursive: true });
    fs.copyFileSync(src, to); // follows symlinks: the image gets the file the host resolves to
    fs.chmodSync(to, fs.statSync(src).mode & 0o777);
  }
}

/** The skeleton around the files: merged-/usr links, mount points, /tmp, users, the weave command. */
function skeleton(root) {
  for (const d of ['usr/bin', 'usr/sbin', 'usr/lib', 'usr/lib64', 'usr/local/bin', 'etc', 'proc', 'sys', 'dev', 'run', 'tmp', 'var/lib/weave', 'opt/cni/bin', 'etc/cni/net.d']) {
    fs.mkdirSync(path.join(root, d), { recursive: true });
  }
  for (const d of ['bin', 'sbin', 'lib', 'lib64']) fs.symlinkSync(`usr/${d}`, path.join(root, d));
  fs.chmodSync(path.join(root, 'tmp'), 0o1777);
  fs.symlinkSync('/run', path.join(root, 'var/run'));
  fs.writeFileSync(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n');
  fs.writeFileSync(path.join(root, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
  fs.writeFileSync(path.join(root, 'etc/nsswitch.conf'), 'passwd: files\ngroup: files\nhosts: files dns\n');
  fs.writeFileSync(path.join(root, 'etc/hosts'), '127.0.0.1 localhost\n');
  // names nft and ip may print or parse (ports, protocols), when the host has them
  for (const f of ['etc/protocols', 'etc/services']) if (fs.existsSync(`/${f}`)) fs.copyFileSync(`/${f}`, path.join(root, f));
  fs.symlinkSync(`/${APP}/bin/weave`, path.join(root, 'usr/local/bin/weave'));
}

function writeBlob(layout, buf) {
  const d = crypto.createHash('sha256').update(buf).digest('hex');
  fs.writeFileSync(path.join(layout, 'blobs', 'sha256', d), buf);
  return { digest: `sha256:${d}`, size: buf.length };
}

/** Tars the rootfs as a layer and writes the OCI layout around it; returns the manifest's digest. */
function ociLayout(root, layout, image) {
  fs.mkdirSync(path.join(layout, 'blobs', 'sha256'), { recursive: true });
  const layerTar = path.join(path.dirname(layout), 'layer.tar');
  sh(['tar', '--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '--format=gnu', '-C', root, '-cf', layerTar, '.']);
  const layerBuf = fs.readFileSync(layerTar);
  const layer = writeBlob(layout, layerBuf);
  fs.rmSync(layerTar);
  const config = writeBlob(layout, Buffer.from(JSON.stringify({
    architecture: OCI_ARCH,
    os: 'linux',
    created: '1970-01-01T00:00:00Z',
    config: {
      // the router's node flags and environment (lib/runtime.ts): `weave router` in the DaemonSet gets what `weave launch` gives
      Env: [`PATH=${ENV_PATH}`, 'WEAVE_DATA_DIR=/var/lib/weave', ...Object.entries(require(path.join(ROOT, 'dist', 'lib', 'runtime.js')).routerImageEnv()).map(([k, v]) => `${k}=${v}`)],
      Cmd: ['weave', 'router'],
      WorkingDir: '/',
      Labels: { 'org.opencontainers.image.title': 'weave.ts', 'org.opencontainers.image.version': PKG.version },
    },
    rootfs: { type: 'layers', diff_ids: [layer.digest] },
    history: [{ created: '1970-01-01T00:00:00Z', created_by: 'scripts/build-image.js (offline, from the local build and host files)' }],
  })));
  const manifest = writeBlob(layout, Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
  })));
  fs.writeFileSync(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      ...manifest,
      annotations: { 'io.containerd.image.name': image, 'org.opencontainers.image.ref.name': image.slice(image.lastIndexOf(':') + 1) },
    }],
  }));
  return { manifest: manifest.digest, layerBytes: layerBuf.length };
}

/** Keeps the newest `keep` archives in the cache (each is ~140 MiB); a test using an older one has it open. */
function prune(cacheDir, keep) {
  const olds = fs.readdirSync(cacheDir).filter((f) => /^weave-ts-[0-9a-f]+\.oci\.tar$/.test(f))
    .map((f) => ({ f, t: fs.statSync(path.join(cacheDir, f)).mtimeMs })).sort((a, b) => b.t - a.t).slice(keep);
  for (const { f } of olds) for (const x of [f, `${f}.json`]) fs.rmSync(path.join(cacheDir, x), { force: true });
}

function main() {
  const o = parseArgs(process.argv.slice(2));
  const product = productFiles();
  if (o.stage) {
    // image/Dockerfile's build stage: only the product, on a Debian base that brings the userland
    copyInto(o.stage, product.map((rel) => [rel, path.join(ROOT, rel)]));
    process.stdout.write(`${o.stage}: ${product.length} files\n`);
    return;
  }
  const entries = imageInputs(product);
  const key = inputsHash(entries, o.image);
  const cacheDir = path.join(ROOT, '.cache', 'image');
  const archive = path.join(cacheDir, `weave-ts-${key.slice(0, 16)}.oci.tar`);
  const meta = `${archive}.json`;
  let info;
  if (fs.existsSync(archive) && fs.existsSync(meta)) {
    info = { ...JSON.parse(fs.readFileSync(meta, 'utf8')), cached: true };
  } else {
    fs.mkdirSync(cacheDir, { recursive: true });
    const work = fs.mkdtempSync(path.join(cacheDir, 'build-'));
    try {
      const root = path.join(work, 'rootfs');
      const layout = path.join(work, 'layout');
      skeleton(root);
      copyInto(root, entries);
      const { manifest, layerBytes } = ociLayout(root, layout, o.image);
      const tmp = path.join(work, 'image.tar');
      sh(['tar', '--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '-C', layout, '-cf', tmp, '.']);
      info = { image: o.image, archive, manifest, layerBytes, files: entries.length, key };
      fs.writeFileSync(`${meta}.tmp-${process.pid}`, JSON.stringify(info));
      fs.renameSync(tmp, archive); // whole files only: a concurrent build of the same key writes the same bytes
      fs.renameSync(`${meta}.tmp-${process.pid}`, meta);
      info = { ...info, cached: false };
      prune(cacheDir, 3);
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  }
  if (o.out) {
    fs.copyFileSync(archive, `${o.out}.tmp-${process.pid}`);
    fs.renameSync(`${o.out}.tmp-${process.pid}`, o.out);
    info = { ...info, archive: o.out };
  }
  if (o.json) process.stdout.write(`${JSON.stringify(info)}\n`);
  else process.stdout.write(`${info.archive}\n  image ${info.image} (${(info.layerBytes / 1048576).toFixed(0)} MiB, ${info.files} files${info.cached ? ', cached' : ''})\n  load it: ctr -n k8s.io images import ${info.archive}   (or: docker load -i ${info.archive})\n`);
}

main();
