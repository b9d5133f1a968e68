// Fakes for fastdp unit tests: a pair of mesh connections that deliver after 1 ms of FakeClock time,
// and a heartbeat "network" between VTEP addresses with programmable loss (all, or above a size).
import type { FakeClock } from '../../lib/clock';
import type { DataKeyWatcher, Features, MeshConnection } from '../../mesh/types';
import type { HeartbeatIo } from '../../router/fastdp';

export function features(name: string, overlays: string[], overlayParams: Record<string, unknown> = {}): Features {
  return { name, nickname: name, uid: 'u', connId: 'c1', overlays, overlayParams, trusted: false, listenPort: 6783 };
}

export interface FakeConn extends MeshConnection {
  sent: Array<{ type: number; payload: Uint8Array }>;
  closedWith?: string;
  deliver: (type: number, payload: Uint8Array) => void;
  /** plays one password-rotation data-key step to this end's overlays (watchDataKey) */
  rekey(step: 'accept' | 'use' | 'settled', key: Uint8Array): void;
}

/** Two ends; attach handles, then set `deliver` on each end to the handle's onMessage. */
export function connPair(clock: FakeClock, a: Features, b: Features, sessionKey: Uint8Array | null = null): [FakeConn, FakeConn] {
  const mk = (local: Features, remote: Features, outbound: boolean): FakeConn => {
    const watchers = new Set<DataKeyWatcher>();
    const c: FakeConn = {
      id: 'c1', outbound, remoteAddr: '198.18.0.1:6783', localAddr: '198.18.0.2:1234', encrypted: sessionKey !== null, sessionKey, dataKey: sessionKey,
      local, remote, sent: [],
      watchDataKey(fn) {
        watchers.add(fn);
        return () => watchers.delete(fn);
      },
      rekey(step, key) {
        for (const fn of watchers) fn(step, key);
      },
      send() { /* wired below */ },
      close(reason) { c.closedWith = reason; },
      onMessage: () => undefined,
      onClose: () => undefined,
      deliver: () => undefined,
    };
    return c;
  };
  const ca = mk(a, b, true);
  const cb = mk(b, a, false);
  // each end delivers to the other 1 ms later, like a network
  ca.send = (type, payload) => { ca.sent.push({ type, payload }); clock.setTimeout(() => cb.deliver(type, payload), 1); };
  cb.send = (type, payload) => { cb.sent.push({ type, payload }); clock.setTimeout(() => ca.deliver(type, payload), 1); };
  return [ca, cb];
}

export class FakeNet {
  readonly ios = new Map<string, FakeHbIo>();
  /** drop every datagram when true */
  cut = false;
  /** drop datagrams longer than this (an MTU black hole on the underlay) */
  maxSize = Infinity;
  /** datagrams wait in the receiving socket until its drain() (the event loop is not polling I/O) */
  hold = false;
  delivered = 0;
  dropped = 0;
  constructor(readonly clock: FakeClock) {}
  io(vtep: string): FakeHbIo {
    const io = new FakeHbIo(this, vtep);
    this.ios.set(vtep, io);
    return io;
  }
}

export class FakeHbIo implements HeartbeatIo {
  receiver: ((src: string, p: Uint8Array) => void) | null = null;
  closed = false;
  /** errno to return from send for datagrams above this size (local route MTU), 0 = none */
  localMax = Infinity;
  sizes: number[] = [];
  constructor(readonly net: FakeNet, readonly vtep: string) {}
  send(dstIp: string, _port: number, payload: Uint8Array): number {
    if (payload.length > this.localMax) return 90;
    this.sizes.push(payload.length);
    const copy = Uint8Array.from(payload);
    if (this.net.cut || copy.length > this.net.maxSize) {
      this.net.dropped++;
      return 0;
    }
    this.net.clock.setTimeout(() => {
      const dst = this.net.ios.get(dstIp);
      if (!dst || dst.closed) return;
      // hold: the datagram waits in the socket (the event loop never polled it) until drain()
      if (this.net.hold) dst.queue.push([this.vtep, copy]);
      else if (dst.receiver) {
        this.net.delivered++;
        dst.receiver(this.vtep, copy);
      }
    }, 1);
    return 0;
  }
  readonly queue: Array<[string, Uint8Array]> = [];
  drained = 0;
  drain(): void {
    this.drained++;
    for (const [src, p] of this.queue.splice(0)) {
      if (!this.receiver) continue;
      this.net.delivered++;
      this.receiver(src, p);
    }
  }
  setReceiver(cb: ((src: string, p: Uint8Array) => void) | null): void { this.receiver = cb; }
  close(): void { this.closed = true; }
}

export class FakeVx {
  peers = new Map<string, { mac: string; vtep: string; underlay: string; encrypted?: boolean }>();
  log: string[] = [];
  setPeer(k: string, p: { mac: string; vtep: string; underlay: string; encrypted?: boolean }): void { this.peers.set(k, p); this.log.push(`set ${k}`); }
  removePeer(k: string): void { this.peers.delete(k); this.log.push(`remove ${k}`); }
}
