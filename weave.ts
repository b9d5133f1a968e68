// weave CLI: the commands a Weave Net user knows. Client commands talk to the router's HTTP API:
// its unix socket in the data dir (WEAVE_DATA_DIR; root only) for everything, and for read-only
// GETs 127.0.0.1:6784 in the current namespace (or --http-addr / WEAVE_HTTP_ADDR) when the socket
// cannot be used. `router` runs the router in the foreground; `launch` starts it detached and waits
// until the child reports that it is ready (or why it failed).
import { Command, CommanderError } from 'commander';
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as net from 'net';
import * as path from 'path';
import { ApiClient } from './api/client';
import { apiSocketPath } from './api/http';
import { addRouterFlags, dataDirFromEnv, httpAddrFrom, routerConfig, type RouterConfig, type RouterFlags } from './api/config';
import { checkPeer } from './lib/validate';
import { Report, renderConnections, renderPeers, renderSummary, renderTargets } from './api/views';
import { WeaveError, UsageError, errMsg } from './lib/errors';
import { SUBSYSTEMS } from './api/subsystems';
import { addPasswordCommands } from './api/password';
import { podLabel } from './cni/views';
import { LOG_FILE, DEFAULT_LOG_MAX_BYTES, currentRun, renderLine, rotateIfLarge, startMarker } from './lib/log-file';
import { VERSION } from './api/parts/api';
import { parseTemplate, renderTemplate } from './api/template';
import { addOperatorCommands, psMatches, psName, statusViewHelp, type PsEndpoint } from './api/operator';
import type { CliHelpers, ContainerRef } from './lib/subsystem';
import { DockerEngine } from './docker/engine';
import { dockerSocketFrom } from './docker/flags';
import { containersByNetnsKey, resolveTarget } from './docker/resolve';
import { netnsKeyOfStat } from './host/netns';
import { addNpcFlags, parseNpcFlags } from './policy/config';
import { renderPolicyStatus } from './policy/views';
import { NPC_STATUS_PORT } from './lib/ports';
import { parseHostPort } from './lib/addr';
import { routerEnv, routerNodeFlags } from './lib/runtime';


function fail(msg: string, code = 1): never {
  process.stderr.write(`weave: ${msg}\n`);
  process.exit(code);
}

function client(opts: { httpAddr?: string }): ApiClient {
  const a = httpAddrFrom(opts.httpAddr);
  const dataDir = dataDirFromEnv();
  return new ApiClient({ socketPath: apiSocketPath(dataDir), dataDir, host: a.host, port: a.port });
}

/** Docker's API as the docker CLI finds it: DOCKER_HOST (unix://), else /var/run/docker.sock. */
function dockerEngine(): DockerEngine {
  return new DockerEngine(dockerSocketFrom(undefined, process.env));
}

/** An entry of GET /ps as the CLI reads it: the operator's view's fields, and the Docker container. */
interface PsEntry extends PsEndpoint { container?: ContainerRef }

/** Containers by name for the CLI's verbs (attach, detach, ps, dns-add): one resolver, docker/resolve.ts. */
export const cliHelpers: CliHelpers = {
  resolveContainer: (arg) => resolveTarget(arg, dockerEngine()),
  async containerAddresses(arg, api) {
    const t = await resolveTarget(arg, dockerEngine());
    let key: string | undefined;
    try {
      key = netnsKeyOfStat(fs.statSync(t.netns.startsWith('/') ? t.netns : /^\d+$/.test(t.netns) ? `/proc/${t.netns}/ns/net` : `/var/run/netns/${t.netns}`));
    } catch (e) {
      throw new UsageError(`${arg}: ${errMsg(e)}`, {}, { cause: e });
    }
    const { endpoints } = await api.request<{ endpoints: PsEntry[] }>('GET', '/ps');
    const ep = endpoints.find((e) => e.key === key || (t.container && e.container?.id === t.container.id));
    if (!ep) throw new UsageError(`${arg} is not attached to weave (weave ps lists what is)`);
    return { addrs: ep.addresses.map((a) => a.split('/')[0]), container: t.container ?? ep.container };
  },
};

