// The CLI verbs an operator reaches for besides status and report: `weave version`, `weave ui`,
// `weave logs [-f]`, and the helpers of `weave ps [CONTAINER]` and `weave status --help`.
import type { Command } from 'commander';
import * as fs from 'fs';
import * as path from 'path';
import { WeaveError, UsageError, errMsg } from '../lib/errors';
import type { ApiClientLike } from '../lib/subsystem';
import { LOG_FILE, LOG_KEEP, currentRun, renderLine } from '../lib/log-file';
import { findNamedNetns, netnsKeyOfStat, ownNetnsKey } from '../host/netns';
import { dataDirFromEnv, httpAddrFrom } from './config';
import { VERSION } from './parts/api';
import type { Report } from './views';
import { PROTOCOL_MAX_VERSION, PROTOCOL_MIN_VERSION } from '../mesh/wire';

type ClientFor = (opts: { httpAddr?: string }) => ApiClientLike;

/** What each `weave status` view shows (subsystem views without an entry here show their name only). */
const VIEW_HELP: Record<string, string> = {
  peers: 'each peer and its connections',
  connections: 'one line per connection: direction, address, state, encryption, overlay, MTU, why not fastdp',
  targets: 'the addresses this router keeps dialling',
  ipam: 'owners of the address range and their shares; unreachable owners with the rmpeer hint',
  dns: 'weaveDNS records: name, address, origin peer, container',
  cni: 'pods attached through the CNI plugin on this host',
  policy: 'network policies in force on this node, unenforceable ones, drops (asks `weave npc`, not the router)',
};

export function statusViewHelp(names: string[]): string {
  return names.map((n) => `  ${n.padEnd(12)} ${VIEW_HELP[n] ?? ''}`.trimEnd()).join('\n') + '\n  (none)       the summary: name, encryption, peers, connections, each service\n';
}

// ---- ps -------------------------------------------------------------------------------------------

export interface PsEndpoint {
  netns: string;
  /** the namespace file and its "dev:inode" key (routers before these fields omit them) */
  path?: string;
  key?: string;
  ifname?: string;
  mac?: string;
  addresses: string[];
  name?: string;
  pod?: { containerId: string; namespace?: string; name?: string };
}

const NETNS_PATH = /^\/(?:var\/)?run\/netns\/([^/]+)$/;

/** The namespace's `ip netns` name where it has one, else what it was attached with. */
export function psName(e: PsEndpoint, named: (key: string) => string | undefined = findNamedNetns): string {
  const m = NETNS_PATH.exec(e.path ?? '') ?? NETNS_PATH.exec(e.netns);
  if (m) return m[1];
  return (e.key ? named(e.key) : undefined) ?? e.netns;
}

/** Whether an endpoint is the one `weave ps CONTAINER` asks for. */
export function psMatches(e: PsEndpoint, q: string, named: (key: string) => string | undefined = findNamedNetns, keyOf: (q: string) => string | undefined = namespaceKeyOf): boolean {
  if (q === e.netns || q === psName(e, named) || q === e.key || q === e.path) return true;
  if (e.name && (q === e.name || e.name.replace(/\.$/, '').split('.')[0] === q)) return true;
  if (e.addresses.some((a) => a === q || a.split('/')[0] === q)) return true;
  if (e.pod && (q === e.pod.containerId || (q.length >= 12 && e.pod.containerId.startsWith(q)) || q === `${e.pod.namespace}/${e.pod.name}` || q === e.pod.name)) return true;
  // a PID or a namespace path: the same namespace however it is named
  const key = e.key ? keyOf(q) : undefined;
  return key !== undefined && key === e.key;
}

/** The namespace key of a PID, a /proc/PID/ns/net path or an `ip netns` name, if it exists. */
export function namespaceKeyOf(q: string): string | undefined {
  const p = /^\d+$/.test(q) ? `/proc/${q}/ns/net` : q.startsWith('/') ? q : `/run/netns/${q}`;
  try {
    return netnsKeyOfStat(fs.statSync(p));
  } catch {
    return undefined;
  }
}

// ---- logs -----------------------------------------------------------------------------------------

/** The log files oldest first (rotated ones only with all). */
export function logFiles(dataDir: string, all: boolean): string[] {
  const main = path.join(dataDir, LOG_FILE);
  const out: string[] = [];
  if (all) for (let n = LOG_KEEP; n >= 1; n--) if (fs.existsSync(`${main}.${n}`)) out.push(`${main}.${n}`);
  out.push(main);
  return out;
}

/** What `weave logs` prints (without -f): the lines of the files, the current run's only with run. */
export function logText(files: string[], o: { run?: boolean; json?: boolean; lines?: number }): string {
  let lines: string[] = [];
  for (const f of files) {
    try {
      lines.push(...fs.readFileSync(f, 'utf8').split('\n').filter((l) => l.length > 0));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new WeaveError('ELOG', `cannot read the log ${f}: ${errMsg(e)}`, {}, { cause: e });
    }
  }
  if (o.run) lines = currentRun(lines);
  if (o.lines !== undefined) lines = lines.slice(-o.lines);
  return lines.map((l) => `${o.json ? l : renderLine(l)}\n`).join('');
}

