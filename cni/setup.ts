// `weave setup-cni`: installs the plugin binary (the shim built from cni/shim/weave-net.c) into the
// runtime's CNI bin dir and `10-weave.conflist` into its conf dir. Each file is written beside its
// destination and renamed over it (a runtime scanning the dir sees the old file or the new one,
// never half of one), and only when its content differs (a second run changes nothing).
//
// The conflist's cniVersion is 1.0.0: the runtimes here (containerd 1.6, podman 4.3: libcni 1.1)
// and Debian's portmap accept nothing newer; weave-net itself speaks up to 1.1.0.
import * as fs from 'fs';
import * as path from 'path';
import { UsageError, WeaveError, errMsg } from '../lib/errors';

export const PLUGIN_NAME = 'weave-net';
export const CONFLIST_NAME = '10-weave.conflist';
export const NETWORK_NAME = 'weave';
export const CONFLIST_VERSION = '1.0.0';
export const DEFAULT_BIN_DIR = '/opt/cni/bin';
export const DEFAULT_CONF_DIR = '/etc/cni/net.d';

/** Where `npm run build` leaves the shim (scripts/build-cni.js), from dist/cni/. */
export function builtShim(): string {
  return path.join(__dirname, '..', '..', 'cni', 'shim', 'build', PLUGIN_NAME);
}

export interface ConflistOptions {
  /** the router's API socket, when not the default data dir's */
  socket?: string;
  /** the router's HTTP API (HOST:PORT), when not 127.0.0.1:6784 */
  api?: string;
  name?: string;
}

/** weave-net followed by the standard portmap plugin (hostPort), Weave Net's chain. */
export function conflist(o: ConflistOptions = {}): Record<string, unknown> {
  const weave: Record<string, unknown> = { type: PLUGIN_NAME };
  if (o.socket) weave.socket = o.socket;
  if (o.api) weave.api = o.api;
  return {
    cniVersion: CONFLIST_VERSION,
    name: o.name ?? NETWORK_NAME,
    plugins: [weave, { type: 'portmap', capabilities: { portMappings: true }, snat: true }],
  };
}

export type InstallOutcome = 'installed' | 'unchanged';

/** Writes data to dest atomically unless dest already holds exactly data. */
export function installFile(dest: string, data: Buffer, mode: number): InstallOutcome {
  let same = false;
  try {
    same = fs.readFileSync(dest).equals(data) && (fs.statSync(dest).mode & 0o777) === mode;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new WeaveError('EINSTALL', `cannot read ${dest}: ${errMsg(e)}`, { dest });
  }
  if (same) return 'unchanged';
  const tmp = path.join(path.dirname(dest), `.${path.basename(dest)}.tmp-${process.pid}`);
  try {
    const fd = fs.openSync(tmp, 'w', mode);
    try {
      fs.writeSync(fd, data);
      fs.fchmodSync(fd, mode);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, dest);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw new WeaveError('EINSTALL', `cannot install ${dest}: ${errMsg(e)}`, { dest }, { cause: e });
  }
  return 'installed';
}

export interface SetupOptions extends ConflistOptions { binDir: string; confDir: string; shim?: string }

export interface SetupResult { plugin: { path: string; outcome: InstallOutcome }; conflist: { path: string; outcome: InstallOutcome } }

export function setupCni(o: SetupOptions): SetupResult {
  // the shim connects to an IPv4 HOST:PORT or a socket path as written: check them here, not at the first pod
  if (o.api !== undefined && !/^\d{1,3}(\.\d{1,3}){3}:\d{1,5}$/.test(o.api)) throw new UsageError(`--http-addr "${o.api}" must be IPV4:PORT (the plugin does not resolve names)`);
  if (o.socket !== undefined && (!path.isAbsolute(o.socket) || o.socket.length > 107)) throw new UsageError(`--socket "${o.socket}" must be an absolute path of at most 107 bytes`);
  const shim = o.shim ?? builtShim();
  let bin: Buffer;
  try {
    bin = fs.readFileSync(shim);
  } catch (e) {
    throw new WeaveError('ENOPLUGIN', `the CNI plugin is not built (${shim}: ${errMsg(e)}): run "npm run build" (it needs gcc)`, { shim });
  }
  for (const d of [o.binDir, o.confDir]) {
    try {
      fs.mkdirSync(d, { recursive: true });
    } catch (e) {
      throw new WeaveError('EINSTALL', `cannot create ${d}: ${errMsg(e)}`, { dir: d });
    }
  }
  const pluginPath = path.join(o.binDir, PLUGIN_NAME);
  const confPath = path.join(o.confDir, CONFLIST_NAME);
  // the binary first: a conflist must never name a plugin that is not there yet
  const plugin = installFile(pluginPath, bin, 0o755);
  const conf = installFile(confPath, Buffer.from(JSON.stringify(conflist(o), null, 2) + '\n'), 0o644);
  return { plugin: { path: pluginPath, outcome: plugin }, conflist: { path: confPath, outcome: conf } };
}
