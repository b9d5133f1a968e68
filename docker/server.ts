// The plugin's socket: HTTP/1.1 on a unix socket where dockerd finds it (/run/docker/plugins/NAME.sock),
// POST /<Method> with a JSON body, a JSON answer ("application/vnd.docker.plugins.v1.2+json"). A
// failed call answers {"Err": message} (400 for the user's mistakes, 500 otherwise), which Docker
// prints after the method's name. Bodies are small; anything over 1 MiB is refused.
import * as fs from 'fs';
import * as http from 'http';
import * as net from 'net';
import * as path from 'path';
import { UsageError, WeaveError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { Body } from './driver';

const MAX_BODY = 1 << 20;
const CONTENT_TYPE = 'application/vnd.docker.plugins.v1.2+json';

export type PluginHandler = (method: string, body: Body) => Promise<unknown>;

/** Whether something accepts connections on a unix socket path. */
function listening(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(p);
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
}

export class PluginServer {
  private server: http.Server | undefined;
  /** durations of calls, for the histogram (set by the subsystem) */
  observe: (method: string, seconds: number) => void = () => {};

  constructor(readonly socketPath: string, private readonly handler: PluginHandler, private readonly log: Logger) {}

  async start(): Promise<void> {
    fs.mkdirSync(path.dirname(this.socketPath), { recursive: true });
    if (fs.existsSync(this.socketPath)) {
      if (await listening(this.socketPath)) throw new WeaveError('ERUNNING', `another process serves ${this.socketPath} (another weave router?): stop it, or give this one --docker-plugin-socket`, { path: this.socketPath });
      fs.rmSync(this.socketPath, { force: true }); // left by a router that died
    }
    const server = http.createServer((req, res) => void this.serve(req, res));
    server.requestTimeout = 60_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => { server.off('error', reject); resolve(); });
    });
    fs.chmodSync(this.socketPath, 0o600);
    this.server = server;
  }

  async stop(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    await new Promise<void>((resolve) => { s.close(() => resolve()); s.closeAllConnections(); });
    fs.rmSync(this.socketPath, { force: true });
  }

  private async serve(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const t0 = process.hrtime.bigint();
    const method = (req.url ?? '').replace(/^\//, '');
    const reply = (status: number, body: unknown): void => {
      if (res.headersSent) return;
      const text = JSON.stringify(body);
      res.writeHead(status, { 'Content-Type': CONTENT_TYPE, 'Content-Length': Buffer.byteLength(text) });
      res.end(text);
    };
    try {
      if (req.method !== 'POST') return reply(405, { Err: `weave: ${req.method} ${req.url}: plugin calls are POST` });
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const c of req) {
        size += (c as Buffer).length;
        if (size > MAX_BODY) return reply(413, { Err: `weave: ${method}: request body over ${MAX_BODY} bytes` });
        chunks.push(c as Buffer);
      }
      const text = Buffer.concat(chunks).toString('utf8').trim();
      let body: unknown = {};
      try {
        if (text) body = JSON.parse(text);
      } catch (e) {
        return reply(400, { Err: `weave: ${method}: the request is not JSON: ${errMsg(e)}` });
      }
      if (body === null || typeof body !== 'object' || Array.isArray(body)) return reply(400, { Err: `weave: ${method}: the request must be a JSON object` });
      const out = await this.handler(method, body as Body);
      reply(200, out ?? {});
    } catch (e) {
      const status = e instanceof UsageError ? 400 : e instanceof WeaveError && e.code === 'ENOTFOUND' ? 404 : 500;
      const msg = errMsg(e);
      reply(status, { Err: msg.startsWith('weave') ? msg : `weave: ${msg}` });
      if (status === 500) this.log.warn({ method, err: msg }, 'docker plugin call failed');
    } finally {
      this.observe(method, Number(process.hrtime.bigint() - t0) / 1e9);
    }
  }
}
