// A fixture Kubernetes API server: no kube-apiserver can run on this machine, so the router's
// Kubernetes mode, the NetworkPolicy controller, kubectl and client-node are tested against this.
//
// How a request flows: HTTP(S) request -> optional bearer-token check -> delay knob -> counted in the
// request log by verb (bench/kube reads it) -> discovery, or a resource route
// (/api/v1[/namespaces/NS]/RESOURCE[/NAME[/status]], /apis/networking.k8s.io/v1/...) -> the store.
// Every write bumps one global resourceVersion and appends an event to the history; watches replay the
// history after their resourceVersion, then follow live events, with bookmarks when asked. `compact()`
// forgets the history so an older resourceVersion gets 410 Expired, as etcd compaction does.
// `stop()` closes the listener and every connection (the API server down); `start()` brings it back
// on the same port with the same store.
//
// Standalone: node dist/test/lab/apiserver.js --port P [--host H] [--token T] [--tls-dir D]
//   [--bookmark-ms N] [--delay-ms N] [--control-socket PATH]; prints one JSON line {"url":...} when it listens; SIGUSR1 compacts.
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';

export type Obj = { apiVersion?: string; kind?: string; metadata: Meta; [k: string]: unknown };
export interface Meta {
  name?: string; generateName?: string; namespace?: string; uid?: string; resourceVersion?: string;
  creationTimestamp?: string; labels?: Record<string, string>; annotations?: Record<string, string>;
  [k: string]: unknown;
}
export type Verb = 'list' | 'watch' | 'get' | 'create' | 'update' | 'patch' | 'delete' | 'discovery';
export interface LoggedRequest { verb: Verb; method: string; path: string; resource?: string; at: number; userAgent?: string }

interface ResourceDef { group: string; version: string; kind: string; namespaced: boolean; short?: string[] }
export const RESOURCES: Record<string, ResourceDef> = {
  nodes: { group: '', version: 'v1', kind: 'Node', namespaced: false, short: ['no'] },
  pods: { group: '', version: 'v1', kind: 'Pod', namespaced: true, short: ['po'] },
  namespaces: { group: '', version: 'v1', kind: 'Namespace', namespaced: false, short: ['ns'] },
  configmaps: { group: '', version: 'v1', kind: 'ConfigMap', namespaced: true, short: ['cm'] },
  networkpolicies: { group: 'networking.k8s.io', version: 'v1', kind: 'NetworkPolicy', namespaced: true, short: ['netpol'] },
};
const gv = (r: ResourceDef) => (r.group ? `${r.group}/${r.version}` : r.version);

interface Event { rv: number; type: 'ADDED' | 'MODIFIED' | 'DELETED'; resource: string; obj: Obj }
interface Watcher { resource: string; ns?: string; match: (o: Obj) => boolean; send: (ev: Event) => void; expire: () => void; res: http.ServerResponse }

export interface ApiServerOptions {
  host?: string;
  port?: number;
  /** Bearer token required on every request when set. */
  token?: string;
  /** PEM cert and key: serve HTTPS. */
  tls?: { cert: string; key: string };
  /** How often a watch with allowWatchBookmarks gets a BOOKMARK (ms). */
  bookmarkMs?: number;
  /** Delay before every response (ms): a slow API server. */
  delayMs?: number;
  /** Seed kube-system, default and kube-public (true unless false). */
  seedNamespaces?: boolean;
  /** A unix socket that serves the same API plus /_fixture/{stop,start,compact,counts,delay} and stays
   *  up while the API is stopped: how a test in another network namespace drives the fixture. */
  controlSocket?: string;
}

