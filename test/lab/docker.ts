// dockerd 20.10 (Debian's docker.io) per lab host, for the Docker network/IPAM driver tests.
//
// Two dockerds on one machine: each has its own data root, exec root, pid file and API socket under
// the lab's tmp, and runs in its host's network namespace (nsenter --net, as the reference says:
// `ip netns exec` loses runc's cgroup mounts). The one thing dockerd does not let us move is where it
// finds legacy plugins: /run/docker/plugins is fixed in its source (pkg/plugins; no flag, no
// environment variable, and the exec root does not change it). So each host also gets a persistent
// mount namespace of its own (unshare --mount=FILE) in which /run/docker/plugins is a bind mount of
// that host's plugin directory, and its dockerd runs in it: each sees only its own router's
// weave.sock (the router, in the machine's mount namespace, serves it with --docker-plugin-socket).
// The namespace is persistent, not dockerd's own, because dockerd keeps its containers' network
// namespaces as bind mounts in it: a restarted dockerd (live-restore) must find them again.
//
// Images come offline: `docker import` of a busybox rootfs (Debian's busybox-static). stop() removes
// every container through Docker, then stops dockerd by PID, kills by PID whatever of ours is left
// (containers that did not go, containerd, shims) and unmounts the namespace.
import * as fs from 'fs';
import * as path from 'path';
import { spawn, type ChildProcess } from 'child_process';
import { run, waitFor, type RunResult } from './exec';
import type { Host } from './lab';
import { busyboxRootfs } from './images';

export const DOCKER = '/usr/bin/docker';
export const DOCKERD = '/usr/sbin/dockerd';
export const BUSYBOX_IMAGE = 'weave.local/busybox:1';
/** dockerd looks for plugins' sockets here (fixed) */
const PLUGINS_DIR = '/run/docker/plugins';

export class DockerDaemon {
  readonly dir: string;
  readonly socket: string;
  readonly pluginDir: string;
  /** the socket the host's router serves (--docker-plugin-socket) */
  readonly pluginSocket: string;
  private readonly mntns: string;
  private child: ChildProcess | undefined;
  private log = '';

  constructor(readonly host: Host) {
    this.dir = path.join(host.lab.tmp, `d-${host.name}`);
    this.socket = path.join(this.dir, 'docker.sock');
    this.pluginDir = path.join(this.dir, 'plugins');
    this.pluginSocket = path.join(this.pluginDir, 'weave.sock');
    this.mntns = path.join(this.dir, 'mnt');
  }

  /** The router flags that make the host's router serve this dockerd. */
  routerFlags(): string[] {
    return ['--docker-socket', this.socket, '--docker-plugin-socket', this.pluginSocket];
  }

  /** DOCKER_HOST for this daemon (the weave CLI resolves container names through it). */
  env(): Record<string, string> {
    return { DOCKER_HOST: `unix://${this.socket}` };
  }

  output(): string { return this.log; }

  /** Starts dockerd (first time: its mount namespace, configuration and image); waits until it answers. */
  async start(): Promise<void> {
    if (!fs.existsSync(this.mntns)) await this.makeMountNamespace();
    const conf = path.join(this.dir, 'daemon.json');
    fs.writeFileSync(conf, JSON.stringify({
      'data-root': path.join(this.dir, 'root'),
      'exec-root': path.join(this.dir, 'exec'),
      pidfile: path.join(this.dir, 'docker.pid'),
      hosts: [`unix://${this.socket}`],
      bip: '10.82.0.1/24',
      'storage-driver': 'overlay2',
      // containers keep running (and their endpoints joined) while dockerd restarts
      'live-restore': true,
      // the embedded DNS server forwards what it does not know to weaveDNS, through the weave interface
      dns: ['169.254.53.53'],
      'dns-search': ['weave.local'],
      'default-ulimits': { nofile: { Name: 'nofile', Soft: 20000, Hard: 20000 } },
    }));
    const child = spawn('nsenter', [`--mount=${this.mntns}`, `--net=/var/run/netns/${this.host.ns}`, DOCKERD, '--config-file', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { this.log += d; });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { this.log += d; });
    this.child = child;
    await waitFor(`dockerd in ${this.host.name}`, async () => {
      if (child.exitCode !== null) throw new Error(`dockerd exited (${child.exitCode}):\n${this.log.split('\n').slice(-15).join('\n')}`);
      return (await this.docker(['version', '--format', '{{.Server.Version}}'], { allowFail: true, timeoutMs: 10_000 })).code === 0;
    }, { timeoutMs: 60_000, intervalMs: 300 });
    if ((await this.docker(['images', '-q', BUSYBOX_IMAGE])).stdout.trim() === '') await this.importBusybox();
  }

