// The CNI side of a lab host: `weave setup-cni` into the host's own bin and conf dirs (in the lab's
// tmp, never /opt/cni or /etc/cni), Debian's reference plugins beside it (portmap is chained after
// weave-net; containerd runs loopback itself; bridge and host-local are the bench's baseline), and
// calling the plugin directly inside the host's namespace, as a runtime would.
import * as fs from 'fs';
import * as path from 'path';
import type { Host } from './lab';
import { run, type RunResult } from './exec';

export const DEBIAN_PLUGINS_DIR = '/usr/lib/cni';
const DEBIAN_PLUGINS = ['loopback', 'portmap', 'bridge', 'host-local'];

export interface CniInstall {
  binDir: string;
  confDir: string;
  /** the conflist `weave setup-cni` wrote */
  conflist: string;
  /** its text, for calling the plugin directly (the first plugin's configuration is built from it) */
  list: { cniVersion: string; name: string; plugins: Array<Record<string, unknown>> };
}

/** setup-cni for this host (its data dir names the router's socket), plus Debian's plugins. */
export async function installCni(host: Host): Promise<CniInstall> {
  const base = path.join(host.lab.tmp, `cni-${host.name}`);
  const binDir = path.join(base, 'bin');
  const confDir = path.join(base, 'net.d');
  const r = await host.weave(['setup-cni', '--bin-dir', binDir, '--conf-dir', confDir]);
  if (!/installed .*weave-net/.test(r.stdout)) throw new Error(`weave setup-cni did not install the plugin: ${r.stdout}${r.stderr}`);
  for (const p of DEBIAN_PLUGINS) fs.copyFileSync(path.join(DEBIAN_PLUGINS_DIR, p), path.join(binDir, p));
  for (const p of DEBIAN_PLUGINS) fs.chmodSync(path.join(binDir, p), 0o755);
  const conflist = path.join(confDir, '10-weave.conflist');
  return { binDir, confDir, conflist, list: JSON.parse(fs.readFileSync(conflist, 'utf8')) };
}

/** The configuration a runtime hands weave-net: the conflist's first plugin with the list's name and version. */
export function pluginConf(c: CniInstall, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ cniVersion: c.list.cniVersion, name: c.list.name, ...c.list.plugins[0], ...extra });
}

export interface PluginCall extends RunResult {
  /** stdout parsed (a result or an error object), undefined when empty */
  json?: any;
  ms: number;
}

/** Runs the installed weave-net in the host's namespace with env (CNI_PATH added) and stdin. */
export async function callPlugin(host: Host, c: CniInstall, env: Record<string, string>, stdin: string): Promise<PluginCall> {
  const t0 = process.hrtime.bigint();
  const r = await run(['ip', 'netns', 'exec', host.ns, path.join(c.binDir, 'weave-net')], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', CNI_PATH: c.binDir, ...env },
    input: stdin,
    allowFail: true,
    timeoutMs: 120_000,
  });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  return { ...r, ms, json: r.stdout.trim() ? JSON.parse(r.stdout) : undefined };
}
