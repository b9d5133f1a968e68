// The CLI's side of the HTTP API.
import * as http from 'http';
import { WeaveError } from '../lib/errors';

export class ApiClient {
  constructor(readonly host: string, readonly port: number) {}

  request<T = any>(method: string, path: string, body?: unknown, opts: { timeoutMs?: number; text?: boolean } = {}): Promise<T> {
    return new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : JSON.stringify(body);
      const req = http.request({ host: this.host, port: this.port, method, path, headers: data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {} }, (res) => {
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
        if (e.code === 'ECONNREFUSED') reject(new WeaveError('ENOTRUNNING', `weave router is not running (nothing answers on ${this.host}:${this.port})`));
        else reject(e);
      });
      req.end(data);
    });
  }
}