export class ApiError extends Error {
  constructor(readonly code: number, readonly reason: string, message: string) { super(message); }
}
const statusBody = (code: number, reason: string, message: string) =>
  ({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
const clone = <T>(o: T): T => JSON.parse(JSON.stringify(o));
const key = (resource: string, ns: string | undefined, name: string) => `${resource}/${ns ?? ''}/${name}`;

export class FakeApiServer {
  readonly host: string;
  port: number;
  delayMs: number;
  bookmarkMs: number;
  readonly log: LoggedRequest[] = [];
  private rv = 100;
  private compactedBefore = 0;
  private readonly store = new Map<string, Obj>();
  private history: Event[] = [];
  private readonly watchers = new Set<Watcher>();
  private server?: http.Server;
  private control?: http.Server;
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly opts: ApiServerOptions = {}) {
    this.host = opts.host ?? '127.0.0.1';
    this.port = opts.port ?? 0;
    this.delayMs = opts.delayMs ?? 0;
    this.bookmarkMs = opts.bookmarkMs ?? 5000;
    if (opts.seedNamespaces !== false) for (const n of ['default', 'kube-system', 'kube-public']) this.create('namespaces', { metadata: { name: n } });
  }

  get url(): string { return `${this.opts.tls ? 'https' : 'http'}://${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.port}`; }
  get running(): boolean { return this.server !== undefined; }
  get resourceVersion(): string { return String(this.rv); }
  get watchCount(): number { return this.watchers.size; }

  /** Requests by verb (optionally only those since an index into `log`). */
  counts(since = 0): Record<Verb, number> {
    const c: Record<Verb, number> = { list: 0, watch: 0, get: 0, create: 0, update: 0, patch: 0, delete: 0, discovery: 0 };
    for (let i = since; i < this.log.length; i++) c[this.log[i].verb]++;
    return c;
  }

  async start(): Promise<void> {
    if (this.opts.controlSocket && !this.control) await this.listenControl(this.opts.controlSocket);
    if (this.server) return;
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => this.onRequest(req, res);
    const server = this.opts.tls ? https.createServer({ cert: this.opts.tls.cert, key: this.opts.tls.key }, handler) : http.createServer(handler);
    server.on('connection', (s: net.Socket) => { this.sockets.add(s); s.on('close', () => this.sockets.delete(s)); });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, this.host, () => { server.off('error', reject); resolve(); });
    });
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  /** The API server down: the listener closes and every open request and watch is cut. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    for (const w of this.watchers) w.res.destroy();
    this.watchers.clear();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  /** stop() and the control socket too. */
  async close(): Promise<void> {
    await this.stop();
    const c = this.control;
    this.control = undefined;
    if (c) await new Promise<void>((resolve) => c.close(() => resolve()));
  }

  private async listenControl(sock: string): Promise<void> {
    fs.rmSync(sock, { force: true });
    const control = http.createServer((req, res) => {
      const u = new URL(req.url ?? '/', 'http://x');
      if (!u.pathname.startsWith('/_fixture/')) return this.onRequest(req, res, true);
      req.resume();
      req.on('end', () => {
        const op = u.pathname.slice('/_fixture/'.length);
        const reply = (p: Promise<unknown> | unknown) =>
          Promise.resolve(p).then((v) => send(res, 200, v ?? { ok: true }), (e) => send(res, 500, statusBody(500, 'InternalError', String(e))));
        if (op === 'stop') return reply(this.stop());
        if (op === 'start') return reply(this.start());
        if (op === 'compact') return reply(this.compact(u.searchParams.get('expire') === '1'));
        if (op === 'delay') { this.delayMs = Number(u.searchParams.get('ms') ?? 0); return reply(undefined); }
        if (op === 'counts') {
          const since = Number(u.searchParams.get('since') ?? 0);
          return reply({ counts: this.counts(since), logLength: this.log.length, watches: this.watchCount, running: this.running, resourceVersion: this.resourceVersion });
        }
        if (op === 'log') return reply(this.log.slice(Number(u.searchParams.get('since') ?? 0)));
        send(res, 404, statusBody(404, 'NotFound', `no fixture op ${op}`));
      });
    });
    await new Promise<void>((resolve, reject) => { control.once('error', reject); control.listen(sock, () => resolve()); });
    this.control = control;
  }

  /** etcd compaction: the history is gone; a watch from an older resourceVersion gets 410 Expired.
   *  With `expireWatches`, open watches are ended with a 410 ERROR event too. */
  compact(expireWatches = false): void {
    this.compactedBefore = this.rv;
    this.history = [];
    if (expireWatches) { for (const w of [...this.watchers]) w.expire(); }
  }

  // ---- the store, for tests (same rules as the HTTP routes) ----------------------------------------

  get(resource: string, name: string, ns?: string): Obj | undefined {
    const o = this.store.get(key(resource, ns, name));
    return o && clone(o);
  }

  list(resource: string, ns?: string): Obj[] {
    return [...this.store.values()].filter((o) => this.isOf(resource, o) && (!ns || o.metadata.namespace === ns)).map(clone);
  }

  create(resource: string, body: Obj, ns?: string): Obj {
    const r = this.def(resource);
    const o = clone(body);
    o.metadata = o.metadata ?? {};
    if (r.namespaced) {
      o.metadata.namespace = ns ?? o.metadata.namespace ?? 'default';
      if (!this.store.has(key('namespaces', undefined, o.metadata.namespace))) {
        throw new ApiError(404, 'NotFound', `namespaces "${o.metadata.namespace}" not found`);
      }
    } else delete o.metadata.namespace;
    if (!o.metadata.name && o.metadata.generateName) o.metadata.name = o.metadata.generateName + randomUUID().slice(0, 5);
    if (!o.metadata.name) throw new ApiError(422, 'Invalid', `${r.kind} is invalid: metadata.name: Required value: name or generateName is required`);
    const k = key(resource, o.metadata.namespace, o.metadata.name);
    if (this.store.has(k)) throw new ApiError(409, 'AlreadyExists', `${resource} "${o.metadata.name}" already exists`);
    o.metadata.uid = randomUUID();
    o.metadata.creationTimestamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    o.kind = r.kind; o.apiVersion = gv(r);
    if (resource === 'namespaces') o.status = { phase: 'Active' };
    this.commit('ADDED', resource, k, o);
    return clone(o);
  }

  /** PUT: a resourceVersion in the body must be the current one (409 Conflict otherwise). */
  update(resource: string, name: string, body: Obj, ns?: string): Obj {
    const r = this.def(resource);
    const k = key(resource, r.namespaced ? ns : undefined, name);
    const cur = this.store.get(k);
    if (!cur) throw new ApiError(404, 'NotFound', `${resource} "${name}" not found`);
    if (body.metadata?.name && body.metadata.name !== name) throw new ApiError(400, 'BadRequest', 'the name of the object does not match the name on the URL');
    const want = body.metadata?.resourceVersion;
    if (want && want !== cur.metadata.resourceVersion) {
      throw new ApiError(409, 'Conflict', `Operation cannot be fulfilled on ${resource} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
    }
    const o = clone(body);
    o.metadata = { ...o.metadata, name, namespace: cur.metadata.namespace, uid: cur.metadata.uid, creationTimestamp: cur.metadata.creationTimestamp };
    if (!r.namespaced) delete o.metadata.namespace;
    o.kind = r.kind; o.apiVersion = gv(r);
    this.commit('MODIFIED', resource, k, o);
    return clone(o);
  }

  /** PATCH: merge patch (RFC 7386; strategic merge is treated as merge) or JSON patch (RFC 6902). */
  patch(resource: string, name: string, patch: unknown, contentType: string, ns?: string): Obj {
    const r = this.def(resource);
    const k = key(resource, r.namespaced ? ns : undefined, name);
    const cur = this.store.get(k);
    if (!cur) throw new ApiError(404, 'NotFound', `${resource} "${name}" not found`);
    let next: Obj;
    if (contentType.startsWith('application/json-patch+json')) next = jsonPatch(clone(cur), patch);
    else if (contentType.startsWith('application/merge-patch+json') || contentType.startsWith('application/strategic-merge-patch+json')) {
      next = mergePatch(clone(cur), patch) as Obj;
    } else throw new ApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json`);
    const want = (patch as Obj)?.metadata?.resourceVersion;
    if (typeof want === 'string' && want !== cur.metadata.resourceVersion) {
      throw new ApiError(409, 'Conflict', `Operation cannot be fulfilled on ${resource} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
    }
    next.metadata.resourceVersion = cur.metadata.resourceVersion;
    return this.update(resource, name, next, ns);
  }

  delete(resource: string, name: string, ns?: string): Obj {
    const r = this.def(resource);
    const k = key(resource, r.namespaced ? ns : undefined, name);
    const cur = this.store.get(k);
    if (!cur) throw new ApiError(404, 'NotFound', `${resource} "${name}" not found`);
    const o = clone(cur);
    this.commit('DELETED', resource, k, o);
    return clone(o);
  }

  // ---- internals -----------------------------------------------------------------------------------

  private def(resource: string): ResourceDef {
    const r = RESOURCES[resource];
    if (!r) throw new ApiError(404, 'NotFound', 'the server could not find the requested resource');
    return r;
  }

  private isOf(resource: string, o: Obj): boolean { return o.kind === RESOURCES[resource]?.kind; }

  private commit(type: Event['type'], resource: string, k: string, o: Obj): void {
    this.rv++;
    o.metadata.resourceVersion = String(this.rv);
    if (type === 'DELETED') this.store.delete(k); else this.store.set(k, o);
    const ev: Event = { rv: this.rv, type, resource, obj: clone(o) };
    this.history.push(ev);
    for (const w of this.watchers) if (w.resource === resource && w.match(ev.obj)) w.send(ev);
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse, trusted = false): void {
    const chunks: Buffer[] = [];
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', () => {
      const run = () => {
        try { this.route(req, res, Buffer.concat(chunks).toString('utf8'), trusted); } catch (e) {
          if (e instanceof ApiError) send(res, e.code, statusBody(e.code, e.reason, e.message));
          else send(res, 500, statusBody(500, 'InternalError', String(e)));
        }
      };
      if (this.delayMs > 0) setTimeout(run, this.delayMs); else run();
    });
  }

  private route(req: http.IncomingMessage, res: http.ServerResponse, body: string, trusted: boolean): void {
    const u = new URL(req.url ?? '/', 'http://x');
    const p = u.pathname.replace(/\/+$/, '') || '/';
    const method = req.method ?? 'GET';
    const logReq = (verb: Verb, resource?: string) =>
      this.log.push({ verb, method, path: u.pathname + u.search, resource, at: Date.now(), userAgent: req.headers['user-agent'] });
    if (this.opts.token && !trusted && req.headers.authorization !== `Bearer ${this.opts.token}`) {
      logReq('discovery');
      return send(res, 401, statusBody(401, 'Unauthorized', 'Unauthorized'));
    }
    const disc = this.discovery(p);
    if (disc) { logReq('discovery'); return send(res, 200, disc); }
    const m = /^\/(?:api\/v1|apis\/([a-z0-9.-]+)\/v1)(?:\/namespaces\/([^/]+))?\/([a-z]+)(?:\/([^/]+))?(?:\/(status))?$/.exec(p);
    const group = m?.[1] ?? '';
    const r = m ? RESOURCES[m[3]] : undefined;
    if (!m || !r || r.group !== group || (m[2] && !r.namespaced && m[3] !== 'namespaces')) {
      logReq('discovery');
      throw new ApiError(404, 'NotFound', 'the server could not find the requested resource');
    }
    let [, , ns, resource, name] = m;
    // /api/v1/namespaces/NAME is the namespace object itself
    if (resource === 'namespaces' && ns && !name) { name = ns; ns = undefined as unknown as string; }
    const q = u.searchParams;
    const watch = q.get('watch') === 'true' || q.get('watch') === '1';
    if (method === 'GET' && watch) { logReq('watch', resource); return this.watch(res, resource, ns, q); }
    if (method === 'GET' && !name) { logReq('list', resource); return send(res, 200, this.listBody(resource, ns, q)); }
    if (method === 'GET') {
      logReq('get', resource);
      const o = this.store.get(key(resource, r.namespaced ? ns : undefined, name));
      if (!o) throw new ApiError(404, 'NotFound', `${resource} "${name}" not found`);
      return send(res, 200, o);
    }
    const parsed = () => {
      const ct = String(req.headers['content-type'] ?? 'application/json');
      // protobuf and CBOR are refused with 415 so client-go falls back to JSON, as it does with
      // servers that do not speak them
      if (/protobuf|cbor/.test(ct)) throw new ApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json`);
      try { return JSON.parse(body); } catch (e) { throw new ApiError(400, 'BadRequest', `the body is not JSON: ${(e as Error).message}`); }
    };
    if (method === 'POST' && !name) { logReq('create', resource); return send(res, 201, this.create(resource, parsed(), ns)); }
    if (method === 'PUT' && name) { logReq('update', resource); return send(res, 200, this.update(resource, name, parsed(), ns)); }
    if (method === 'PATCH' && name) { logReq('patch', resource); return send(res, 200, this.patch(resource, name, parsed(), String(req.headers['content-type'] ?? ''), ns)); }
    if (method === 'DELETE' && name) { logReq('delete', resource); return send(res, 200, this.delete(resource, name, ns)); }
    logReq('discovery', resource);
    throw new ApiError(405, 'MethodNotAllowed', `the server does not allow this method on the requested resource`);
  }

  private discovery(p: string): unknown {
    if (p === '/version') return { major: '1', minor: '32', gitVersion: 'v1.32.0-weave-fixture', platform: 'linux/amd64' };
    if (p === '/healthz' || p === '/readyz' || p === '/livez') return 'ok';
    if (p === '/api') return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: `${this.host}:${this.port}` }] };
    if (p === '/apis') {
      return {
        kind: 'APIGroupList', apiVersion: 'v1',
        groups: [{ name: 'networking.k8s.io', versions: [{ groupVersion: 'networking.k8s.io/v1', version: 'v1' }], preferredVersion: { groupVersion: 'networking.k8s.io/v1', version: 'v1' } }],
      };
    }
    if (p === '/api/v1') return resourceList('');
    if (p === '/apis/networking.k8s.io/v1') return resourceList('networking.k8s.io');
    return undefined;
  }

  private selectorOf(ns: string | undefined, q: URLSearchParams): (o: Obj) => boolean {
    const fs = parseFieldSelector(q.get('fieldSelector') ?? '');
    const ls = parseLabelSelector(q.get('labelSelector') ?? '');
    return (o) => (!ns || o.metadata.namespace === ns) && fs(o) && ls(o.metadata.labels ?? {});
  }

  private listBody(resource: string, ns: string | undefined, q: URLSearchParams): unknown {
    const r = RESOURCES[resource];
    const match = this.selectorOf(r.namespaced ? ns : undefined, q);
    const items = [...this.store.values()].filter((o) => this.isOf(resource, o) && match(o))
      .sort((a, b) => `${a.metadata.namespace ?? ''}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace ?? ''}/${b.metadata.name}`));
    return { kind: `${r.kind}List`, apiVersion: gv(r), metadata: { resourceVersion: String(this.rv) }, items };
  }

  private watch(res: http.ServerResponse, resource: string, ns: string | undefined, q: URLSearchParams): void {
    const r = RESOURCES[resource];
    const match = this.selectorOf(r.namespaced ? ns : undefined, q);
    const rvParam = q.get('resourceVersion');
    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' });
    res.flushHeaders();
    const write = (type: string, object: unknown) => { if (!res.destroyed) res.write(JSON.stringify({ type, object }) + '\n'); };
    const expired = (from: number) =>
      write('ERROR', statusBody(410, 'Expired', `too old resource version: ${from} (${this.compactedBefore})`));
    if (!rvParam || rvParam === '0') {
      // "any version": the current state as synthetic ADDED events, then what follows
      for (const o of this.store.values()) if (this.isOf(resource, o) && match(o)) write('ADDED', o);
    } else {
      const from = Number(rvParam);
      if (!Number.isInteger(from) || from < 0) { write('ERROR', statusBody(400, 'BadRequest', `invalid resource version: ${rvParam}`)); res.end(); return; }
      if (from < this.compactedBefore) { expired(from); res.end(); return; }
      for (const ev of this.history) if (ev.rv > from && ev.resource === resource && match(ev.obj)) write(ev.type, ev.obj);
    }
    const w: Watcher = {
      resource, res, match,
      send: (ev) => write(ev.type, ev.obj),
      expire: () => { expired(Number(rvParam ?? 0)); done(); res.end(); },
    };
    this.watchers.add(w);
    const bm = q.get('allowWatchBookmarks') === 'true'
      ? setInterval(() => write('BOOKMARK', { kind: r.kind, apiVersion: gv(r), metadata: { resourceVersion: String(this.rv) } }), this.bookmarkMs)
      : undefined;
    const ts = Number(q.get('timeoutSeconds') ?? 0);
    const to = ts > 0 ? setTimeout(() => { done(); res.end(); }, ts * 1000) : undefined;
    const done = () => { this.watchers.delete(w); if (to) clearTimeout(to); if (bm) clearInterval(bm); };
    res.on('close', done);
  }
}