/**
 * How long the CLI waits for the router (launch until its API answers; stop/reset until it has done
 * its steps): 30 s, or WEAVE_CLI_TIMEOUT seconds for slow hosts (a UML guest on a busy machine needs
 * minutes: every process start costs hundreds of ms there).
 */
export function cliTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.WEAVE_CLI_TIMEOUT;
  if (v === undefined || v === '') return 30_000;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`invalid WEAVE_CLI_TIMEOUT "${v}": expected seconds > 0`);
  return n * 1000;
}

/** What a launched router tells `weave launch` over the IPC channel once it is up or has failed. */
type StartReport = { t: 'ready'; name: string } | { t: 'failed'; message: string; usage: boolean } | { t: 'step'; step: string };
type StartOutcome = { t: 'ready'; name: string } | { t: 'failed'; message: string; usage: boolean } | { t: 'exited'; code: number | null; signal: string | null } | { t: 'timeout'; step: string };

/** Tells the parent (`weave launch`) how start-up went, when there is one listening. */
function reportStart(m: StartReport): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send || !process.connected) return resolve();
    process.send(m, undefined, {}, () => resolve()); // a parent gone meanwhile: nothing to tell
  });
}

/**
 * Waits for the launched router's report, its exit, or the deadline: `ms` without a step begun (a
 * loaded machine starts slowly, but each step comes), at most 10 * ms in all. A start that takes more
 * than a few seconds shows which step it is at on stderr.
 */
function waitForStart(child: ChildProcess, ms: number): Promise<StartOutcome> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    let step = 'process start';
    let shown = '';
    let timer = setTimeout(() => resolve({ t: 'timeout', step }), ms);
    const overall = setTimeout(() => { clearTimeout(timer); resolve({ t: 'timeout', step }); }, 10 * ms);
    const progress = setInterval(() => {
      if (step === shown) return;
      shown = step;
      process.stderr.write(`router pid ${child.pid} still starting after ${Math.round((Date.now() - t0) / 1000)}s: ${step}\n`);
    }, 5000);
    const done = (o: StartOutcome): void => {
      clearTimeout(timer);
      clearTimeout(overall);
      clearInterval(progress);
      resolve(o);
    };
    child.on('message', (m: StartReport) => {
      if (m?.t === 'step') {
        step = m.step;
        clearTimeout(timer);
        timer = setTimeout(() => done({ t: 'timeout', step }), ms);
        return;
      }
      if (m?.t !== 'ready' && m?.t !== 'failed') return;
      done(m);
    });
    child.on('exit', (code, signal) => {
      // its last message may still be in the channel: it ends ('disconnect') after the last one is read
      const exited = (): void => done({ t: 'exited', code, signal });
      if (!child.connected) return exited();
      child.once('disconnect', exited);
      setTimeout(exited, 500).unref();
    });
  });
}

function requireRoot(why: string): void {
  const uid = process.geteuid?.() ?? 0;
  if (uid !== 0) throw new WeaveError('EPERM', `must run as root (uid ${uid}): ${why}`);
}

/** Creates the data dir; refuses one this process cannot write, naming the reason. */
function prepareDataDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true });
    if (!fs.statSync(dir).isDirectory()) throw new Error('not a directory');
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (e) {
    throw new WeaveError('EDATADIR', `data dir ${dir} is not writable: ${errMsg(e)} (set WEAVE_DATA_DIR to a directory root can write)`);
  }
}

