// A containerd 1.6 per lab host, driven through its CRI as kubelet drives it: its own root, state,
// sockets and runc root under the lab's tmp, its CNI dirs from test/lab/cni.ts, and the offline
// pause image. Started with `nsenter --net` (`ip netns exec` remounts /sys, and runc then loses the
// cgroup mounts), so it and the shims it starts live in the host's namespace and reach its router.
//
// stop() leaves nothing: every pod sandbox stopped and removed through the CRI, then containerd
// (SIGTERM, then SIGKILL) and the shims and pause processes that named our socket (by PID, found in
// /proc), the mounts under our dir, and the namespace files of pods that were not removed.
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { run, waitFor } from './exec';
import type { Host } from './lab';
import type { CniInstall } from './cni';
import { CriClient, type PodConfig, type PodStatus } from './cri';
import { PAUSE_IMAGE, pauseImageArchive } from './images';

function config(dir: string, cni: CniInstall): string {
  return `version = 2
root = "${dir}/root"
state = "${dir}/state"
[grpc]
  address = "${dir}/containerd.sock"
[ttrpc]
  address = "${dir}/containerd.sock.ttrpc"
[debug]
  address = "${dir}/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  # this machine lacks CAP_SYS_RESOURCE for oom_score_adj -998: keep the runtime's own
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${cni.binDir}"
    conf_dir = "${cni.confDir}"
    max_conf_num = 1
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    Root = "${dir}/runc"
`;
}

/** PIDs whose command line contains `needle` (the shims name our socket), with all their descendants. */
function pidsNaming(needle: string): number[] {
  const parent = new Map<number, number>();
  const hits = new Set<number>();
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      parent.set(pid, Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
      if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(needle)) hits.add(pid);
    } catch {
      // the process exited while we looked
    }
  }
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, ppid] of parent) if (!hits.has(pid) && hits.has(ppid)) { hits.add(pid); grew = true; }
  }
  hits.delete(process.pid);
  return [...hits];
}

export class Containerd {
  readonly cri: CriClient;
  /** namespace files of the pods this lab started (removed in stop() if the runtime left them) */
  private readonly netns = new Set<string>();
  private exited = false;

  private constructor(readonly host: Host, readonly dir: string, readonly child: ChildProcess, readonly log: string) {
    this.cri = new CriClient(this.socket);
    child.on('exit', () => { this.exited = true; });
  }

  get socket(): string {
    return path.join(this.dir, 'containerd.sock');
  }

  /** Starts containerd in the host's namespace, waits for its CRI, imports the pause image. */
  static async start(host: Host, cni: CniInstall): Promise<Containerd> {
    const dir = path.join(host.lab.tmp, `ctrd-${host.name}`);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'config.toml'), config(dir, cni));
    const log = path.join(dir, 'containerd.log');
    const out = fs.openSync(log, 'a');
    const child = spawn('nsenter', [`--net=/var/run/netns/${host.ns}`, 'containerd', '--config', path.join(dir, 'config.toml')], { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    const c = new Containerd(host, dir, child, log);
    try {
      await waitFor('containerd\'s CRI', async () => {
        if (c.exited) throw new Error(`containerd exited: ${c.logTail()}`);
        return fs.existsSync(c.socket) && (await c.cri.version().then(() => true, () => false));
      }, { timeoutMs: 60_000, intervalMs: 200 });
      await run(['ctr', '--address', c.socket, '--namespace', 'k8s.io', 'images', 'import', await pauseImageArchive()], { timeoutMs: 120_000 });
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  logTail(lines = 30): string {
    try {
      return fs.readFileSync(this.log, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** RunPodSandbox; returns the sandbox's status (address, namespace). */
  async runPod(c: Omit<PodConfig, 'logDir'>): Promise<PodStatus> {
    const logDir = path.join(this.dir, 'pods', c.name);
    fs.mkdirSync(logDir, { recursive: true });
    const id = await this.cri.runPodSandbox({ ...c, logDir });
    const st = await this.cri.status(id);
    if (st.netns) this.netns.add(st.netns);
    return st;
  }

  /** StopPodSandbox then RemovePodSandbox, as kubelet does when a pod goes. */
  async removePod(id: string): Promise<void> {
    await this.cri.stop(id);
    await this.cri.remove(id);
  }

  async stop(): Promise<void> {
    if (!this.exited) {
      for (const id of await this.cri.list().catch(() => [] as string[])) {
        await this.removePod(id).catch(() => undefined); // best effort: what stays is killed below
      }
    }
    this.cri.close();
    if (!this.exited && this.child.pid) {
      this.child.kill('SIGTERM');
      await waitFor('containerd to exit', () => this.exited, { timeoutMs: 10_000, intervalMs: 100 }).catch(() => this.child.kill('SIGKILL'));
    }
    for (const pid of pidsNaming(this.socket)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m) => m && (m.startsWith(this.dir) || this.netns.has(m)));
    for (const m of mounts.reverse()) await run(['umount', '-l', m], { allowFail: true });
    for (const ns of this.netns) fs.rmSync(ns, { force: true });
  }
}
