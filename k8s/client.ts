// A small Kubernetes API client: JSON requests and watches over node:http(s), nothing else.
//
// Why not @kubernetes/client-node: 1.x is ESM-only (this build is CommonJS), and measured here it
// costs ~55 MB of RSS and 0.8-1.3 s to import (README "Kubernetes mode"), for the four calls the
// router makes: list Nodes, watch Nodes, get and update one ConfigMap.
//
// A watch is a chunked HTTP response of JSON lines `{"type": ..., "object": ...}`; watch() hands
// each decoded event to a callback and resolves when the stream ends (server timeout, API down) with
// how it ended. Reconnects, backoff and 410 relists are the informer's (k8s/informer.ts).
import * as http from 'http';
import * as https from 'https';
import * as fs from 'fs';
import { WeaveError, errMsg } from '../lib/errors';
import type { KubeConnection } from './config';

/** An answer from the API server that is not 2xx (code and reason as the server said). */
export class KubeApiError extends WeaveError {
  constructor(readonly status: number, readonly reason: string, message: string, context: Record<string, unknown> = {}) {
    super('EKUBEAPI', message, { status, reason, ...context });
    this.name = 'KubeApiError';
  }
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: { name: string; namespace?: string; resourceVersion?: string; uid?: string; labels?: Record<string, string>; [k: string]: unknown };
  [k: string]: unknown;
}

export interface KubeList<T extends KubeObject = KubeObject> { items: T[]; metadata: { resourceVersion: string } }

export interface WatchEvent<T extends KubeObject = KubeObject> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: T;
}

export interface WatchOptions {
  resourceVersion?: string;
  allowWatchBookmarks?: boolean;
  fieldSelector?: string;
  labelSelector?: string;
  /** the server ends the watch after this long (client-go asks 5-10 min) */
  timeoutSeconds?: number;
  signal?: AbortSignal;
  /** the server accepted the watch (a 2xx answer): the API is reachable */
  onOpen?: () => void;
}

export type WatchEnd = { how: 'closed' } | { how: 'expired'; message: string } | { how: 'error'; error: Error } | { how: 'aborted' };

/** Longest line a watch may send (a Node with many images is ~20 KB; this bounds a broken server). */
const MAX_LINE = 16 << 20;
const REQUEST_TIMEOUT_MS = 15_000;
const TOKEN_REREAD_MS = 60_000;

export class KubeClient {
  private readonly base: URL;
  private readonly agent: http.Agent;
  private token: { value?: string; readAt: number } = { readAt: -Infinity };
  /** requests made, by verb (bench/kube and `weave status kube`) */
  readonly counts = { list: 0, watch: 0, get: 0, update: 0, create: 0 };

  constructor(private readonly conn: KubeConnection, private readonly opts: { timeoutMs?: number } = {}) {
    this.base = new URL(conn.server);
    const agentOpts = { keepAlive: true, maxSockets: 8 };
    this.agent = this.base.protocol === 'https:'
      ? new https.Agent({ ...agentOpts, ca: conn.ca, cert: conn.cert, key: conn.key, rejectUnauthorized: !conn.insecure })
      : new http.Agent(agentOpts);
  }

  get server(): string { return this.conn.server; }

  close(): void { this.agent.destroy(); }

  private bearer(): string | undefined {
    if (this.conn.token) return this.conn.token;
    if (!this.conn.tokenFile) return undefined;
    const now = Date.now();
    if (now - this.token.readAt > TOKEN_REREAD_MS) {
      try {
        this.token = { value: fs.readFileSync(this.conn.tokenFile, 'utf8').trim(), readAt: now };
      } catch (e) {
        // keep the token we had: the file is replaced by a rename, a read may race it
        if (this.token.value === undefined) throw new WeaveError('EKUBETOKEN', `cannot read the API token ${this.conn.tokenFile}: ${errMsg(e)}`, { file: this.conn.tokenFile }, { cause: e });
      }
    }
    return this.token.value;
  }