/** Whether a TCP port can be bound here (false only when it is in use). */
function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', (e: NodeJS.ErrnoException) => resolve(e.code !== 'EADDRINUSE'));
    srv.listen({ host: host || undefined, port, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/**
 * Refuses to start a second router in this network namespace (one per namespace: the TUN, the ports
 * and the routes are the namespace's): the kernel says whether the TUN is held or the ports taken.
 */
async function checkNamespaceFree(cfg: RouterConfig): Promise<void> {
  const { tunInUse } = await import('./host/cleanup');
  const { DEFAULT_TUN_NAME } = await import('./router/sleeve');
  const problems: string[] = [];
  if (await tunInUse({}, DEFAULT_TUN_NAME)) problems.push(`${DEFAULT_TUN_NAME} is held by another process`);
  if (!(await portFree(cfg.host, cfg.port))) problems.push(`TCP port ${cfg.port} is in use`);
  if (!(await portFree(cfg.httpAddr.host, cfg.httpAddr.port))) problems.push(`the API address ${cfg.httpAddr.host}:${cfg.httpAddr.port} is in use`);
  if (problems.length === 0) return;
  const other = await otherRouter(cfg.httpAddr);
  const hint = other
    ? `a weave router runs here (peer ${other.name}, data dir ${other.dataDir}, pid ${other.pid}): stop it first (WEAVE_DATA_DIR=${other.dataDir} weave stop) or use another network namespace`
    : 'stop what uses them or use another network namespace';
  throw new WeaveError('ERUNNING', `cannot start a router in this network namespace: ${problems.join('; ')}; ${hint}`);
}

/** The router answering on the TCP API in this namespace (the given address, then the default), if one does. */
async function otherRouter(a: { host: string; port: number }): Promise<Report['router'] | undefined> {
  const dflt = httpAddrFrom(undefined, {});
  const addrs = a.host === dflt.host && a.port === dflt.port ? [a] : [a, dflt];
  for (const x of addrs) {
    try {
      return (await new ApiClient({ host: x.host, port: x.port }).request<Report>('GET', '/status', undefined, { timeoutMs: 2000 })).router;
    } catch {
      // nobody there (or not a weave router): try the next
    }
  }
  return undefined;
}

/** The last lines of the current run (since the last start marker), rendered for people. */
function tail(file: string, lines = 30): string {
  try {
    return currentRun(fs.readFileSync(file, 'utf8').trimEnd().split('\n')).slice(-lines).map(renderLine).join('\n');
  } catch {
    return '';
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export function buildProgram(): Command {
  const program = new Command('weave')
    .description('weave.ts: an encrypted mesh overlay network for hosts and containers')
    .showHelpAfterError()
    .allowExcessArguments(false) // inherited by every command added after this: `weave stop now` is a mistake, not a stop
    .exitOverride();

  addRouterCommands(program);
  addMeshCommands(program);
  addContainerCommands(program);
  for (const m of SUBSYSTEMS) m.commands?.(program, client, cliHelpers);
  addPasswordCommands(program, client);
  addOperatorCommands(program, client);
  addDemoCommand(program);
  addNpcCommand(program);
  return program;
}

/** `weave router` (foreground), `launch` (detached, waits for the child's start-up report), `stop`, `reset`. */
function addRouterCommands(program: Command): void {
  addRouterFlags(program.command('router').description('run the router in the foreground').argument('[peers...]', 'peers to connect to (host[:port])'))
    .action(async (peers: string[], f: RouterFlags) => {
      try {
        const cfg = routerConfig(peers, f as RouterFlags & Record<string, unknown>);
        requireRoot('the router creates network devices, routes and nftables rules');
        prepareDataDir(cfg.dataDir);
        await checkNamespaceFree(cfg);
        const { runRouter } = await import('./api/daemon');
        // each start-up step as it begins: `weave launch` waits as long as the start makes progress
        const h = await runRouter(cfg, { onStep: (step) => void reportStart({ t: 'step', step }) });
        await reportStart({ t: 'ready', name: h.report().router.name });
        if (process.connected) process.disconnect();
        await h.stopped;
        process.exit(0);
      } catch (e) {
        await reportStart({ t: 'failed', message: errMsg(e), usage: e instanceof UsageError });
        throw e;
      }
    });

  addRouterFlags(program.command('launch').description('start the router in the background and wait until it is ready').argument('[peers...]', 'peers to connect to (host[:port])'))
    .action(async (peers: string[], f: RouterFlags) => {
      const cfg = routerConfig(peers, f as RouterFlags & Record<string, unknown>); // validate here so errors show at once
      requireRoot('the router creates network devices, routes and nftables rules');
      prepareDataDir(cfg.dataDir);
      const { runningPid } = await import('./api/daemon');
      const pid = runningPid(cfg.dataDir);
      if (pid) fail(`a weave router is already running with data dir ${cfg.dataDir} (pid ${pid}); use "weave stop" first`);
      await checkNamespaceFree(cfg);
      const logFile = path.join(cfg.dataDir, LOG_FILE);
      const args = process.argv.slice(process.argv.indexOf('launch') + 1);
      // a start marker before the run, so a failed launch shows its own lines only (lib/log-file.ts)
      const maxBytes = cfg.logFile?.maxBytes ?? DEFAULT_LOG_MAX_BYTES;
      rotateIfLarge(logFile, maxBytes);
      const out = fs.openSync(logFile, 'a', 0o600);
      fs.writeSync(out, startMarker({ pid: process.pid, args, version: VERSION }));
      // the router appends its log there itself and rotates it; its stdout and stderr (a crash) go there too
      const logArgs = cfg.logFile ? [] : ['--log-file', logFile];
      // the IPC channel carries the child's one start-up report; it disconnects once ready
      const child = spawn(process.execPath, [...process.execArgv, ...routerNodeFlags(process.execArgv, process.env.NODE_OPTIONS), __filename, 'router', ...args, ...logArgs], { detached: true, stdio: ['ignore', out, out, 'ipc'], env: routerEnv(process.env) });
      const waitMs = cliTimeoutMs();
      const r = await waitForStart(child, waitMs);
      switch (r.t) {
        case 'ready':
          if (child.connected) child.disconnect();
          child.unref();
          process.stdout.write(`${r.name}\n`);
          process.exit(0);
          break;
        case 'failed':
          fail(`the router failed to start: ${r.message} (log: ${logFile})`, r.usage ? 2 : 1);
          break;
        case 'exited':
          fail(`the router exited during start-up (${r.signal ? `signal ${r.signal}` : `exit ${r.code}`}); log ${logFile}:\n${tail(logFile)}`);
          break;
        case 'timeout':
          fail(`the router (pid ${child.pid}) did not report ready: no progress for ${waitMs / 1000}s (or ${10 * waitMs / 1000}s in all) at step "${r.step}"; it may still be starting; log ${logFile}:\n${tail(logFile)}`);
      }
    });

  program.command('stop').description('stop the router').option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { httpAddr?: string }) => {
      await stopRouter(o);
    });

  program.command('reset').description('stop the router and forget all its state (peer name, targets, ...); with no router running, remove what weave left in this network namespace').option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { httpAddr?: string }) => {
      requireRoot('reset removes network devices, routes and the data dir');
      const handled = await stopRouter(o, true, '/reset');
      // everything the router persisted goes (identity, targets, endpoints, IPAM, DNS); the logs (and rotated ones) stay for post-mortems
      const dir = dataDirFromEnv();
      if (fs.existsSync(dir)) for (const f of fs.readdirSync(dir)) if (f !== LOG_FILE && !f.startsWith(`${LOG_FILE}.`)) fs.rmSync(path.join(dir, f), { recursive: true, force: true });
      if (!handled) await cleanupNamespace(o);
    });
}

