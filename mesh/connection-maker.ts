// Connection maker: decides which addresses to dial and when. Targets are the addresses the user
// gave (persisted through targetStore) plus, with discovery, the addresses other peers report for
// peers we are not connected to. It never dials an address whose peer we already have a
// connection with, retries with jittered exponential backoff (1 s doubling to a 60 s cap, ±25%),
// and keeps, per target, what happened last (code, reason, next retry) for `weave status targets`.
// The mesh performs the dial and the post-authentication checks and reports back here.
// A target nobody wants any more (forgotten or replaced, and not discovered) is dropped at once: its
// dial in progress is cancelled and it is never retried. Targets are checked when given (UsageError
// naming the bad entry) and when loaded from the store or learned from gossip (skipped with a log line).
import { isIP } from 'net';
import type { Clock, TimerHandle } from '../lib/clock';
import { UsageError, WeaveError } from '../lib/errors';
import type { Logger } from '../lib/log';
import type { PeerName } from './peer';
import type { ConnectionStatus } from './status';
import { normalizeAddress } from './codec';
import { parseAddress } from './tcp-transport';

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/i;

/** An IP address or an RFC 1123 host name whose last label is not all digits ("1.2.3.999" is no name). */
export function validHost(host: string): boolean {
  if (isIP(host) !== 0) return true;
  const h = host.endsWith('.') ? host.slice(0, -1) : host;
  if (h.length === 0 || h.length > 253) return false;
  const labels = h.split('.');
  return labels.every((l) => LABEL.test(l)) && !/^\d+$/.test(labels[labels.length - 1]);
}

/** Checks a connection target ("host", "host:port", "[v6]:port"; ports 1-65535) and returns its canonical form. */
export function checkTarget(address: string, defaultPort: number): string {
  let host: string;
  try {
    ({ host } = parseAddress(address, defaultPort));
  } catch (e) {
    throw new UsageError(e instanceof WeaveError ? e.message : `invalid peer address "${address}"`, { address });
  }
  if (!validHost(host)) throw new UsageError(`invalid peer address "${address}": "${host}" is neither an IP address nor a host name`, { address });
  return normalizeAddress(address, defaultPort);
}

export interface Backoff {
  initialMs: number;
  maxMs: number;
  /** ± fraction of the delay */
  jitter: number;
}
export const DEFAULT_BACKOFF: Backoff = { initialMs: 1000, maxMs: 60_000, jitter: 0.25 };
/** How long the lower-named end of a newly discovered pair waits for the other end to dial. */
const DISCOVERED_DEFER_MS = 5000;
/**
 * Discovered addresses dialled at once, at most. A router joining a mesh of N discovers N-1 peers in
 * one topology message; dialling them all at once on a loaded host made every handshake slower than
 * its timeout, and each failed one was retried: a 100-router start collapsed into handshake timeouts
 * and late accepts (EPIPE). User-given targets are not held back.
 */
const MAX_DISCOVERED_DIALS = 8;
/** A connection that lived less than this counts as a failed attempt for the backoff. */
const STABLE_MS = 10_000;

type TargetState = 'idle' | 'connecting' | 'connected' | 'retrying' | 'failed';

interface Target {
  address: string;
  explicit: boolean;
  discovered: boolean;
  state: TargetState;
  attempts: number;
  /** who answered (or who discovery says is) at this address */
  peer?: PeerName;
  code?: string;
  info: string;
  nextRetry: number;
  connectedAt?: number;
}

export interface ConnectionMakerHooks {
  /** start dialling; the outcome comes back through attemptSucceeded / attemptFailed */
  dial(address: string): void;
  /** abandon the dial in progress to address (its outcome is then ignored) */
  cancel?(address: string): void;
  /** is there an authenticated (pending or established) connection to this peer? */
  connectedTo(peer: PeerName): boolean;
  /** may we dial a discovered (not user-given) address now? false at the connection limit */
  mayDialDiscovered(): boolean;
}

export interface ConnectionMakerOptions {
  clock: Clock;
  log: Logger;
  random: () => number;
  defaultPort: number;
  self: PeerName;
  hooks: ConnectionMakerHooks;
  store?: { load(): string[]; save(targets: string[]): void };
  backoff?: Backoff;
}

export class ConnectionMaker {
  private readonly targetsByAddr = new Map<string, Target>();
  private timer: TimerHandle | undefined;
  private timerAt = Infinity;
  private stopped = false;
  private readonly backoff: Backoff;

  constructor(private readonly o: ConnectionMakerOptions) {
    this.backoff = o.backoff ?? DEFAULT_BACKOFF;
  }

  normalize(addr: string): string {
    return normalizeAddress(addr, this.o.defaultPort);
  }

