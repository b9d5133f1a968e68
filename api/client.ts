// The CLI's side of the HTTP API. Every request goes to the router's unix socket in the data dir
// (WEAVE_DATA_DIR says which router; only root can open it). Read-only GETs fall back to TCP
// (127.0.0.1:6784 or --http-addr) when the socket cannot be used, so anyone may read the status;
// anything that changes the router never does, and the error says why: not root, or no router there.
import * as http from 'http';
import { WeaveError } from '../lib/errors';

export interface ApiTarget {
  /** the router's API socket (<dataDir>/weave.sock) */
  socketPath?: string;
  /** for messages: which router the socket belongs to */
  dataDir?: string;
  /** TCP address of the read-only API */
  host: string;
  port: number;
}

export interface RequestOptions { timeoutMs?: number; text?: boolean }

type Endpoint = { socketPath: string } | { host: string; port: number };

/** Errors of connect(2) on the socket: nobody there (ENOENT, ECONNREFUSED, ENOTDIR) or not allowed. */
const NOT_THERE = new Set(['ENOENT', 'ECONNREFUSED', 'ENOTDIR']);
const NOT_ALLOWED = new Set(['EACCES', 'EPERM']);

export class ApiClient {
  constructor(readonly target: ApiTarget) {}

  async request<T = any>(method: string, path: string, body?: unknown, opts: RequestOptions = {}): Promise<T> {
    const t = this.target;
    const tcp = { host: t.host, port: t.port };
    if (!t.socketPath) return send<T>(tcp, method, path, body, opts);
    let sockErr: NodeJS.ErrnoException;
    try {
      return await send<T>({ socketPath: t.socketPath }, method, path, body, opts);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? '';
      if (!NOT_THERE.has(code) && !NOT_ALLOWED.has(code)) throw e;
      sockErr = e as NodeJS.ErrnoException;
    }
    const denied = NOT_ALLOWED.has(sockErr.code ?? '');
    const where = t.dataDir ? `with data dir ${t.dataDir}` : `at ${t.socketPath}`;
    if (method === 'GET') {
      try {
        return await send<T>(tcp, method, path, body, opts);
      } catch (e) {
        if (!(e instanceof WeaveError && e.code === 'ENOTRUNNING')) throw e;
        if (denied) throw new WeaveError('EPERM', `permission denied: run as root (the router's API socket ${t.socketPath} is root's, and nothing answers on ${t.host}:${t.port})`);
        throw new WeaveError('ENOTRUNNING', `no router running ${where} (no API socket at ${t.socketPath}; nothing answers on ${t.host}:${t.port})`);
      }
    }
    if (denied) throw new WeaveError('EPERM', `permission denied: run as root (${method} ${path} goes through the router's API socket ${t.socketPath}, which only root can open)`);
    const other = await probe(tcp);
    const hint = other && other.dataDir !== t.dataDir ? `; the router answering on ${t.host}:${t.port} has data dir ${other.dataDir}: set WEAVE_DATA_DIR=${other.dataDir}` : '';
    throw new WeaveError('ENOTRUNNING', `no router running ${where} (no API socket at ${t.socketPath})${hint}`);
  }
}

/** The data dir of the router answering GET /status over TCP, if any (for a hint). */
async function probe(tcp: { host: string; port: number }): Promise<{ dataDir?: string } | undefined> {
  try {
    const r = await send<{ router?: { dataDir?: string } }>(tcp, 'GET', '/status', undefined, { timeoutMs: 2000 });
    return { dataDir: r.router?.dataDir };
  } catch {
    return undefined; // a hint only
  }
}

function send<T>(ep: Endpoint, method: string, path: string, body: unknown, opts: RequestOptions): Promise<T> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const headers = data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {};
    const req = http.request({ ...ep, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (opts.text && res.statusCode === 200) return resolve(text as unknown as T);
        let obj: any;
        try {
          obj = text ? JSON.parse(text) : {};
        } catch {
          return reject(new WeaveError('EAPI', `router API returned invalid JSON for ${method} ${path} (HTTP ${res.statusCode})`));
        }
        if (res.statusCode !== 200) return reject(new WeaveError(obj.code || 'EAPI', obj.error || `HTTP ${res.statusCode}`, { status: res.statusCode }));
        resolve(obj as T);
      });
    });
    req.setTimeout(opts.timeoutMs ?? 30_000, () => req.destroy(new WeaveError('ETIMEDOUT', `router API did not answer ${method} ${path} in time`)));
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ECONNREFUSED' && !('socketPath' in ep)) reject(new WeaveError('ENOTRUNNING', `weave router is not running (nothing answers on ${ep.host}:${ep.port})`));
      else reject(e);
    });
    req.end(data);
  });
}