  private requestOptions(method: string, pathAndQuery: string, headers: Record<string, string>): http.RequestOptions {
    const token = this.bearer();
    return {
      protocol: this.base.protocol, hostname: this.base.hostname.replace(/^\[|\]$/g, ''), port: this.base.port || (this.base.protocol === 'https:' ? 443 : 80),
      method, path: (this.base.pathname.replace(/\/$/, '') + pathAndQuery), agent: this.agent,
      headers: { Accept: 'application/json', 'User-Agent': 'weave.ts/kube', ...(token ? { Authorization: `Bearer ${token}` } : {}), ...headers },
    };
  }

  /** One JSON request; a non-2xx answer is a KubeApiError with the server's status and reason. */
  async request<T>(method: string, pathAndQuery: string, body?: unknown, contentType = 'application/json'): Promise<T> {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = data ? { 'Content-Type': contentType, 'Content-Length': String(data.length) } : {};
    const mod = this.base.protocol === 'https:' ? https : http;
    return new Promise<T>((resolve, reject) => {
      const req = mod.request(this.requestOptions(method, pathAndQuery, headers), (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          let parsed: any;
          try { parsed = text ? JSON.parse(text) : undefined; } catch (e) {
            return reject(new KubeApiError(status, 'BadResponse', `${method} ${pathAndQuery}: the API server answered ${status} with non-JSON: ${text.slice(0, 200)}`));
          }
          if (status >= 200 && status < 300) return resolve(parsed as T);
          reject(new KubeApiError(status, parsed?.reason ?? 'Unknown', `${method} ${pathAndQuery}: ${status} ${parsed?.message ?? text.slice(0, 200)}`, { path: pathAndQuery }));
        });
      });
      req.setTimeout(this.opts.timeoutMs ?? REQUEST_TIMEOUT_MS, () => req.destroy(new WeaveError('ETIMEDOUT', `${method} ${pathAndQuery}: no answer from the API server within ${(this.opts.timeoutMs ?? REQUEST_TIMEOUT_MS) / 1000}s`)));
      req.on('error', (e) => reject(e instanceof WeaveError ? e : new WeaveError('EKUBEDOWN', `${method} ${pathAndQuery}: cannot reach the API server ${this.conn.server}: ${errMsg(e)}`, { path: pathAndQuery }, { cause: e })));
      req.end(data);
    });
  }

  async list<T extends KubeObject>(collection: string, q: { fieldSelector?: string; labelSelector?: string } = {}): Promise<KubeList<T>> {
    this.counts.list++;
    return this.request<KubeList<T>>('GET', collection + query(q));
  }

  async get<T extends KubeObject>(pathToObject: string): Promise<T> {
    this.counts.get++;
    return this.request<T>('GET', pathToObject);
  }

  /** PUT: with metadata.resourceVersion set, the server refuses (409 Conflict) if the object changed since. */
  async update<T extends KubeObject>(pathToObject: string, obj: T): Promise<T> {
    this.counts.update++;
    return this.request<T>('PUT', pathToObject, obj);
  }

  async create<T extends KubeObject>(collection: string, obj: T): Promise<T> {
    this.counts.create++;
    return this.request<T>('POST', collection, obj);
  }

  /**
   * Follows a watch until its stream ends. Resolves (never rejects) with how it ended: the server
   * closed it (reconnect from the last resourceVersion), an ERROR event with 410 (relist), an error
   * (the API down: back off), or the signal.
   */
  watch<T extends KubeObject>(collection: string, o: WatchOptions, onEvent: (ev: WatchEvent<T>) => void): Promise<WatchEnd> {
    this.counts.watch++;
    const q = query({
      watch: 'true', resourceVersion: o.resourceVersion, allowWatchBookmarks: o.allowWatchBookmarks ? 'true' : undefined,
      fieldSelector: o.fieldSelector, labelSelector: o.labelSelector, timeoutSeconds: o.timeoutSeconds ? String(o.timeoutSeconds) : undefined,
    });
    const mod = this.base.protocol === 'https:' ? https : http;
    return new Promise<WatchEnd>((resolve) => {
      let settled = false;
      const finish = (end: WatchEnd) => { if (!settled) { settled = true; o.signal?.removeEventListener('abort', onAbort); resolve(end); } };
      let req: http.ClientRequest;
      const onAbort = () => { finish({ how: 'aborted' }); req?.destroy(); };
      try {
        req = mod.request(this.requestOptions('GET', collection + q, {}), (res) => {
          if ((res.statusCode ?? 0) >= 300) {
            const chunks: Buffer[] = [];
            res.on('data', (d: Buffer) => chunks.push(d));
            res.on('end', () => {
              let st: any;
              try { st = JSON.parse(Buffer.concat(chunks).toString('utf8')); } catch { /* not a Status */ }
              const err = new KubeApiError(res.statusCode ?? 0, st?.reason ?? 'Unknown', `watch ${collection}: ${res.statusCode} ${st?.message ?? ''}`.trim());
              finish(res.statusCode === 410 ? { how: 'expired', message: err.message } : { how: 'error', error: err });
            });
            return;
          }
          o.onOpen?.();
          let buf = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => {
            buf += d;
            let i: number;
            while ((i = buf.indexOf('\n')) >= 0) {
              const line = buf.slice(0, i);
              buf = buf.slice(i + 1);
              if (!line.trim()) continue;
              let ev: WatchEvent<T>;
              try { ev = JSON.parse(line); } catch (e) {
                finish({ how: 'error', error: new WeaveError('EKUBEWATCH', `watch ${collection}: a line that is not JSON: ${errMsg(e)}`) });
                req.destroy();
                return;
              }
              if (ev.type === 'ERROR') {
                const st = ev.object as unknown as { code?: number; message?: string; reason?: string };
                finish(st?.code === 410 ? { how: 'expired', message: st.message ?? 'Expired' }
                  : { how: 'error', error: new KubeApiError(st?.code ?? 0, st?.reason ?? 'Unknown', `watch ${collection}: ${st?.message ?? 'error event'}`) });
                req.destroy();
                return;
              }
              if (!ev.object || typeof ev.object !== 'object' || !ev.object.metadata) continue;
              onEvent(ev);
            }
            if (buf.length > MAX_LINE) {
              finish({ how: 'error', error: new WeaveError('EKUBEWATCH', `watch ${collection}: a line over ${MAX_LINE} bytes`) });
              req.destroy();
            }
          });
          res.on('end', () => finish({ how: 'closed' }));
          res.on('error', (e) => finish({ how: 'error', error: e }));
          res.on('close', () => finish({ how: 'error', error: new WeaveError('EKUBEDOWN', `watch ${collection}: the connection to the API server closed`) }));
        });
      } catch (e) {
        finish({ how: 'error', error: e as Error });
        return;
      }
      req.on('error', (e) => finish({ how: 'error', error: new WeaveError('EKUBEDOWN', `watch ${collection}: cannot reach the API server ${this.conn.server}: ${errMsg(e)}`, {}, { cause: e }) }));
      // a watch silent past its own timeout plus a margin is dead (a half-open TCP connection)
      req.on('socket', (s) => s.setKeepAlive(true, 15_000));
      req.setTimeout(((o.timeoutSeconds ?? 300) + 60) * 1000, () => req.destroy(new WeaveError('ETIMEDOUT', `watch ${collection}: silent past its timeout`)));
      if (o.signal?.aborted) onAbort(); else o.signal?.addEventListener('abort', onAbort);
      req.end();
    });
  }
}

function query(q: Record<string, string | undefined>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== '') p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : '';
}
