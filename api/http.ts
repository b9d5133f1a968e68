// The router's HTTP API (127.0.0.1:6784 by default, inside the router's own namespace). A small
// method+path table; JSON in and out; errors carry a code and a message that says what to fix.
import * as http from 'http';
import { UsageError, WeaveError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';

export type Handler = (req: { body: any; query: URLSearchParams; path: string }) => Promise<unknown> | unknown;

export interface Route { method: 'GET' | 'POST' | 'DELETE'; path: string; handler: Handler; text?: boolean }

const MAX_BODY = 1 << 20;

export class ApiServer {
  private server?: http.Server;
  private readonly routes = new Map<string, Route>();
  requests = 0;
  errors = 0;

  constructor(private readonly log: Logger) {}

  add(method: Route['method'], path: string, handler: Handler, opts: { text?: boolean } = {}): void {
    this.routes.set(`${method} ${path}`, { method, path, handler, text: opts.text });
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const server = http.createServer((req, res) => void this.handle(req, res));
      server.keepAliveTimeout = 1000;
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        this.server = server;
        const a = server.address() as { address: string; port: number };
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server) return resolve();
      this.server.close(() => resolve());
      this.server.closeAllConnections?.();
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    this.requests++;
    const url = new URL(req.url ?? '/', 'http://x');
    const route = this.routes.get(`${req.method} ${url.pathname}`);
    if (!route) {
      const allowed = [...this.routes.values()].filter((r) => r.path === url.pathname).map((r) => r.method);
      return this.reply(res, allowed.length ? 405 : 404, { error: allowed.length ? `method ${req.method} not allowed on ${url.pathname} (use ${allowed.join(', ')})` : `no such endpoint ${url.pathname}`, code: 'ENOTFOUND' });
    }
    let body: any = undefined;
    try {
      if (req.method !== 'GET') body = await readJson(req);
      const out = await route.handler({ body, query: url.searchParams, path: url.pathname });
      if (route.text) {
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
        res.end(String(out));
      } else {
        this.reply(res, 200, out ?? { ok: true });
      }
    } catch (e) {
      this.errors++;
      const status = e instanceof UsageError ? 400 : e instanceof WeaveError && e.code === 'ENOTFOUND' ? 404 : e instanceof WeaveError && e.code === 'ECONFLICT' ? 409 : 500;
      if (status === 500) this.log.error({ err: e, path: url.pathname }, 'API request failed');
      else this.log.info({ path: url.pathname, code: (e as WeaveError).code, reason: errMsg(e) }, 'API request refused');
      this.reply(res, status, { error: errMsg(e), code: e instanceof WeaveError ? e.code : 'EINTERNAL' });
    }
  }

  private reply(res: http.ServerResponse, status: number, obj: unknown): void {
    const text = JSON.stringify(obj);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }
}

function readJson(req: http.IncomingMessage): Promise<any> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new UsageError(`request body larger than ${MAX_BODY} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('error', reject);
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      if (!text) return resolve({});
      try {
        resolve(JSON.parse(text));
      } catch {
        reject(new UsageError('request body is not valid JSON'));
      }
    });
  });
}
