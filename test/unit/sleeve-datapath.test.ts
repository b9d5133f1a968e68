// The packet engine's hot path allocates nothing per packet: drive it with devices that allocate
// nothing either (a preloaded TUN, a UDP sink, a preloaded UDP source) and watch for minor GCs.
// A scavenge happens each time the young generation fills (a few MB): 200k packets allocating even a
// 16-byte view each would trigger several.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PerformanceObserver } from 'node:perf_hooks';
import { constants as perfConstants } from 'node:perf_hooks';
import { loadCrypto } from '../../mesh/crypto';
import { silentLogger } from '../../lib/log';
import { engineBoxes, nativeBoxes, type BoxBatch } from '../../router/boxes';
import { loadTunIo } from '../../router/native';
import { COUNTER, Datapath, PathShared, newCounterArray, type DatapathEvents } from '../../router/datapath';
import { FrameType, HB_BODY, HDR, TAG, deriveKeys, encodeFrame } from '../../router/frame';
import { parseAddr, parseCidr } from '../../lib/addr';
import type { TunDevice } from '../../router/tun';
import type { UdpBind } from '../../router/udp';
import { ipv4Packet } from '../fakes/channel-tun';

const sodium = loadCrypto('sodium', silentLogger());
// both ways of sealing: the addon's batches (npm ci builds it, so it must load here) and the engine
const native = nativeBoxes(loadTunIo(silentLogger()));
const BOXES: Array<[string, BoxBatch | null]> = [['native', native], ['engine', engineBoxes(sodium)]];

/** A TUN that hands out the same packet `remaining` times, and counts writes. */
class LoopTun implements TunDevice {
  readonly name = 'loop-tun';
  remaining = 0;
  writes = 0;
  constructor(private readonly pkt: Buffer) {}
  readBatch(buf: Buffer, stride: number, max: number, lens: Int32Array): number {
    let n = 0;
    while (n < max && this.remaining > 0) {
      this.pkt.copy(buf, n * stride);
      lens[n++] = this.pkt.length;
      this.remaining--;
    }
    return n;
  }
  writeBatch(_b: Buffer, _o: Int32Array, _l: Int32Array, n: number): number {
    this.writes += n;
    return n;
  }
  setReadable(): void {}
  close(): void {}
}

/** A UDP bind that serves preloaded frames and swallows sends. */
class LoopUdp implements UdpBind {
  readonly port = 6783;
  frames: Buffer[] = [];
  next = 0;
  sent = 0;
  recvBatch(buf: Buffer, stride: number, max: number, lens: Int32Array, ips: Uint32Array, ports: Int32Array): number {
    let n = 0;
    while (n < max && this.next < this.frames.length) {
      const f = this.frames[this.next++];
      f.copy(buf, n * stride);
      lens[n] = f.length;
      ips[n] = 0xc6120001;
      ports[n] = 6783;
      n++;
    }
    return n;
  }
  sendBatch(_b: Buffer, _o: Int32Array, _l: Int32Array, _i: Uint32Array, _p: Int32Array, errs: Int32Array, n: number): number {
    for (let k = 0; k < n; k++) errs[k] = 0;
    this.sent += n;
    return n;
  }
  setReadable(): void {}
  close(): void {}
}

const noEvents: DatapathEvents = { heartbeat() {}, probeAck() {}, addressLearned() {}, pathTooBig() {} };

function engine(tun: TunDevice, udp: UdpBind, counters: Float64Array, boxes: BoxBatch): { dp: Datapath; shared: PathShared } {
  const shared = new PathShared();
  const dp = new Datapath({ boxes, tun, udp, shared, counters, events: noEvents, stride: 1536, batch: 64, tunMtu: 1440, icmpSource: 0, now: () => 1 });
  return { dp, shared };
}

async function minorGcsDuring(fn: () => void): Promise<number> {
  let minor = 0;
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind;
      if (kind === perfConstants.NODE_PERFORMANCE_GC_MINOR) minor++;
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  fn();
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setTimeout(r, 20)); // gc entries are delivered asynchronously
  obs.disconnect();
  return minor;
}

for (const [kind, boxes] of BOXES) {
  test(`outbound (TUN -> seal -> send) allocates nothing per packet (${kind} boxes)`, async () => {
    assert.ok(boxes, 'the native addon with boxSeal/boxOpen must load (npm ci builds it)');
    const pkt = ipv4Packet({ src: '10.32.1.5', dst: '10.32.2.7', payload: Buffer.alloc(1200, 1) });
    const tun = new LoopTun(pkt);
    const udp = new LoopUdp();
    const counters = newCounterArray();
    const { dp, shared } = engine(tun, udp, counters, boxes);
    const keys = deriveKeys(sodium, sodium.randomBytes(32), true);
    dp.setPath({ slot: 0, localIdx: 0x10000, remoteIdx: 0x20000, txKey: keys.tx, rxKey: keys.rx });
    shared.ip[0] = parseAddr('198.18.0.2');
    shared.port[0] = 6783;
    shared.mtu[0] = 1440;
    dp.setForwarding({ entries: [{ prefix: parseCidr('10.32.1.0/24'), peer: 0 }, { prefix: parseCidr('10.32.2.0/24'), peer: 1 }], next: [-1, 0], self: 0 });
    tun.remaining = 20_000; // warm up: JIT, view caches
    dp.drainTun();
    tun.remaining = 200_000;
    const minor = await minorGcsDuring(() => dp.drainTun());
    // the path's first heartbeat left when forwarding was set up (datapath.ts judgeAll)
    const beats = counters[COUNTER.heartbeatsSent];
    assert.equal(beats, 1);
    assert.equal(udp.sent, 220_000 + beats);
    assert.equal(counters[COUNTER.udpOutBytes], 220_000 * (pkt.length + HDR + TAG) + beats * (HDR + HB_BODY + TAG));
    assert.ok(minor <= 1, `${minor} minor GCs while sealing 200k packets`);
  });

  test(`inbound (recv -> open -> replay -> TUN) allocates nothing per packet (${kind} boxes)`, async () => {
    assert.ok(boxes, 'the native addon with boxSeal/boxOpen must load (npm ci builds it)');
    const tun = new LoopTun(Buffer.alloc(0));
    const udp = new LoopUdp();
    const counters = newCounterArray();
    const { dp } = engine(tun, udp, counters, boxes);
    const sk = sodium.randomBytes(32);
    const ours = deriveKeys(sodium, sk, false);
    const theirs = deriveKeys(sodium, sk, true);
    dp.setPath({ slot: 3, localIdx: 0x50003, remoteIdx: 7, txKey: ours.tx, rxKey: ours.rx });
    dp.setForwarding({ entries: [{ prefix: parseCidr('10.32.1.0/24'), peer: 0 }], next: [-1], self: 0 });
    const pkt = ipv4Packet({ src: '10.32.2.7', dst: '10.32.1.5', payload: Buffer.alloc(64, 2) });
    const N = 120_000;
    for (let i = 0; i < N; i++) udp.frames.push(encodeFrame(sodium, theirs.tx, FrameType.Data, 1, 0x50003, i, pkt));
    // warm up on the first 20k, measure the rest
    const all = udp.frames;
    udp.frames = all.slice(0, 20_000);
    dp.drainUdp();
    udp.frames = all;
    const minor = await minorGcsDuring(() => dp.drainUdp());
    assert.equal(tun.writes, N);
    assert.equal(counters[COUNTER.dropBadMac] + counters[COUNTER.dropReplay], 0);
    assert.ok(minor <= 1, `${minor} minor GCs while opening 100k packets`);
  });
}