/** Follows the file: new lines as they come; after a rotation (the file shrank) from its start. */
function follow(file: string, json: boolean, from: number): Promise<never> {
  let pos = from;
  let carry = '';
  const buf = Buffer.alloc(1 << 16);
  return new Promise(() => {
    setInterval(() => {
      let fd: number;
      try {
        fd = fs.openSync(file, 'r');
      } catch {
        return; // not there (yet / any more): the router may be starting
      }
      try {
        const size = fs.fstatSync(fd).size;
        if (size < pos) {
          pos = 0; // rotated: copied away and truncated
          carry = '';
        }
        while (pos < size) {
          const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
          if (n <= 0) break;
          pos += n;
          const parts = (carry + buf.toString('utf8', 0, n)).split('\n');
          carry = parts.pop() ?? '';
          for (const l of parts) if (l) process.stdout.write(`${json ? l : renderLine(l)}\n`);
        }
      } finally {
        fs.closeSync(fd);
      }
    }, 250);
  });
}

// ---- ui -------------------------------------------------------------------------------------------

/**
 * Whether this process runs in another network namespace than the host's, and its `ip netns` name:
 * a namespace with a name is one; else it is compared with init's (when /proc/1 can be read).
 */
function namespaceHere(): { inOther: boolean; name?: string } {
  let own: string;
  try {
    own = ownNetnsKey();
  } catch {
    return { inOther: false };
  }
  const name = findNamedNetns(own);
  if (name) return { inOther: true, name };
  try {
    return { inOther: own !== netnsKeyOfStat(fs.statSync('/proc/1/ns/net')) };
  } catch {
    return { inOther: false }; // cannot tell (no access to init's namespace): say nothing about namespaces
  }
}

export function addOperatorCommands(program: Command, client: ClientFor): void {
  program.command('version').description('versions of this CLI and of the running router, with the protocol range')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { httpAddr?: string }) => {
      process.stdout.write(`weave CLI   ${VERSION} (weave.ts), protocol ${PROTOCOL_MIN_VERSION}..${PROTOCOL_MAX_VERSION}, node ${process.version}\n`);
      try {
        const r = await client(o).request<Report>('GET', '/status', undefined, { timeoutMs: 5000 });
        process.stdout.write(`weave router ${r.version} (weave.ts), protocol ${r.router.protocolMinVersion}..${r.router.protocolMaxVersion}, peer ${r.router.name}(${r.router.nickname}), pid ${r.router.pid}\n`);
      } catch (e) {
        process.stdout.write(`weave router not running (${errMsg(e)})\n`);
      }
    });

  program.command('ui').description('print the address of the router\'s live web page (and how to reach it from elsewhere)')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { httpAddr?: string }) => {
      const a = httpAddrFrom(o.httpAddr);
      const url = `http://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}/ui`;
      let running = true;
      try {
        await client(o).request('GET', '/status', undefined, { timeoutMs: 5000 });
      } catch {
        running = false;
      }
      process.stdout.write(`${url}\n`);
      if (!running) process.stdout.write('(no router answers there now: weave launch first)\n');
      const ns = namespaceHere();
      if (ns.inOther) {
        process.stdout.write(ns.name
          ? `The router's API listens inside the network namespace "${ns.name}". Open the page with a browser in it (ip netns exec ${ns.name} chromium ${url}), or bridge a port of the host into it: socat TCP-LISTEN:16784,bind=127.0.0.1,fork EXEC:"ip netns exec ${ns.name} socat STDIO TCP:${a.host}:${a.port}" and open http://127.0.0.1:16784/ui\n`
          : 'The router\'s API listens inside this network namespace, which has no ip-netns name: reach it from a process in the same namespace (nsenter --net=/proc/PID/ns/net with the router\'s PID).\n');
      }
      if (a.host === '127.0.0.1' || a.host === '::1' || a.host === 'localhost') {
        process.stdout.write(`It answers on loopback only. From a workstation: ssh -L ${a.port}:127.0.0.1:${a.port} THIS-HOST, then open http://127.0.0.1:${a.port}/ui there; on Kubernetes: kubectl port-forward -n kube-system POD ${a.port}:${a.port} (hostNetwork pods share the node's loopback).\n`);
      }
    });

  program.command('logs').description('print the router\'s log (human-readable; the file in the data dir stays JSON)')
    .option('-f, --follow', 'keep printing new lines as they come')
    .option('--run', 'only the current run (since the last weave launch)')
    .option('--all', 'include the rotated files (weave.log.1 ...), oldest first')
    .option('-n, --lines <n>', 'only the last n lines')
    .option('--json', 'print the JSON lines as they are')
    .action(async (o: { follow?: boolean; run?: boolean; all?: boolean; lines?: string; json?: boolean }) => {
      const dataDir = dataDirFromEnv();
      const lines = o.lines === undefined ? undefined : Number(o.lines);
      if (lines !== undefined && (!Number.isInteger(lines) || lines < 0)) throw new UsageError(`invalid --lines "${o.lines}": expected a whole number`);
      // the current run may have started before the last rotation: look for its marker in every file
      const files = logFiles(dataDir, !!o.all || !!o.run);
      const main = files[files.length - 1];
      if (!files.some((f) => fs.existsSync(f))) throw new WeaveError('ENOTFOUND', `no log at ${main} (weave launch writes it; a router run with weave router logs to its stdout)`);
      process.stdout.write(logText(files, { run: o.run, json: o.json, lines }));
      if (o.follow) {
        let size = 0;
        try { size = fs.statSync(main).size; } catch { /* not there yet */ }
        await follow(main, !!o.json, size);
      }
    });
}