/** Connection targets and the views of the report: `connect`, `forget`, `status`, `report`. */
function addMeshCommands(program: Command): void {
  program.command('connect').description('add connection targets').option('--replace', 'replace the targets with these').argument('<peers...>').option('--http-addr <host:port>', 'HTTP API address')
    .action(async (peers: string[], o: { replace?: boolean; httpAddr?: string }) => {
      for (const p of peers) checkPeer(p);
      await client(o).request('POST', '/connect', { peers, replace: !!o.replace });
    });

  program.command('forget').description('remove connection targets').argument('<peers...>').option('--http-addr <host:port>', 'HTTP API address')
    .action(async (peers: string[], o: { httpAddr?: string }) => {
      for (const p of peers) checkPeer(p);
      await client(o).request('POST', '/forget', { peers });
    });

  const views: Record<string, (r: Report) => string> = { peers: renderPeers, connections: renderConnections, targets: renderTargets };
  for (const m of SUBSYSTEMS) Object.assign(views, m.views ?? {});
  const names = [...Object.keys(views), 'policy'];
  program.command('status').description(`router status: the summary, or one view: ${names.join(' | ')}`)
    .argument('[view]', `one of: ${names.join(', ')} (none: the summary)`).option('--http-addr <host:port>', 'HTTP API address')
    .option('--npc-addr <host:port>', 'where `weave npc` serves its status (the policy view)', `127.0.0.1:${NPC_STATUS_PORT}`)
    .addHelpText('after', `\nViews:\n${statusViewHelp(names)}`)
    .action(async (what: string | undefined, o: { httpAddr?: string; npcAddr: string }) => {
      if (what === 'policy') {
        process.stdout.write(renderPolicyStatus(await npcStatus(o.npcAddr)));
        return;
      }
      if (what && !views[what]) throw new UsageError(`unknown status view "${what}": one of ${names.join(', ')}`);
      const r = await client(o).request<Report>('GET', '/report');
      process.stdout.write(what ? views[what](r) : renderSummary(r));
    });

  program.command('report').description('full router state as JSON, or through a template (-f)')
    .option('-f, --format <template>', 'a Go-template-like format over the report, e.g. \'{{.Router.Name}}\' or \'{{range .Router.Connections}}{{.PeerNickname}} {{.Overlay}}{{"\\n"}}{{end}}\' (names match the JSON keys in any case)')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { httpAddr?: string; format?: string }) => {
      if (o.format !== undefined) parseTemplate(o.format); // a template that cannot parse fails before the request
      const r = await client(o).request('GET', '/report');
      if (o.format !== undefined) {
        const text = renderTemplate(o.format, r);
        process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
        return;
      }
      process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    });
}

