// The router's HTTP API. A small method+path table; JSON in and out; errors carry a code and a
// message that says what to fix. Two listeners share the table:
//   - a unix socket in the data dir (<dataDir>/weave.sock, mode 0600: only root opens it) serves
//     everything; the CLI uses it;
//   - TCP (127.0.0.1:6784 inside the router's namespace) serves the read-only GETs (status, report,
//     metrics, ps, ipam, dns, lookup) and refuses every other method with 403, because anything in
//     the namespace (a hostNetwork pod too) can reach it.
// One request, in order: the request line (malformed: 400, answered by the parser hook), the route
// (404 / 405), the listener (403), the body (read up to MAX_BODY; bigger: 413 answered at once and
// the rest read and dropped, so the client sees the answer instead of a reset), JSON (400), the
// handler (its typed error -> 400/404/409/503, anything else -> 500 logged). Nothing a client sends
// can throw out of here: a guard around each request turns the unexpected into a 500.
import * as fs from 'fs';
import * as http from 'http';
import * as net from 'net';
import * as path from 'path';
import { UsageError, WeaveError, RefusedError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import { asBody, type Body } from '../lib/validate';
import type { ApiHandler, ApiRoute } from '../lib/subsystem';

export type { ApiRequest } from '../lib/subsystem';
export type Handler = ApiHandler;

export type Route = ApiRoute;

/** Largest request body read (a few hundred bytes is the most any route needs). */
export const MAX_BODY = 1 << 20;
/** After a 413, how much of the refused body is read and dropped before the connection closes. */
const MAX_DRAIN = 64 << 20;
const DRAIN_MS = 10_000;
/** A client must deliver its whole request (headers and body) within this. */
const REQUEST_TIMEOUT_MS = 15_000;
/** The API socket's file name in the data dir. */
export const API_SOCKET = 'weave.sock';
/** sun_path holds 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

export function apiSocketPath(dataDir: string): string {
  return path.join(dataDir, API_SOCKET);
}

/** RFC 3986 path characters (pchar and '/'): anything else in the path is a malformed request. */
const PATH_RE = /^\/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$/;

/** Splits a request target ("/path?query") without URL(): UsageError when it is not origin-form. */
export function parseTarget(raw: string | undefined): { path: string; query: URLSearchParams } {
  const t = raw ?? '';
  const q = t.indexOf('?');
  const p = q < 0 ? t : t.slice(0, q);
  if (!PATH_RE.test(p)) throw new UsageError(`malformed request target "${t.slice(0, 100)}": expected /path[?query]`);
  return { path: p, query: new URLSearchParams(q < 0 ? '' : t.slice(q + 1)) };
}

/** HTTP status of a handler's error; anything not a WeaveError is a bug (500). */
export function statusOf(e: unknown): number {
  if (e instanceof UsageError) return 400;
  if (!(e instanceof WeaveError)) return 500;
  if (e.code === 'ENOTFOUND') return 404;
  if (e.code === 'ECONFLICT' || e instanceof RefusedError) return 409;
  if (e.code === 'ETIMEDOUT' || e.code === 'ESHUTDOWN' || e.code === 'ENOTREADY') return 503;
  return 500;
}

const TOO_LARGE = Symbol('too large');
const ABORTED = Symbol('aborted');

export class ApiServer {
  private tcp?: http.Server;
  private unix?: http.Server;
  private socketFile?: string;
  private socketIno?: number;
  private readonly routes = new Map<string, Route>();
  /** connections whose answer (a 413) is out while their body is still being dropped */
  private readonly draining = new WeakSet<net.Socket>();
  requests = 0;
  errors = 0;

  private readonly requestTimeoutMs: number;

  constructor(private readonly log: Logger, opts: { requestTimeoutMs?: number } = {}) {
    this.requestTimeoutMs = opts.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
  }

  add(method: Route['method'], path: string, handler: Handler, opts: { text?: boolean; contentType?: string; stream?: Route['stream'] } = {}): void {
    this.routes.set(`${method} ${path}`, { method, path, handler, text: opts.text, contentType: opts.contentType, stream: opts.stream });
  }

  /** TCP: read-only routes; every other method is refused with 403. */
  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      const server = this.serve(false);
      server.once('error', (e) => reject(new WeaveError('EAPI', `cannot listen for the HTTP API on ${host}:${port}: ${errMsg(e)}`, {}, { cause: e })));
      server.listen(port, host, () => {
        server.removeAllListeners('error');
        server.on('error', (e) => this.log.error({ err: e }, 'HTTP API listener failed'));
        this.tcp = server;
        const a = server.address() as { address: string; port: number };
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  /**
   * The unix socket serving every route. Its directory must be ours and writable by nobody else (or
   * another user could put their own socket in its place); a stale socket (nobody answers) is removed,
   * a live one refused. Created 0600 (umask around the bind, chmod after): only root connects.
   */
  async listenUnix(file: string): Promise<void> {
    if (Buffer.byteLength(file) > MAX_SOCKET_PATH) {
      throw new WeaveError('EAPI', `API socket path ${file} is longer than ${MAX_SOCKET_PATH} bytes: use a shorter WEAVE_DATA_DIR`);
    }
    checkSocketDir(path.dirname(file));
    await removeStaleSocket(file, this.log);
    const server = this.serve(true);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => reject(new WeaveError('EAPI', `cannot listen on the API socket ${file}: ${errMsg(e)}`, {}, { cause: e })));
      const old = process.umask(0o177);
      try {
        server.listen(file, () => {
          server.removeAllListeners('error');
          server.on('error', (e) => this.log.error({ err: e }, 'API socket listener failed'));
          resolve();
        });
      } finally {
        process.umask(old);
      }
    });
    this.unix = server;
    this.socketFile = file;
    fs.chmodSync(file, 0o600);
    this.socketIno = fs.statSync(file).ino;
  }

  close(): Promise<void> {
    const closeOne = (s?: http.Server): Promise<void> => new Promise((resolve) => {
      if (!s) return resolve();
      s.close(() => resolve());
      s.closeAllConnections?.();
    });
    return Promise.all([closeOne(this.tcp), closeOne(this.unix)]).then(() => {
      this.tcp = undefined;
      this.unix = undefined;
      // only our own socket: a successor may already have replaced it
      if (this.socketFile) {
        try {
          if (fs.statSync(this.socketFile).ino === this.socketIno) fs.rmSync(this.socketFile, { force: true });
        } catch { /* already gone */ }
      }
      this.socketFile = undefined;
    });
  }

  private serve(trusted: boolean): http.Server {
    // stalled requests are answered 408 and closed: checked every second, not Node's default 30 s
    const server = http.createServer({ requestTimeout: this.requestTimeoutMs, headersTimeout: this.requestTimeoutMs, connectionsCheckingInterval: Math.min(1000, this.requestTimeoutMs) }, (req, res) => {
      this.handle(req, res, trusted).catch((e: unknown) => this.internalError(req, res, e));
    });
    server.keepAliveTimeout = 1000;
    server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => this.clientError(err, socket));
    // a client announcing a body bigger than we read learns it before sending it
    server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
      if (declaredLength(req) > MAX_BODY) {
        this.requests++;
        this.errors++;
        res.shouldKeepAlive = false;
        return this.reply(res, 413, tooLargeBody());
      }
      res.writeContinue();
      server.emit('request', req, res);
    });
    return server;
  }

  /** The request line or headers did not parse (or never finished): answer and close, never throw. */
  private clientError(err: NodeJS.ErrnoException, socket: net.Socket): void {
    this.requests++;
    this.errors++;
    if (err.code === 'ECONNRESET' || !socket.writable || this.draining.has(socket)) {
      socket.destroy(); // (a 413 already went out: no second answer)
      return;
    }
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const text = JSON.stringify({ error: status === 408 ? 'the request did not arrive in time' : `malformed HTTP request: ${err.code ?? errMsg(err)}`, code: 'EUSAGE' });
    this.log.info({ code: err.code, status }, 'API request refused before routing');
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse, trusted: boolean): Promise<void> {
    this.requests++;
    let target: { path: string; query: URLSearchParams };
    try {
      target = parseTarget(req.url);
    } catch (e) {
      return this.refuse(req, res, 400, errMsg(e), 'EUSAGE');
    }
    const where = target.path;
    const route = this.routes.get(`${req.method} ${where}`);
    let refusal: { status: number; error: string; code: string } | undefined;
    if (!route) {
      const allowed = [...this.routes.values()].filter((r) => r.path === where).map((r) => r.method);
      refusal = allowed.length
        ? { status: 405, error: `method ${req.method} not allowed on ${where} (use ${allowed.join(', ')})`, code: 'EMETHOD' }
        : { status: 404, error: `no such endpoint ${where}`, code: 'ENOTFOUND' };
    } else if (route.method !== 'GET' && !trusted) {
      refusal = {
        status: 403,
        error: `${route.method} ${where} changes the router and is only served on its unix socket${this.socketFile ? ` ${this.socketFile}` : ''}: use the weave CLI as root`,
        code: 'EFORBIDDEN',
      };
    }
    if (declaredLength(req) > MAX_BODY) return this.tooLarge(req, res);
    // the body is read (or dropped) before any answer, so the answer never races a body still arriving
    const raw = await readBody(req, MAX_BODY, !refusal && route!.method !== 'GET');
    if (raw === TOO_LARGE) return this.tooLarge(req, res);
    if (raw === ABORTED) {
      // the client went away mid-body: a truncated body is never acted on, and nobody reads an answer
      this.errors++;
      res.destroy();
      return;
    }
    if (refusal) return this.refuse(req, res, refusal.status, refusal.error, refusal.code);
    let body: Body;
    try {
      body = asBody(raw.length ? parseJson(raw) : undefined);
      if (route!.stream) return this.openStream(req, res, route!.stream, { body, query: target.query, path: where });
      const out = await route!.handler({ body, query: target.query, path: where });
      if (route!.contentType) {
        res.writeHead(200, { 'content-type': route!.contentType, 'cache-control': 'no-store' });
        res.end(String(out));
      } else if (route!.text) {
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
        res.end(String(out));
      } else {
        this.reply(res, 200, out ?? { ok: true });
      }
    } catch (e) {
      this.errors++;
      const status = statusOf(e);
      if (status === 500) this.log.error({ err: e, path: where }, 'API request failed');
      else this.log.info({ path: where, status, code: (e as WeaveError).code, reason: errMsg(e) }, 'API request refused');
      this.reply(res, status, { error: errMsg(e), code: e instanceof WeaveError ? e.code : 'EINTERNAL' });
    }
  }

  /** A server-sent events reply: headers now, then whatever the route writes until either side ends. */
  private openStream(req: http.IncomingMessage, res: http.ServerResponse, stream: NonNullable<Route['stream']>, r: { body: Body; query: URLSearchParams; path: string }): void {
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive' });
    res.flushHeaders();
    // the request's own deadline does not apply to the answer streaming out
    req.socket.setTimeout(0);
    const closers: Array<() => void> = [];
    let closed = false;
    const close = (): void => {
      if (closed) return;
      closed = true;
      for (const fn of closers) {
        try {
          fn();
        } catch (e) {
          this.log.error({ err: e, path: r.path }, 'stream close handler threw');
        }
      }
    };
    res.once('close', close);
    stream(r, {
      write: (chunk) => !closed && res.write(chunk),
      get buffered() { return res.writableLength; },
      end: () => { res.end(); close(); },
      onClose: (fn) => { if (closed) fn(); else closers.push(fn); },
    });
  }

  private refuse(req: http.IncomingMessage, res: http.ServerResponse, status: number, error: string, code: string): void {
    this.errors++;
    this.log.info({ method: req.method, path: (req.url ?? '').slice(0, 200), status, code }, 'API request refused');
    this.reply(res, status, { error, code });
  }

  /**
   * 413: answer now (the whole response is written), then read and drop what the client still sends,
   * up to MAX_DRAIN bytes or DRAIN_MS, and close. Closing with unread data would make the kernel
   * answer with a reset, and the client might never see the 413.
   */
  private tooLarge(req: http.IncomingMessage, res: http.ServerResponse): void {
    this.errors++;
    this.log.info({ method: req.method, path: (req.url ?? '').slice(0, 200), declared: req.headers['content-length'] }, 'API request refused: body too large');
    const text = JSON.stringify(tooLargeBody());
    res.shouldKeepAlive = false;
    res.writeHead(413, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), connection: 'close' });
    res.write(text);
    if (req.complete) {
      res.end();
      return;
    }
    this.draining.add(req.socket);
    let drained = 0;
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      req.off('data', onData);
      res.end();
    };
    const onData = (c: Buffer): void => {
      drained += c.length;
      if (drained > MAX_DRAIN) {
        finish();
        req.socket.destroy();
      }
    };
    const timer = setTimeout(() => { finish(); req.socket.destroy(); }, DRAIN_MS);
    req.on('data', onData);
    req.once('end', finish);
    req.once('error', finish);
    req.resume();
  }

  private internalError(req: http.IncomingMessage, res: http.ServerResponse, e: unknown): void {
    this.errors++;
    this.log.error({ err: e, method: req.method, path: (req.url ?? '').slice(0, 200) }, 'API request failed unexpectedly');
    try {
      if (res.headersSent) res.destroy();
      else this.reply(res, 500, { error: `internal error: ${errMsg(e)}`, code: 'EINTERNAL' });
    } catch (e2) {
      this.log.error({ err: e2 }, 'API: cannot even answer 500; closing the connection');
      res.destroy();
    }
  }

  private reply(res: http.ServerResponse, status: number, obj: unknown): void {
    const text = JSON.stringify(obj);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }
}

