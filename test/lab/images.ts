// What the lab's container runtimes run, made offline (no registry is reachable here) and cached in
// .cache/cni/ at the repository's root: the pause image containerd's CRI starts each pod sandbox
// from (a static pause built from test/lab/pause.c, packed as an OCI image archive for
// `ctr images import`), the libcni test driver (test/lab/cni-drive.go built with Go against Debian's
// libcni, no module download), and a rootfs for podman's --rootfs (Debian's static busybox).
// Every artefact is written beside its final name and renamed into place, so concurrent test files
// that build it at once each see a whole file.
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { run } from './exec';

export const CACHE_DIR = path.join(__dirname, '..', '..', '..', '.cache', 'cni');
/** test/lab sources (the .c and .go files are not compiled by tsc, so they are read from the tree) */
const LAB_SRC = path.join(__dirname, '..', '..', '..', 'test', 'lab');
export const PAUSE_IMAGE = 'weave.local/pause:1';

function tmpName(p: string): string {
  return `${p}.tmp-${process.pid}-${Math.random().toString(16).slice(2)}`;
}

/** The cached file for `name` whose content depends on `inputs`; built by `make(tmpPath)` when missing. */
async function cached(name: string, inputs: string[], make: (tmp: string) => Promise<void>): Promise<string> {
  const h = createHash('sha256');
  for (const f of inputs) h.update(fs.readFileSync(f));
  const out = path.join(CACHE_DIR, `${name}-${h.digest('hex').slice(0, 12)}`);
  if (fs.existsSync(out)) return out;
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  const tmp = tmpName(out);
  try {
    await make(tmp);
    try {
      fs.renameSync(tmp, out);
    } catch (e) {
      if (!fs.existsSync(out)) throw e; // another test file built the same thing first: use theirs
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return out;
}

/** The libcni driver, built once per source version. */
export function cniDriveBinary(): Promise<string> {
  const src = path.join(LAB_SRC, 'cni-drive.go');
  return cached('cni-drive', [src], async (tmp) => {
    const work = `${tmp}.src`;
    fs.mkdirSync(work, { recursive: true });
    try {
      fs.copyFileSync(src, path.join(work, 'main.go'));
      await run(['go', 'build', '-o', tmp, 'main.go'], {
        cwd: work,
        timeoutMs: 300_000,
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', GOPATH: '/usr/share/gocode', GO111MODULE: 'off', GOFLAGS: '', GOCACHE: path.join(CACHE_DIR, 'go-build'), HOME: CACHE_DIR },
      });
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
}

/** An OCI image archive holding one static /pause, named PAUSE_IMAGE. */
export function pauseImageArchive(): Promise<string> {
  const src = path.join(LAB_SRC, 'pause.c');
  return cached('pause-image.tar', [src], async (tmp) => {
    const work = `${tmp}.d`;
    const root = path.join(work, 'rootfs');
    const layout = path.join(work, 'layout');
    fs.mkdirSync(root, { recursive: true });
    fs.mkdirSync(path.join(layout, 'blobs', 'sha256'), { recursive: true });
    try {
      await run(['gcc', '-static', '-Os', '-s', '-o', path.join(root, 'pause'), src]);
      const layerTar = path.join(work, 'layer.tar');
      await run(['tar', '--sort=name', '--mtime=@0', '--owner=0', '--group=0', '--numeric-owner', '-C', root, '-cf', layerTar, '.']);
      const blob = (buf: Buffer): { digest: string; size: number } => {
        const d = createHash('sha256').update(buf).digest('hex');
        fs.writeFileSync(path.join(layout, 'blobs', 'sha256', d), buf);
        return { digest: `sha256:${d}`, size: buf.length };
      };
      const layer = blob(fs.readFileSync(layerTar));
      const config = blob(Buffer.from(JSON.stringify({
        architecture: 'amd64', os: 'linux', config: { Entrypoint: ['/pause'] }, rootfs: { type: 'layers', diff_ids: [layer.digest] },
      })));
      const manifest = blob(Buffer.from(JSON.stringify({
        schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
      })));
      fs.writeFileSync(path.join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
      fs.writeFileSync(path.join(layout, 'index.json'), JSON.stringify({
        schemaVersion: 2,
        manifests: [{
          mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest,
          annotations: { 'io.containerd.image.name': PAUSE_IMAGE, 'org.opencontainers.image.ref.name': PAUSE_IMAGE.split(':')[1] },
        }],
      }));
      await run(['tar', '-C', layout, '-cf', tmp, '.']);
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
}

const BUSYBOX = '/bin/busybox';
const APPLETS = ['sh', 'ping', 'sleep', 'ip', 'nc', 'cat', 'wget', 'httpd', 'echo', 'ls'];

/** A directory podman can run with --rootfs: Debian's static busybox and a few applets. */
export async function busyboxRootfs(): Promise<string> {
  return cached('busybox-rootfs', [BUSYBOX], async (tmp) => {
    for (const d of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'run', 'var/www']) fs.mkdirSync(path.join(tmp, d), { recursive: true });
    fs.copyFileSync(BUSYBOX, path.join(tmp, 'bin', 'busybox'));
    fs.chmodSync(path.join(tmp, 'bin', 'busybox'), 0o755);
    for (const a of APPLETS) fs.symlinkSync('busybox', path.join(tmp, 'bin', a));
    fs.writeFileSync(path.join(tmp, 'etc', 'passwd'), 'root:x:0:0:root:/:/bin/sh\n');
    fs.writeFileSync(path.join(tmp, 'etc', 'group'), 'root:x:0:\n');
  });
}