/** `weave npc`'s status (the policy controller serves it itself: it is its own process). */
async function npcStatus(addr: string): Promise<any> {
  const { host, port } = parseHostPort(addr, NPC_STATUS_PORT, { what: '--npc-addr' });
  const body = await new Promise<string>((resolve, reject) => {
    const req = http.get({ host, port, path: '/status', timeout: 5000 }, (res) => {
      let d = '';
      res.setEncoding('utf8').on('data', (c: string) => { d += c; }).on('end', () => (res.statusCode === 200 ? resolve(d) : reject(new Error(`HTTP ${res.statusCode}: ${d.trim()}`))));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 5 s')));
    req.on('error', reject);
  }).catch((e) => {
    throw new WeaveError('ENPC', `the network policy controller does not answer at ${host}:${port} (${errMsg(e)}): is \`weave npc\` running on this node?`, {}, { cause: e });
  });
  return JSON.parse(body);
}

/** The NetworkPolicy controller: `npc`. */
function addNpcCommand(program: Command): void {
  addNpcFlags(program.command('npc').description('run the NetworkPolicy controller of this node in the foreground (watches the API; enforces with nftables table inet weave-npc)'))
    .action(async (o: Record<string, unknown>) => {
      // loaded here: the controller (its Kubernetes client, informers, nflog reader) is no part of the router's heap
      const { runNpc } = await import('./policy/npc');
      await runNpc(parseNpcFlags(o));
    });
}

/** Containers and the host's own overlay addresses: `attach`, `detach`, `ps`, `expose`, `hide`. */
function addContainerCommands(program: Command): void {
  program.command('attach').description('connect a network namespace (a container) to the overlay')
    .helpOption('--help', 'display help for command')
    .argument('<args...>', '[ADDR/LEN...] CONTAINER — a Docker container name or ID, an ip-netns name, a path such as /proc/PID/ns/net, or a PID')
    .option('-h, --hostname <fqdn>', 'register this name in weaveDNS (later)')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (args: string[], o: { hostname?: string; httpAddr?: string }) => {
      const last = args[args.length - 1];
      const cidrs = args.slice(0, -1);
      if (last.includes('/') && /^\d+\.\d+\.\d+\.\d+\/\d+$/.test(last)) throw new UsageError(`the last argument must be the container or namespace, got the address ${last}`);
      const t = await cliHelpers.resolveContainer(last);
      const r = await client(o).request<{ addresses: string[] }>('POST', '/attach', { netns: t.netns, cidrs, name: o.hostname, container: t.container });
      process.stdout.write(`${r.addresses.join(' ')}\n`);
    });

  program.command('detach').description('disconnect a namespace from the overlay (all its addresses, or those given)')
    .argument('<args...>', '[ADDR...] CONTAINER — a Docker container name or ID, an ip-netns name, a path or a PID')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (args: string[], o: { httpAddr?: string }) => {
      const addrs = args.slice(0, -1);
      const arg = args[args.length - 1];
      let netns = arg;
      let unresolved: UsageError | undefined;
      try {
        netns = (await cliHelpers.resolveContainer(arg)).netns;
      } catch (e) {
        // a namespace that is gone is still detached by the name it was attached under (the router cleans its record)
        if (!(e instanceof UsageError)) throw e;
        unresolved = e;
      }
      const r = await client(o).request<{ removed?: string[] }>('POST', '/detach', { netns, addrs }).catch((e: unknown) => {
        // the router's refusal (a 400 comes back as code EUSAGE) with why the name was not a container
        throw unresolved && e instanceof WeaveError && e.code === 'EUSAGE' ? new UsageError(`${e.message}; ${unresolved.message}`, {}, { cause: e }) : e;
      });
      if (r.removed?.length) process.stdout.write(`${r.removed.join(' ')}\n`);
    });

  program.command('ps').description('list attached namespaces (containers, pods) and their addresses; with CONTAINER only that one')
    .argument('[container]', 'an ip-netns name, a PID or namespace path, a pod (namespace/name or container ID), an address or a DNS name')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (container: string | undefined, o: { httpAddr?: string }) => {
      const r = await client(o).request<{ endpoints: PsEntry[] }>('GET', '/ps');
      // namespaces attached by PID or path are named when Docker runs a container there
      const unnamed = r.endpoints.some((e) => !e.pod && !e.container && e.key && /^\d+:\d+$/.test(e.key));
      const docker = unnamed ? await containersByNetnsKey(dockerEngine()) : new Map<string, ContainerRef>();
      const all = r.endpoints.map((e) => ({ ...e, container: e.container ?? (e.key ? docker.get(e.key) : undefined) }));
      const shown = container === undefined ? all : all.filter((e) => psMatches(e, container) || (e.container !== undefined && (e.container.name === container || (container.length >= 12 && e.container.id.startsWith(container)))));
      if (container !== undefined && shown.length === 0) throw new WeaveError('ENOTFOUND', `no attached container matches "${container}" (weave ps lists them all)`);
      // a Docker container by its name, a pod (CNI) by its Kubernetes namespace/name (or container ID), then its namespace by name where it has one
      for (const e of shown) {
        const label = e.container ? `${e.container.name} ` : e.pod ? `${podLabel(e.pod)} ` : '';
        process.stdout.write(`${label}${psName(e)} ${e.mac || '-'} ${e.addresses.join(' ')}\n`);
      }
    });

  program.command('expose').description('give this host an address on the overlay')
    .argument('[cidrs...]', 'ADDR/LEN')
    .option('--masquerade', 'masquerade the overlay\'s traffic leaving through this host')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (cidrs: string[], o: { masquerade?: boolean; httpAddr?: string }) => {
      const r = await client(o).request<{ addresses: string[] }>('POST', '/expose', { cidrs, masquerade: !!o.masquerade });
      process.stdout.write(`${r.addresses.join(' ')}\n`);
    });

  program.command('hide').description('remove this host\'s overlay addresses (all, or those given)')
    .argument('[cidrs...]', 'ADDR/LEN')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (cidrs: string[], o: { httpAddr?: string }) => {
      await client(o).request('POST', '/hide', { cidrs });
    });
}

