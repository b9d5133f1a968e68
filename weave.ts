// weave CLI: the commands a Weave Net user knows. Client commands talk to the router's HTTP API
// (127.0.0.1:6784 in the current namespace, or --http-addr / WEAVE_HTTP_ADDR); `router` runs the
// router in the foreground and `launch` starts it detached and waits until it answers.
import { Command, CommanderError } from 'commander';
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { ApiClient } from './api/client';
import { DEFAULT_PORT, addRouterFlags, dataDirFromEnv, httpAddrFrom, parseHostPort, routerConfig, type RouterFlags } from './api/config';
import { Report, renderConnections, renderPeers, renderSummary, renderTargets } from './api/views';
import { WeaveError, UsageError, errMsg } from './lib/errors';
import { SUBSYSTEMS } from './api/subsystems';
import { podLabel } from './cni/views';

function fail(msg: string, code = 1): never {
  process.stderr.write(`weave: ${msg}\n`);
  process.exit(code);
}

function client(opts: { httpAddr?: string }): ApiClient {
  const a = httpAddrFrom(opts.httpAddr);
  return new ApiClient(a.host, a.port);
}

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

async function waitForApi(api: ApiClient, deadlineMs: number, alive: () => boolean): Promise<Report> {
  const end = Date.now() + deadlineMs;
  let last = '';
  while (Date.now() < end) {
    try {
      return await api.request<Report>('GET', '/status', undefined, { timeoutMs: 2000 });
    } catch (e) {
      last = errMsg(e);
    }
    if (!alive()) throw new WeaveError('ESTART', 'the router exited during start-up');
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new WeaveError('ETIMEDOUT', `the router did not answer within ${deadlineMs / 1000}s (${last})`);
}

function tail(file: string, lines = 20): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
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
    .exitOverride();

  addRouterFlags(program.command('router').description('run the router in the foreground').argument('[peers...]', 'peers to connect to (host[:port])'))
    .action(async (peers: string[], f: RouterFlags) => {
      const cfg = routerConfig(peers, f as RouterFlags & Record<string, unknown>);
      const { runRouter } = await import('./api/daemon');
      const h = await runRouter(cfg);
      await h.stopped;
      process.exit(0);
    });

  addRouterFlags(program.command('launch').description('start the router in the background and wait until it is ready').argument('[peers...]', 'peers to connect to (host[:port])'))
    .action(async (peers: string[], f: RouterFlags) => {
      const cfg = routerConfig(peers, f as RouterFlags & Record<string, unknown>); // validate here so errors show at once
      const { runningPid } = await import('./api/daemon');
      const pid = runningPid(cfg.dataDir);
      if (pid) fail(`a weave router is already running with data dir ${cfg.dataDir} (pid ${pid}); use "weave stop" first`);
      fs.mkdirSync(cfg.dataDir, { recursive: true });
      const logFile = path.join(cfg.dataDir, 'weave.log');
      const out = fs.openSync(logFile, 'a');
      const args = process.argv.slice(process.argv.indexOf('launch') + 1);
      const child = spawn(process.execPath, [...process.execArgv, __filename, 'router', ...args], { detached: true, stdio: ['ignore', out, out], env: process.env });
      child.unref();
      let exited = false;
      child.on('exit', () => { exited = true; });
      try {
        const r = await waitForApi(new ApiClient(cfg.httpAddr.host, cfg.httpAddr.port), cliTimeoutMs(), () => !exited);
        process.stdout.write(`${r.router.name}\n`);
        process.exit(0);
      } catch (e) {
        fail(`${errMsg(e)}; log ${logFile}:\n${tail(logFile)}`);
      }
    });

  program.command('stop').description('stop the router').option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { httpAddr?: string }) => {
      await stopRouter(o);
    });

  program.command('reset').description('stop the router and forget all its state (peer name, targets, ...)').option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { httpAddr?: string }) => {
      await stopRouter(o, true, '/reset');
      // everything the router persisted goes (identity, targets, endpoints, IPAM, DNS); the log stays for post-mortems
      const dir = dataDirFromEnv();
      if (fs.existsSync(dir)) for (const f of fs.readdirSync(dir)) if (f !== 'weave.log') fs.rmSync(path.join(dir, f), { recursive: true, force: true });
    });

  program.command('connect').description('add connection targets').option('--replace', 'replace the targets with these').argument('<peers...>').option('--http-addr <host:port>', 'HTTP API address')
    .action(async (peers: string[], o: { replace?: boolean; httpAddr?: string }) => {
      for (const p of peers) parseHostPort(p, DEFAULT_PORT, 'peer address');
      await client(o).request('POST', '/connect', { peers, replace: !!o.replace });
    });

  program.command('forget').description('remove connection targets').argument('<peers...>').option('--http-addr <host:port>', 'HTTP API address')
    .action(async (peers: string[], o: { httpAddr?: string }) => {
      await client(o).request('POST', '/forget', { peers });
    });

  program.command('status').description('router status: summary, or peers | connections | targets').argument('[what]').option('--http-addr <host:port>', 'HTTP API address')
    .action(async (what: string | undefined, o: { httpAddr?: string }) => {
      const views: Record<string, (r: Report) => string> = { peers: renderPeers, connections: renderConnections, targets: renderTargets };
      for (const m of SUBSYSTEMS) Object.assign(views, m.views ?? {});
      if (what && !views[what]) throw new UsageError(`unknown status view "${what}": one of ${Object.keys(views).join(', ')}`);
      const r = await client(o).request<Report>('GET', '/report');
      process.stdout.write(what ? views[what](r) : renderSummary(r));
    });

  program.command('report').description('full router state as JSON').option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { httpAddr?: string }) => {
      const r = await client(o).request('GET', '/report');
      process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    });

  program.command('attach').description('connect a network namespace (a container) to the overlay')
    .helpOption('--help', 'display help for command')
    .argument('<args...>', '[ADDR/LEN...] NETNS — NETNS is an ip-netns name, a path such as /proc/PID/ns/net, or a PID')
    .option('-h, --hostname <fqdn>', 'register this name in weaveDNS (later)')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (args: string[], o: { hostname?: string; httpAddr?: string }) => {
      const netns = args[args.length - 1];
      const cidrs = args.slice(0, -1);
      if (netns.includes('/') && /^\d+\.\d+\.\d+\.\d+\/\d+$/.test(netns)) throw new UsageError(`the last argument must be the namespace, got the address ${netns}`);
      const r = await client(o).request<{ addresses: string[] }>('POST', '/attach', { netns, cidrs, name: o.hostname });
      process.stdout.write(`${r.addresses.join(' ')}\n`);
    });

  program.command('detach').description('disconnect a namespace from the overlay (all its addresses, or those given)')
    .argument('<args...>', '[ADDR...] NETNS')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (args: string[], o: { httpAddr?: string }) => {
      const netns = args[args.length - 1];
      const addrs = args.slice(0, -1);
      const r = await client(o).request<{ removed?: string[] }>('POST', '/detach', { netns, addrs });
      if (r.removed?.length) process.stdout.write(`${r.removed.join(' ')}\n`);
    });

  program.command('ps').description('list attached namespaces and their addresses')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { httpAddr?: string }) => {
      const r = await client(o).request<{ endpoints: Array<{ netns: string; ifname?: string; mac?: string; addresses: string[]; pod?: { containerId: string; namespace?: string; name?: string } }> }>('GET', '/ps');
      // a pod (CNI) by its Kubernetes namespace/name (or container ID), then its namespace file
      for (const e of r.endpoints) process.stdout.write(`${e.pod ? `${podLabel(e.pod)} ` : ''}${e.netns} ${e.mac ?? '-'} ${e.addresses.join(' ')}\n`);
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

  for (const m of SUBSYSTEMS) m.commands?.(program, client);

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

  return program;
}

async function stopRouter(o: { httpAddr?: string }, quietIfNotRunning = false, endpoint = '/stop'): Promise<void> {
  const { runningPid } = await import('./api/daemon');
  const dataDir = dataDirFromEnv();
  const pid = runningPid(dataDir);
  try {
    await client(o).request('POST', endpoint, {}, { timeoutMs: cliTimeoutMs() });
  } catch (e) {
    if (!(e instanceof WeaveError && e.code === 'ENOTRUNNING')) throw e;
    if (!pid) {
      if (quietIfNotRunning) return;
      throw e;
    }
    process.kill(pid, 'SIGTERM');
  }
  if (pid) {
    const waitMs = cliTimeoutMs() / 3;
    const end = Date.now() + waitMs;
    while (pidAlive(pid) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    if (pidAlive(pid)) throw new WeaveError('ETIMEDOUT', `router pid ${pid} did not stop within ${waitMs / 1000}s`);
  }
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 2);
    if (e instanceof UsageError) fail(e.message, 2);
    if (e instanceof WeaveError) fail(e.message, 1);
    fail(e instanceof Error ? (e.stack ?? e.message) : String(e), 1);
  }
}

if (require.main === module) void main(process.argv);
