// podman 4.3 per lab host with the CNI backend: its own containers.conf (CONTAINERS_CONF), storage
// root, run root and tmp dir under the lab's tmp, the host's CNI dirs from test/lab/cni.ts (network
// "weave" from `weave setup-cni`), and containers run from a busybox rootfs (--rootfs; no image,
// no registry). Run with `nsenter --net` in the host's namespace, like containerd, so the plugin
// reaches that host's router and the pod's veth lands there.
//
// cleanup() removes every container through podman (the runtime's CNI DEL), then kills by PID any
// conmon or container process that named our root, unmounts what is left under our dir.
import * as fs from 'fs';
import * as path from 'path';
import { run, type RunResult } from './exec';
import type { Host } from './lab';
import type { CniInstall } from './cni';
import { busyboxRootfs } from './images';

/** A hard limit of this process from /proc/self/limits ("Max open files", "Max processes"). */
function hardLimit(what: string): number {
  const line = fs.readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith(what));
  const n = Number(line?.slice(what.length).trim().split(/\s+/)[1]);
  return Number.isFinite(n) && n > 0 ? n : 1024; // "unlimited" or odd output: a safe low value
}

export class Podman {
  private constructor(readonly host: Host, readonly dir: string, readonly rootfs: string) {}

  static async create(host: Host, cni: CniInstall): Promise<Podman> {
    const dir = path.join(host.lab.tmp, `podman-${host.name}`);
    for (const d of ['root', 'runroot', 'tmp']) fs.mkdirSync(path.join(dir, d), { recursive: true });
    // no CAP_SYS_RESOURCE here: the containers' limits must not exceed ours
    const nofile = Math.min(hardLimit('Max open files'), 1 << 20);
    const nproc = Math.min(hardLimit('Max processes'), 32768);
    fs.writeFileSync(path.join(dir, 'containers.conf'), `[containers]
netns = "bridge"
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["${cni.binDir}"]
network_config_dir = "${cni.confDir}"
default_network = "${cni.list.name}"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "${dir}/events.log"
tmp_dir = "${dir}/tmp"
`);
    return new Podman(host, dir, await busyboxRootfs());
  }

  /** `podman ARGS` in the host's namespace with our configuration and storage. */
  podman(args: string[], opts: { allowFail?: boolean; timeoutMs?: number } = {}): Promise<RunResult> {
    return run(['nsenter', `--net=/var/run/netns/${this.host.ns}`, 'podman',
      '--root', path.join(this.dir, 'root'), '--runroot', path.join(this.dir, 'runroot'), '--tmpdir', path.join(this.dir, 'tmp'),
      ...args], {
      env: { ...process.env, CONTAINERS_CONF: path.join(this.dir, 'containers.conf') },
      allowFail: opts.allowFail,
      timeoutMs: opts.timeoutMs ?? 120_000,
    });
  }

  /** Starts a detached container on network `network` running cmd; returns its ID. */
  async runDetached(name: string, network: string, cmd: string[]): Promise<string> {
    const r = await this.podman(['run', '-d', '--name', name, '--network', network, '--rootfs', this.rootfs, ...cmd]);
    return r.stdout.trim().split('\n').pop()!;
  }

  exec(name: string, cmd: string[], opts: { allowFail?: boolean } = {}): Promise<RunResult> {
    return this.podman(['exec', name, ...cmd], opts);
  }

  async cleanup(): Promise<void> {
    await this.podman(['rm', '--all', '--force', '--time', '0'], { allowFail: true, timeoutMs: 60_000 }).catch(() => undefined);
    const root = path.join(this.dir, 'root');
    for (const e of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
      try {
        if (fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(root)) process.kill(Number(e), 'SIGKILL');
      } catch {
        // gone already
      }
    }
    const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m && m.startsWith(this.dir));
    for (const m of mounts.reverse()) await run(['umount', '-l', m], { allowFail: true });
  }
}