function send(res: http.ServerResponse, code: number, body: unknown): void {
  if (res.destroyed) return;
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(code, { 'Content-Type': typeof body === 'string' ? 'text/plain' : 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function resourceList(group: string): unknown {
  return {
    kind: 'APIResourceList', apiVersion: 'v1', groupVersion: group ? `${group}/v1` : 'v1',
    resources: Object.entries(RESOURCES).filter(([, r]) => r.group === group).flatMap(([name, r]) => [
      { name, singularName: r.kind.toLowerCase(), namespaced: r.namespaced, kind: r.kind, shortNames: r.short,
        verbs: ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'] },
      ...(name === 'nodes' || name === 'pods' || name === 'namespaces'
        ? [{ name: `${name}/status`, singularName: '', namespaced: r.namespaced, kind: r.kind, verbs: ['get', 'patch', 'update'] }] : []),
    ]),
  };
}

// ---- selectors -----------------------------------------------------------------------------------

function fieldOf(o: Obj, field: string): string {
  let v: unknown = o;
  for (const part of field.split('.')) v = v && typeof v === 'object' ? (v as Record<string, unknown>)[part] : undefined;
  return v === undefined || v === null ? '' : String(v);
}

const FIELDS = new Set(['metadata.name', 'metadata.namespace', 'spec.nodeName', 'status.phase', 'spec.unschedulable']);

/** fieldSelector: comma-separated `f=v`, `f==v`, `f!=v` over the fields the real server indexes. */
export function parseFieldSelector(s: string): (o: Obj) => boolean {
  if (!s.trim()) return () => true;
  const terms = s.split(',').map((t) => {
    const m = /^\s*([A-Za-z.]+)\s*(==|!=|=)\s*(.*?)\s*$/.exec(t);
    if (!m) throw new ApiError(400, 'BadRequest', `invalid field selector: ${t}`);
    if (!FIELDS.has(m[1])) throw new ApiError(400, 'BadRequest', `field label not supported: ${m[1]}`);
    return { f: m[1], neg: m[2] === '!=', v: m[3] };
  });
  return (o) => terms.every((t) => (fieldOf(o, t.f) === t.v) !== t.neg);
}

/** labelSelector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-separated. */
export function parseLabelSelector(s: string): (l: Record<string, string>) => boolean {
  if (!s.trim()) return () => true;
  const terms: Array<(l: Record<string, string>) => boolean> = [];
  const re = /\s*(?:(!)?([A-Za-z0-9._/-]+)\s*(?:(==|!=|=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*\(([^)]*)\))?)\s*(?:,|$)/y;
  let i = 0;
  while (i < s.length) {
    re.lastIndex = i;
    const m = re.exec(s);
    if (!m || m[0].length === 0) throw new ApiError(400, 'BadRequest', `unable to parse requirement: ${s.slice(i)}`);
    i = re.lastIndex;
    const [, not, k, op, v, setOp, set] = m;
    if (not) { if (op || setOp) throw new ApiError(400, 'BadRequest', `unable to parse requirement: ${m[0]}`); terms.push((l) => !(k in l)); }
    else if (op === '!=') terms.push((l) => l[k] !== v);
    else if (op) terms.push((l) => l[k] === v);
    else if (setOp) {
      const vals = new Set(set.split(',').map((x) => x.trim()));
      terms.push(setOp === 'in' ? (l) => k in l && vals.has(l[k]) : (l) => !(k in l) || !vals.has(l[k]));
    } else terms.push((l) => k in l);
  }
  return (l) => terms.every((t) => t(l));
}

// ---- patches -------------------------------------------------------------------------------------

export function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return clone(patch);
  const out: Record<string, unknown> = target && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(patch as Record<string, unknown>)) {
    if (v === null) delete out[k]; else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function jsonPatch(doc: Obj, ops: unknown): Obj {
  if (!Array.isArray(ops)) throw new ApiError(400, 'BadRequest', 'a JSON patch is an array of operations');
  for (const op of ops as Array<{ op: string; path: string; value?: unknown }>) {
    const parts = String(op.path).split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
    const last = parts.pop();
    if (last === undefined) throw new ApiError(422, 'Invalid', `bad JSON patch path: ${op.path}`);
    let parent: Record<string, unknown> = doc as unknown as Record<string, unknown>;
    for (const p of parts) {
      if (op.op === 'add' && parent[p] === undefined) parent[p] = {};
      parent = parent[p] as Record<string, unknown>;
      if (!parent || typeof parent !== 'object') throw new ApiError(422, 'Invalid', `JSON patch path not found: ${op.path}`);
    }
    if (op.op === 'remove') {
      if (!(last in parent)) throw new ApiError(422, 'Invalid', `JSON patch remove of a missing path: ${op.path}`);
      if (Array.isArray(parent)) parent.splice(Number(last), 1); else delete parent[last];
    } else if (op.op === 'add' || op.op === 'replace') {
      if (op.op === 'replace' && !(last in parent)) throw new ApiError(422, 'Invalid', `JSON patch replace of a missing path: ${op.path}`);
      if (Array.isArray(parent) && op.op === 'add') parent.splice(last === '-' ? parent.length : Number(last), 0, op.value);
      else parent[last] = op.value;
    } else if (op.op === 'test') {
      if (JSON.stringify(parent[last]) !== JSON.stringify(op.value)) throw new ApiError(422, 'Invalid', `JSON patch test failed: ${op.path}`);
    } else throw new ApiError(422, 'Invalid', `unsupported JSON patch op: ${op.op}`);
  }
  return doc;
}

// ---- helpers for tests ---------------------------------------------------------------------------

/** A Node object as kubelet registers it. */
export function nodeObject(name: string, internalIP: string, labels: Record<string, string> = {}): Obj {
  return {
    metadata: { name, labels: { 'kubernetes.io/hostname': name, 'kubernetes.io/os': 'linux', ...labels } },
    spec: {},
    status: { addresses: [{ type: 'InternalIP', address: internalIP }, { type: 'Hostname', address: name }], conditions: [{ type: 'Ready', status: 'True' }] },
  };
}

/** A kubeconfig (JSON is YAML) pointing at this server. */
export function kubeconfigFor(server: string, token?: string, caFile?: string): string {
  return JSON.stringify({
    apiVersion: 'v1', kind: 'Config', 'current-context': 'fixture',
    clusters: [{ name: 'fixture', cluster: { server, ...(caFile ? { 'certificate-authority': caFile } : {}) } }],
    users: [{ name: 'fixture', user: token ? { token } : {} }],
    contexts: [{ name: 'fixture', context: { cluster: 'fixture', user: 'fixture' } }],
  }, null, 2);
}

/** A self-signed certificate for HTTPS (openssl from Debian): { cert, key, caFile }. */
export function selfSignedCert(dir: string, ip = '127.0.0.1'): { cert: string; key: string; caFile: string } {
  const certFile = path.join(dir, 'apiserver.crt');
  const keyFile = path.join(dir, 'apiserver.key');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', '/CN=kube-apiserver', '-addext', `subjectAltName=IP:${ip},DNS:kubernetes.default.svc`,
    '-keyout', keyFile, '-out', certFile], { stdio: 'ignore' });
  return { cert: fs.readFileSync(certFile, 'utf8'), key: fs.readFileSync(keyFile, 'utf8'), caFile: certFile };
}

// ---- standalone ----------------------------------------------------------------------------------

async function main(argv: string[]): Promise<void> {
  const arg = (n: string) => { const i = argv.indexOf(n); return i >= 0 ? argv[i + 1] : undefined; };
  const tlsDir = arg('--tls-dir');
  const host = arg('--host') ?? '127.0.0.1';
  const tls = tlsDir ? selfSignedCert(tlsDir, host) : undefined;
  const srv = new FakeApiServer({
    host, port: Number(arg('--port') ?? 0), token: arg('--token'), tls: tls && { cert: tls.cert, key: tls.key },
    bookmarkMs: arg('--bookmark-ms') ? Number(arg('--bookmark-ms')) : undefined,
    delayMs: arg('--delay-ms') ? Number(arg('--delay-ms')) : undefined,
    controlSocket: arg('--control-socket'),
  });
  await srv.start();
  process.on('SIGUSR1', () => srv.compact(true));
  process.on('SIGTERM', () => { void srv.close().then(() => process.exit(0)); });
  process.stdout.write(JSON.stringify({ url: srv.url, caFile: tls?.caFile }) + '\n');
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e) => { process.stderr.write(`apiserver: ${(e as Error).message}\n`); process.exit(1); });
}