function addDemoCommand(program: Command): void {
  program.command('demo').description('bring up a small encrypted mesh of namespaced hosts on this machine, show it working, tear it down; "cni": pods through containerd\'s CRI on two hosts')
    .argument('[which]', 'mesh (default) or cni')
    .action(async (which: string | undefined) => {
      if (which === 'cni') {
        const { runCniDemo } = await import('./test/lab/demo-cni');
        process.exit(await runCniDemo());
      }
      if (which !== undefined && which !== 'mesh') throw new UsageError(`unknown demo "${which}": mesh or cni`);
      const { runDemo } = await import('./test/lab/demo');
      process.exit(await runDemo());
    });
}


/**
 * Asks the router of this data dir to stop (or reset); SIGTERM when its API does not answer but its
 * pid is alive. True when the router ran the request itself, false when it was not running (or only
 * got the signal).
 */
async function stopRouter(o: { httpAddr?: string }, quietIfNotRunning = false, endpoint = '/stop'): Promise<boolean> {
  const { runningPid } = await import('./api/daemon');
  const dataDir = dataDirFromEnv();
  const pid = runningPid(dataDir);
  let handled = true;
  try {
    await client(o).request('POST', endpoint, {}, { timeoutMs: cliTimeoutMs() });
  } catch (e) {
    // a loaded router may answer late: with its pid known, SIGTERM does the same stop
    const late = e instanceof WeaveError && e.code === 'ETIMEDOUT' && pid !== null && pid !== undefined;
    if (!(e instanceof WeaveError && e.code === 'ENOTRUNNING') && !late) throw e;
    if (!pid) {
      if (quietIfNotRunning) return false;
      throw e;
    }
    if (late) process.stderr.write(`router pid ${pid} did not answer ${endpoint} within ${cliTimeoutMs() / 1000}s; sending SIGTERM\n`);
    else handled = false;
    process.kill(pid, 'SIGTERM');
  }
  if (pid) await waitForExit(pid, dataDir);
  return handled;
}