function tooLargeBody(): { error: string; code: string } {
  return { error: `request body larger than ${MAX_BODY} bytes`, code: 'ETOOLARGE' };
}

/** The declared content-length (0 when none or chunked; Infinity when unparsable: never read that). */
function declaredLength(req: http.IncomingMessage): number {
  const v = req.headers['content-length'];
  if (v === undefined) return 0;
  return /^\d+$/.test(v) ? Number(v) : Infinity;
}

function parseJson(raw: Buffer): unknown {
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch {
    throw new UsageError('request body is not valid JSON');
  }
}

/** The body, up to max bytes (TOO_LARGE beyond; ABORTED when the client left); with keep false it is read and dropped. */
function readBody(req: http.IncomingMessage, max: number, keep: boolean): Promise<Buffer | typeof TOO_LARGE | typeof ABORTED> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (c: Buffer): void => {
      size += c.length;
      if (size > max) {
        req.off('data', onData);
        req.pause();
        resolve(TOO_LARGE);
        return;
      }
      if (keep) chunks.push(c);
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', () => resolve(ABORTED));
    req.once('close', () => { if (!req.complete) resolve(ABORTED); });
  });
}

/** The data dir holds the API socket: refuse one another user could write to. */
function checkSocketDir(dir: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    throw new WeaveError('EAPI', `cannot use the data dir ${dir} for the API socket: ${errMsg(e)}`, {}, { cause: e });
  }
  const uid = process.getuid?.() ?? 0;
  if (st.uid !== uid) throw new WeaveError('EAPI', `data dir ${dir} belongs to uid ${st.uid}, not to the router's uid ${uid}: another user could replace the API socket; chown it`);
  if (st.mode & 0o022) throw new WeaveError('EAPI', `data dir ${dir} is writable by group or others (mode ${(st.mode & 0o7777).toString(8)}): another user could replace the API socket; chmod go-w ${dir}`);
}

/** Removes a socket nobody listens on; refuses a live one and anything that is not a socket. */
async function removeStaleSocket(file: string, log: Logger): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch {
    return; // none
  }
  if (!st.isSocket()) throw new WeaveError('EAPI', `${file} exists and is not a socket: remove it`);
  const live = await new Promise<boolean>((resolve) => {
    const s = net.connect(file);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
  if (live) throw new WeaveError('ERUNNING', `another router serves the API socket ${file}; stop it first ("weave stop" with this WEAVE_DATA_DIR)`);
  fs.rmSync(file, { force: true });
  log.info({ file }, 'removed a stale API socket');
}
