// A small Docker Engine API client over dockerd's unix socket: JSON GETs and the event stream. Used
// by the CLI (containers by name: docker/resolve.ts) and by the router (containers' names for
// weaveDNS and `weave ps`: docker/names.ts). Unversioned paths: dockerd answers them with its own
// API version, and every field read here exists since API 1.24.
import * as http from 'http';
import { UsageError, WeaveError, errMsg } from '../lib/errors';

const DEFAULT_TIMEOUT_MS = 10_000;
/** The most a JSON answer may hold (a container list of thousands is well below). */
const MAX_ANSWER = 32 << 20;

/** What Docker says about a container (only the fields weave reads). */
export interface ContainerJson {
  Id: string;
  Name: string;
  State?: { Running?: boolean; Pid?: number; Status?: string };
  Config?: { Hostname?: string };
  NetworkSettings?: { Networks?: Record<string, { NetworkID?: string; EndpointID?: string; IPAddress?: string }> };
}

/** What Docker says about a network (only the fields weave reads). */
export interface NetworkJson {
  Id: string;
  Name: string;
  Driver: string;
  Containers?: Record<string, { Name?: string; EndpointID?: string; IPv4Address?: string }>;
}

/** One line of GET /events (only the fields weave reads). */
export interface DockerEvent {
  Type?: string;
  Action?: string;
  Actor?: { ID?: string; Attributes?: Record<string, string> };
}

export interface EventStream {
  close(): void;
}

export class DockerEngine {
  constructor(readonly socket: string, private readonly timeoutMs = DEFAULT_TIMEOUT_MS) {}

  /** Docker is not running (or not where we look): one message that says where we looked and what to do. */
  private notRunning(e: unknown): WeaveError {
    return new WeaveError('EDOCKER', `Docker is not running: nothing answers at ${this.socket} (${errMsg(e)}); start dockerd, or point DOCKER_HOST / --docker-socket at its socket`, { socket: this.socket }, { cause: e });
  }

  /** GET path as JSON; 404 -> WeaveError ENOTFOUND with Docker's message, no daemon -> EDOCKER. */
  get<T>(path: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const req = http.request({ socketPath: this.socket, path, method: 'GET', headers: { Host: 'docker' }, timeout: this.timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_ANSWER) req.destroy(new Error(`answer larger than ${MAX_ANSWER} bytes`));
          else chunks.push(c);
        });
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown;
          try {
            body = text ? JSON.parse(text) : undefined;
          } catch (e) {
            return reject(new WeaveError('EDOCKER', `Docker's answer to GET ${path} is not JSON: ${errMsg(e)}`, { path }));
          }
          const msg = (body as { message?: unknown } | undefined)?.message;
          if (res.statusCode === 404) return reject(new WeaveError('ENOTFOUND', typeof msg === 'string' ? msg : `${path}: not found`, { path }));
          if (res.statusCode !== 200) return reject(new WeaveError('EDOCKER', `Docker answered GET ${path} with ${res.statusCode}: ${typeof msg === 'string' ? msg : text.slice(0, 200)}`, { path, status: res.statusCode }));
          resolve(body as T);
        });
        res.on('error', (e) => reject(this.notRunning(e)));
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.timeoutMs / 1000}s`)));
      req.on('error', (e) => reject(this.notRunning(e)));
      req.end();
    });
  }

  /** A container by name or ID (any unique prefix). */
  async container(idOrName: string): Promise<ContainerJson> {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(idOrName)) throw new UsageError(`"${idOrName}" is not a Docker container name or ID`);
    return this.get<ContainerJson>(`/containers/${encodeURIComponent(idOrName)}/json`);
  }

  /** Running containers' IDs. */
  async runningIds(): Promise<string[]> {
    const list = await this.get<Array<{ Id: string }>>('/containers/json');
    return Array.isArray(list) ? list.map((c) => c.Id).filter((x) => typeof x === 'string') : [];
  }

  network(id: string): Promise<NetworkJson> {
    return this.get<NetworkJson>(`/networks/${encodeURIComponent(id)}`);
  }

  /** Networks of a driver. */
  networksOf(driver: string): Promise<NetworkJson[]> {
    return this.get<NetworkJson[]>(`/networks?filters=${encodeURIComponent(JSON.stringify({ driver: [driver] }))}`);
  }

  /**
   * GET /events with filters: each event to onEvent; onEnd once when the stream ends or fails (dockerd
   * stopped, restarted, or was never there). Lines that are not JSON are counted as bad, not fatal.
   */
  events(filters: Record<string, string[]>, onEvent: (e: DockerEvent) => void, onEnd: (err?: Error) => void, onOpen?: () => void): EventStream {
    let ended = false;
    const end = (err?: Error): void => {
      if (ended) return;
      ended = true;
      onEnd(err);
    };
    const req = http.request({ socketPath: this.socket, path: `/events?filters=${encodeURIComponent(JSON.stringify(filters))}`, method: 'GET', headers: { Host: 'docker' } }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return end(new Error(`GET /events answered ${res.statusCode}`));
      }
      onOpen?.();
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          let ev: DockerEvent;
          try {
            ev = JSON.parse(line) as DockerEvent;
          } catch {
            continue; // not an event; Docker never sends such lines
          }
          onEvent(ev);
        }
        if (buf.length > 1 << 20) buf = ''; // a line without end: drop it rather than grow
      });
      res.on('end', () => end());
      res.on('error', (e) => end(e));
    });
    req.on('error', (e) => end(e));
    req.end();
    return { close: () => { ended = true; req.destroy(); } };
  }
}