/**
 * Waits for the router process to be gone: 4 * WEAVE_CLI_TIMEOUT (2 min by default; stopping tears
 * down devices, routes and connections, slow on a loaded machine), saying on stderr what it waits for.
 */
async function waitForExit(pid: number, dataDir: string): Promise<void> {
  const waitMs = 4 * cliTimeoutMs();
  const t0 = Date.now();
  let told = t0;
  while (pidAlive(pid) && Date.now() - t0 < waitMs) {
    await new Promise((r) => setTimeout(r, 50));
    if (Date.now() - told >= 5000) {
      told = Date.now();
      process.stderr.write(`waiting for router pid ${pid} (data dir ${dataDir}) to exit: ${Math.round((told - t0) / 1000)}s of at most ${waitMs / 1000}s\n`);
    }
  }
  if (pidAlive(pid)) throw new WeaveError('ETIMEDOUT', `router pid ${pid} (data dir ${dataDir}) did not exit within ${waitMs / 1000}s of being told to stop`);
}

/**
 * `weave reset` without a router: removes weave's kernel state in this network namespace (a router
 * killed with -9 leaves it all). Not while a router of another data dir runs here: the state is its.
 */
async function cleanupNamespace(o: { httpAddr?: string }): Promise<void> {
  const { cleanupHost, tunInUse } = await import('./host/cleanup');
  const { DEFAULT_TUN_NAME } = await import('./router/sleeve');
  const { XfrmManager } = await import('./ipsec/xfrm');
  const { silentLogger } = await import('./lib/log');
  const other = await otherRouter(httpAddrFrom(o.httpAddr));
  if (other || await tunInUse({}, DEFAULT_TUN_NAME)) {
    const who = other ? `a router with data dir ${other.dataDir} (peer ${other.name}, pid ${other.pid}) runs` : `${DEFAULT_TUN_NAME} is held by a running process`;
    throw new WeaveError('ERUNNING', `no router ran with data dir ${dataDirFromEnv()} (its state there is removed), but ${who} in this network namespace: the network state here is that router's and was left alone`);
  }
  const r = await cleanupHost({}, { tun: DEFAULT_TUN_NAME, xfrm: new XfrmManager({ ctx: {}, log: silentLogger() }) });
  if (r.removed.length) process.stdout.write(`no router was running; removed ${r.removed.join(', ')}\n`);
  if (r.failed.length) throw new WeaveError('ECLEANUP', `could not remove all of weave's network state: ${r.failed.join('; ')}`);
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 2);
    if (e instanceof UsageError) fail(e.message, 2);
    if (e instanceof WeaveError) fail(e.message, 1);
    // a system call's refusal (EACCES, EROFS ...) says what went wrong by itself; anything else is a bug
    if (e instanceof Error && typeof (e as NodeJS.ErrnoException).code === 'string' && /^E[A-Z]+$/.test((e as NodeJS.ErrnoException).code!)) fail(e.message, 1);
    fail(e instanceof Error ? (e.stack ?? e.message) : String(e), 1);
  }
}

if (require.main === module) void main(process.argv);