  /** Loads stored targets and starts dialling. */
  start(): void {
    if (this.o.store) {
      let stored: string[] = [];
      try {
        stored = this.o.store.load();
      } catch (e) {
        this.o.log.warn({ err: e instanceof Error ? e.message : String(e) }, 'could not load stored targets; starting without them');
      }
      const good = stored.filter((a) => {
        try {
          checkTarget(a, this.o.defaultPort);
          return true;
        } catch (e) {
          this.o.log.warn({ target: a, err: (e as Error).message }, 'dropping an invalid stored target');
          return false;
        }
      });
      this.add(good, false, good.length !== stored.length);
    }
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    this.o.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Adds (or with replace, sets) the user-given targets. UsageError naming the first bad entry; nothing changes then. */
  add(addresses: string[], replace: boolean, persist = true): void {
    const wanted = new Set(addresses.map((a) => checkTarget(a, this.o.defaultPort)));
    if (replace) {
      for (const t of this.targetsByAddr.values()) if (t.explicit && !wanted.has(t.address)) this.unsetExplicit(t);
    }
    for (const a of wanted) {
      const t = this.targetsByAddr.get(a);
      if (t) {
        if (!t.explicit) {
          t.explicit = true;
        } else if (t.state === 'failed' || t.state === 'retrying') {
          // asking again means "try now"
          t.nextRetry = this.o.clock.now();
        }
      } else {
        this.targetsByAddr.set(a, { address: a, explicit: true, discovered: false, state: 'idle', attempts: 0, info: '', nextRetry: this.o.clock.now() });
      }
    }
    if (persist) this.persist();
    this.schedule(0);
  }

  forget(addresses: string[]): void {
    for (const a of addresses) {
      const t = this.targetsByAddr.get(this.normalize(a));
      if (t && t.explicit) this.unsetExplicit(t);
    }
    this.persist();
  }

  private unsetExplicit(t: Target): void {
    t.explicit = false;
    if (!t.discovered) this.drop(t);
  }

  /** Nobody wants this target any more: forget it, and abandon its dial in progress. */
  private drop(t: Target): void {
    this.targetsByAddr.delete(t.address);
    if (t.state === 'connecting') {
      this.o.log.debug({ address: t.address }, 'cancelling the dial to a target no longer wanted');
      this.o.hooks.cancel?.(t.address);
      this.schedule(0);
    }
  }

  private persist(): void {
    if (!this.o.store) return;
    try {
      this.o.store.save(this.targets());
    } catch (e) {
      this.o.log.warn({ err: e instanceof Error ? e.message : String(e) }, 'could not save targets');
    }
  }

  /** User-given targets. */
  targets(): string[] {
    return [...this.targetsByAddr.values()].filter((t) => t.explicit).map((t) => t.address).sort();
  }

  /** Replaces the set of discovered addresses (address -> the peer said to be there). */
  setDiscovered(found: Map<string, PeerName>): void {
    let added = false;
    for (const t of this.targetsByAddr.values()) {
      if (!t.discovered || found.has(t.address)) continue;
      t.discovered = false;
      // a dial in progress may finish (the peer may be back in the next round); it is not retried
      if (!t.explicit && t.state !== 'connecting') this.targetsByAddr.delete(t.address);
    }
    for (const [addr, peer] of found) {
      if (!this.targetsByAddr.has(addr)) {
        try {
          checkTarget(addr, this.o.defaultPort);
        } catch (e) {
          this.o.log.debug({ address: addr, peer, err: (e as Error).message }, 'ignoring an invalid address learned from gossip');
          continue;
        }
      }
      const t = this.targetsByAddr.get(addr);
      if (t) {
        t.discovered = true;
        if (!t.peer) t.peer = peer;
        continue;
      }
      // Both ends of a new pair discover each other from the same gossip and would dial at once: one
      // of the two connections is then thrown away after two handshakes (a 50-router start had a
      // thousand). The peer with the higher name dials now, the other only if no connection came.
      const first = peer > this.o.self;
      const at = this.o.clock.now() + (first ? 0 : this.jittered(DISCOVERED_DEFER_MS));
      this.targetsByAddr.set(addr, { address: addr, explicit: false, discovered: true, state: 'idle', attempts: 0, peer, info: '', nextRetry: at });
      added = true;
    }
    if (added) this.schedule(0);
  }

  attemptSucceeded(address: string, peer: PeerName): void {
    const t = this.targetsByAddr.get(address);
    if (!t) return;
    t.state = 'connected';
    t.peer = peer;
    t.code = undefined;
    t.info = '';
    t.connectedAt = this.o.clock.now();
    // a dial slot is free: the next discovered target may go
    if (!t.explicit) this.schedule(0);
  }

  /** `slow`: retry only at the backoff cap (e.g. the address turned out to be ourselves). */
  attemptFailed(address: string, code: string, info: string, opts: { peer?: PeerName; slow?: boolean } = {}): void {
    const t = this.targetsByAddr.get(address);
    if (!t) return;
    if (t.state === 'connecting' && !t.explicit) this.schedule(0); // its dial slot is free
    if (!t.explicit && !t.discovered) {
      // forgotten, or no longer discovered, while the dial was in progress: do not retry
      this.targetsByAddr.delete(address);
      return;
    }
    if (opts.peer) t.peer = opts.peer;
    t.state = 'failed';
    t.code = code;
    t.info = info;
    t.nextRetry = this.o.clock.now() + (opts.slow ? this.backoff.maxMs : this.delay(t.attempts));
    if (!t.explicit && t.discovered && opts.slow) {
      // a discovered address that is really us: nothing to retry
      this.targetsByAddr.delete(address);
      return;
    }
    this.schedule(t.nextRetry - this.o.clock.now());
  }

  /** The connection to `peer` went away: targets that led to it retry. */
  peerLost(peer: PeerName, reason: string): void {
    const now = this.o.clock.now();
    for (const t of this.targetsByAddr.values()) {
      // 'failed': the attempt's own outcome (e.g. refused by the peer) already set code and retry
      if (t.peer !== peer || t.state === 'connecting' || t.state === 'failed') continue;
      if (t.state === 'connected' && t.connectedAt !== undefined && now - t.connectedAt >= STABLE_MS) t.attempts = 0;
      t.state = 'retrying';
      t.info = reason;
      t.nextRetry = now + this.delay(t.attempts);
      this.schedule(t.nextRetry - now);
    }
  }

  /** Something changed (a peer connected or left): re-evaluate soon. */
  poke(): void {
    this.schedule(0);
  }

  private delay(attempts: number): number {
    return this.jittered(Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.max(0, attempts - 1)));
  }

