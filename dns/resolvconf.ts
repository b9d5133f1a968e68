// Upstream resolvers from a resolv.conf, re-read when the file changes. No timer and no fs.watch
// (which misses the rename-over that resolvconf/systemd/NetworkManager use): nameservers() stats
// the file at most once per checkIntervalMs, on the forwarding path that needs the answer.
import * as fs from 'fs';
import type { Clock } from '../lib/clock';
import type { Logger } from '../lib/log';

export interface ResolvConfData {
  nameservers: string[];
  search: string[];
  options: string[];
}

export function parseResolvConf(text: string): ResolvConfData {
  const out: ResolvConfData = { nameservers: [], search: [], options: [] };
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    if (!line) continue;
    const [kw, ...args] = line.split(/\s+/);
    if (kw === 'nameserver' && args[0]) {
      // zone index (fe80::1%eth0) cannot be used by a UDP socket address string portably; drop it
      const ns = args[0].replace(/%.*$/, '');
      if (!out.nameservers.includes(ns)) out.nameservers.push(ns);
    } else if (kw === 'search' || kw === 'domain') {
      out.search = args.slice();
    } else if (kw === 'options') {
      out.options.push(...args);
    }
  }
  return out;
}

export interface ResolvConfWatcherOptions {
  path: string;
  clock: Clock;
  log: Logger;
  /** minimum time between two stat() calls (default 2000 ms) */
  checkIntervalMs?: number;
  /** addresses never to forward to (our own listen address: forwarding to ourselves would loop) */
  exclude?: string[];
}

export class ResolvConfWatcher {
  private readonly path: string;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly checkIntervalMs: number;
  private readonly exclude: Set<string>;
  private lastCheck = -Infinity;
  private sig = '';
  private data: ResolvConfData = { nameservers: [], search: [], options: [] };
  private servers: string[] = [];
  reloads = 0;
  readErrors = 0;

  constructor(opts: ResolvConfWatcherOptions) {
    this.path = opts.path;
    this.clock = opts.clock;
    this.log = opts.log.child({ component: 'dns-resolvconf' });
    this.checkIntervalMs = opts.checkIntervalMs ?? 2000;
    this.exclude = new Set(opts.exclude ?? []);
  }

  /** Current upstream servers. The same array is returned until the file changes (callers cache by identity). */
  nameservers(): string[] {
    this.check();
    return this.servers;
  }

  config(): ResolvConfData {
    this.check();
    return this.data;
  }

  private check(): void {
    const now = this.clock.now();
    if (now - this.lastCheck < this.checkIntervalMs) return;
    this.lastCheck = now;
    let sig: string;
    try {
      const st = fs.statSync(this.path);
      sig = `${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch (e) {
      sig = 'missing';
      if (this.sig !== sig) {
        this.readErrors++;
        this.log.warn({ path: this.path, err: (e as Error).message }, 'cannot read resolv.conf: no upstream resolvers');
      }
    }
    if (sig === this.sig) return;
    this.sig = sig;
    let text = '';
    if (sig !== 'missing') {
      try {
        text = fs.readFileSync(this.path, 'utf8');
      } catch (e) {
        this.readErrors++;
        this.log.warn({ path: this.path, err: (e as Error).message }, 'cannot read resolv.conf');
      }
    }
    this.data = parseResolvConf(text);
    this.servers = this.data.nameservers.filter((s) => !this.exclude.has(s));
    this.reloads++;
    this.log.info({ path: this.path, nameservers: this.servers }, 'upstream resolvers loaded');
  }
}