  private async makeMountNamespace(): Promise<void> {
    fs.mkdirSync(this.pluginDir, { recursive: true });
    fs.mkdirSync(PLUGINS_DIR, { recursive: true }); // the mount point, in the machine's root
    fs.writeFileSync(this.mntns, '');
    await run(['unshare', `--mount=${this.mntns}`, '--propagation', 'private', 'mount', '--bind', this.pluginDir, PLUGINS_DIR]);
  }

  private async importBusybox(): Promise<void> {
    const rootfs = await busyboxRootfs();
    const tar = path.join(this.dir, 'busybox.tar');
    await run(['tar', '-C', rootfs, '-cf', tar, '.']);
    await this.docker(['import', tar, BUSYBOX_IMAGE]);
    fs.rmSync(tar, { force: true });
  }

  /** `docker ARGS` (Debian's client) against this daemon. */
  docker(args: string[], opts: { allowFail?: boolean; timeoutMs?: number } = {}): Promise<RunResult> {
    return run([DOCKER, '-H', `unix://${this.socket}`, ...args], { allowFail: opts.allowFail, timeoutMs: opts.timeoutMs ?? 60_000 });
  }

  /** `docker run -d --name NAME --net NET busybox sleep` and its address on NET. */
  async runContainer(name: string, network: string, extra: string[] = []): Promise<string> {
    await this.docker(['run', '-d', '--name', name, '--hostname', name, '--net', network, ...extra, BUSYBOX_IMAGE, 'sleep', '3600'], { timeoutMs: 90_000 });
    return this.addressOn(name, network);
  }

  async addressOn(container: string, network: string): Promise<string> {
    const r = await this.docker(['inspect', '-f', `{{(index .NetworkSettings.Networks "${network}").IPAddress}}`, container]);
    return r.stdout.trim();
  }

  /** Stops dockerd by its PID (SIGTERM; live-restore keeps the containers) and waits for it to exit. */
  async stopDaemon(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(t);
  }

  async restart(): Promise<void> {
    await this.stopDaemon();
    await this.start();
  }

  /** Removes every container, stops dockerd, kills what is left of ours by PID, unmounts the namespace. Never throws. */
  async stop(): Promise<void> {
    const pids: number[] = [];
    try {
      if (this.child && this.child.exitCode === null) {
        const ids = (await this.docker(['ps', '-aq'], { allowFail: true, timeoutMs: 20_000 })).stdout.split(/\s+/).filter(Boolean);
        if (ids.length) {
          const r = await this.docker(['inspect', '-f', '{{.State.Pid}}', ...ids], { allowFail: true, timeoutMs: 20_000 });
          pids.push(...r.stdout.split(/\s+/).map(Number).filter((p) => p > 0));
          await this.docker(['rm', '-f', ...ids], { allowFail: true, timeoutMs: 60_000 });
        }
      }
      await this.stopDaemon();
    } catch {
      // fall through to the kills
    }
    const containerd = readPid(path.join(this.dir, 'exec', 'containerd', 'containerd.pid'));
    for (const p of [...pids, ...(containerd ? [containerd] : []), ...this.processesInMountNamespace()]) {
      try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    }
    if (fs.existsSync(this.mntns)) await run(['umount', '-l', this.mntns], { allowFail: true }).catch(() => undefined);
  }

  /** PIDs of processes in our mount namespace (dockerd, containerd, shims: ours only). */
  private processesInMountNamespace(): number[] {
    let ino: number;
    try {
      ino = fs.statSync(this.mntns).ino;
    } catch {
      return [];
    }
    const out: number[] = [];
    for (const e of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
      try {
        if (fs.statSync(`/proc/${e}/ns/mnt`).ino === ino) out.push(Number(e));
      } catch {
        // gone, or not ours to see
      }
    }
    return out;
  }
}

function readPid(file: string): number | undefined {
  try {
    const n = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}