  private jittered(base: number): number {
    return Math.max(1, Math.round(base * (1 - this.backoff.jitter + 2 * this.backoff.jitter * this.o.random())));
  }

  private schedule(inMs: number): void {
    if (this.stopped) return;
    const at = this.o.clock.now() + Math.max(0, inMs);
    if (this.timer && at >= this.timerAt) return;
    this.o.clock.clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = this.o.clock.setTimeout(() => {
      this.timer = undefined;
      this.timerAt = Infinity;
      this.check();
    }, Math.max(0, inMs));
  }

  private check(): void {
    if (this.stopped) return;
    const now = this.o.clock.now();
    let next = Infinity;
    const dialling = new Set<PeerName>();
    let discoveredDials = 0;
    for (const t of this.targetsByAddr.values()) {
      if (t.state !== 'connecting') continue;
      if (t.peer) dialling.add(t.peer);
      if (!t.explicit) discoveredDials++;
    }
    for (const t of this.targetsByAddr.values()) {
      if (t.state === 'connecting') continue;
      if (!t.explicit && !t.discovered) {
        this.targetsByAddr.delete(t.address);
        continue;
      }
      if (t.peer && this.o.hooks.connectedTo(t.peer)) {
        if (t.state !== 'connected') {
          t.state = 'connected';
          t.connectedAt = now;
          t.code = undefined;
          t.info = '';
        }
        continue;
      }
      if (t.state === 'connected') {
        // the peer went away without peerLost reaching us (e.g. replaced by a duplicate that then closed)
        t.state = 'retrying';
        t.nextRetry = now + this.delay(t.attempts);
      }
      if (t.nextRetry > now) {
        next = Math.min(next, t.nextRetry);
        continue;
      }
      if (t.peer && dialling.has(t.peer)) continue; // another address of the same peer is being tried
      if (!t.explicit && (discoveredDials >= MAX_DISCOVERED_DIALS || !this.o.hooks.mayDialDiscovered())) continue;
      if (!t.explicit) discoveredDials++;
      if (t.peer) dialling.add(t.peer);
      t.state = 'connecting';
      t.attempts++;
      t.info = '';
      this.o.hooks.dial(t.address);
    }
    if (next < Infinity) this.schedule(next - now);
  }

  /** Targets without an authenticated connection, for the status connections list. */
  status(): ConnectionStatus[] {
    const out: ConnectionStatus[] = [];
    for (const t of this.targetsByAddr.values()) {
      if (t.state === 'connected' || t.state === 'idle') continue;
      const s: ConnectionStatus = { address: t.address, outbound: true, state: t.state, info: t.info || (t.state === 'connecting' ? 'dialling' : ''), overlay: null, encrypted: false, attempts: t.attempts };
      if (t.code) s.code = t.code;
      if (t.state !== 'connecting') s.nextRetry = t.nextRetry;
      if (t.peer) s.peerName = t.peer;
      out.push(s);
    }
    return out.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
  }

  /** For tests and the status view: the raw state of one address. */
  stateOf(address: string): { state: TargetState; attempts: number; code?: string; nextRetry: number; peer?: PeerName } | undefined {
    const t = this.targetsByAddr.get(this.normalize(address));
    return t && { state: t.state, attempts: t.attempts, code: t.code, nextRetry: t.nextRetry, peer: t.peer };
  }
}
