// Worker thread running the sleeve data path (see datapath.ts). By default one worker, role 'both',
// runs both directions: it waits on the TUN and the UDP socket at once (the addon's waiter over both
// fds), drains the UDP socket (open, deliver or relay) and the TUN (seal towards peers; it also sends
// the heartbeats, so they leave through the same path state). One thread instead of two saves an
// isolate (~11 MB of RSS per router: heap, malloc arena, stack, the node pages it touches) and, for
// a request/response, the hand-off between threads; WEAVE_SLEEVE_THREADS=2 runs one worker per
// direction instead ('tx' drains the TUN, 'rx' the UDP socket), as before. The rest of this header is
// about the two-worker mode.
// Latency: a packet the rx worker writes into the TUN is often answered before the write returns
// (the kernel runs the receiver's softirq in the writer's context: ICMP echo replies, TCP ACKs), so
// the rx worker then drains the TUN itself (on its own lane) instead of waking the tx worker for it:
// one thread wake-up less per request/response. The TUN lock (tunLock) keeps reading and sending the
// TUN's packets to one thread at a time, so they leave in the order the TUN gave them: the rx worker
// only tries it (the tx worker is draining otherwise), the tx worker waits for it (Atomics.wait, no
// spin). The fds are
// the main thread's (fds are process-wide); this thread only polls and does I/O on them. State comes
// from the main thread as messages; per-path hot values and counters live in shared memory.
import { parentPort, workerData } from 'worker_threads';
import { loadCrypto } from '../mesh/crypto';
import { makeBoxes, type BoxBatch, type BoxKind } from './boxes';
import { errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import { Datapath, LANE_RELAY, PathShared, type DatapathEvents, type ForwardingSpec, type PathSharedBuffers, type PathSpec } from './datapath';
import { loadTunIo, type TunIo } from './native';
import { NativeTun } from './tun';
import { NativeUdp } from './udp';

export interface WorkerInit {
  /** 'both': one worker runs both directions; 'tx' and 'rx': one per direction (see the header) */
  role: 'tx' | 'rx' | 'both';
  tunFd: number;
  tunName: string;
  /** the TUN fd was opened with offloads (virtio headers on every read and write) */
  tunOffload: boolean;
  /** send with UDP GSO (runs of equal-size datagrams to one peer in one message) */
  udpGso: boolean;
  /** the UDP socket has UDP_GRO: read it with the GRO splitter */
  udpGro: boolean;
  udpFd: number;
  shared: PathSharedBuffers;
  counters: SharedArrayBuffer;
  /** this worker's per-path counters (datapath.ts newPathCounterArray) */
  pathCounters: SharedArrayBuffer;
  stride: number;
  batch: number;
  tunMtu: number;
  icmpSource: number;
  crypto: 'sodium' | 'tweetnacl';
  /** how to seal and open (the main thread resolved it: router/boxes.ts) */
  boxes: BoxKind;
  /**
   * µs a worker polls its fd without sleeping after a wait that found packets (the native waiter);
   * -1: wake through uv_poll callbacks instead (the addon without a waiter does that anyway)
   */
  spinUs: number;
  /**
   * two Int32: [0] 1 while a thread reads the TUN and sends what it read (TUN_FREE / TUN_HELD),
   * [1] the tx worker's waiter epoll fd or -1 (TX_EPFD)
   */
  tunLock: SharedArrayBuffer;
}

const TUN_FREE = 0;
const TUN_HELD = 1;
/** tunLock's second Int32: the tx worker's waiter epoll fd (-1: none), for the rx worker's waiterArm */
const TX_EPFD = 1;

export type ToWorker =
  | { k: 'path'; spec: PathSpec }
  | { k: 'unpath'; slot: number }
  | { k: 'fwd'; spec: ForwardingSpec }
  /** one heartbeat round (the tx worker sends the heartbeats; the control plane keeps the cadence) */
  | { k: 'beat'; slots?: number[] }
  | { k: 'stop' };

export type FromWorker =
  | { k: 'ready'; role: string }
  | { k: 'hb'; slot: number }
  | { k: 'ack'; slot: number; round: number; size: number }
  | { k: 'addr'; slot: number; ip: number; port: number }
  | { k: 'big'; slot: number }
  | { k: 'err'; role: string; msg: string; fatal?: boolean };

function main(): void {
  const port = parentPort;
  if (!port) return;
  const init = workerData as WorkerInit;
  const post = (m: FromWorker): void => port.postMessage(m);
  // Log lines from here would interleave with the main thread's pino stream; report through messages.
  // A logger of our own (not lib/log's): importing that would load pino into every worker's heap.
  const nop = (): void => undefined;
  const log = {
    trace: nop, debug: nop, info: nop, error: nop,
    warn: (o: object | string, m?: string) => post({ k: 'err', role: init.role, msg: typeof o === 'string' ? o : `${m ?? ''} ${JSON.stringify(o)}` }),
    child: () => log,
  } as unknown as Logger;
  const io = loadTunIo(log);
  if (!io) {
    post({ k: 'err', role: init.role, msg: 'native addon did not load in the worker' });
    return;
  }
  const tun = new NativeTun(io, init.tunName, init.tunFd, init.tunOffload);
  const udp = new NativeUdp(io, 0, 0, 0, init.udpFd);
  udp.gso = init.udpGso;
  if (init.udpGro && !udp.enableGro(false)) {
    post({ k: 'err', role: init.role, msg: 'the UDP socket has UDP_GRO but this addon cannot read it', fatal: true });
    return;
  }
  const events: DatapathEvents = {
    heartbeat: (slot) => post({ k: 'hb', slot }),
    probeAck: (slot, round, size) => post({ k: 'ack', slot, round, size }),
    addressLearned: (slot, ip, p) => post({ k: 'addr', slot, ip, port: p }),
    pathTooBig: (slot) => post({ k: 'big', slot }),
  };
  let boxes: BoxBatch;
  try {
    // the crypto engine only when it seals (native boxes never touch it: its module stays unloaded)
    boxes = makeBoxes(init.boxes, init.boxes === 'engine' ? loadCrypto(init.crypto, log) : null, io, log);
  } catch (e) {
    post({ k: 'err', role: init.role, msg: errMsg(e), fatal: true });
    return;
  }
  const dp = new Datapath({
    boxes,
    tun,
    udp,
    shared: new PathShared(init.shared),
    counters: new Float64Array(init.counters),
    pathCounters: new Float64Array(init.pathCounters),
    events,
    stride: init.stride,
    batch: init.batch,
    tunMtu: init.tunMtu,
    icmpSource: init.icmpSource,
    now: Date.now,
    heartbeats: init.role !== 'rx',
  });
  const lock = new Int32Array(init.tunLock);
  const release = (): void => {
    Atomics.store(lock, 0, TUN_FREE);
    Atomics.notify(lock, 0);
  };
  const drainTx = (): void => {
    while (Atomics.compareExchange(lock, 0, TUN_FREE, TUN_HELD) !== TUN_FREE) Atomics.wait(lock, 0, TUN_HELD, 10);
    try {
      dp.drainTun();
    } finally {
      release();
    }
  };
  // The rx worker's TUN writes would wake the tx worker for the answers it drains itself (a wake-up
  // and, on a busy CPU, a preemption on the reply's path): while it delivers and drains, the tx
  // worker's waiter does not watch the TUN; re-armed, it wakes at once if packets wait.
  const txWaiter = init.role === 'rx' && io.waiterArm ? io.waiterArm.bind(io) : null;
  const disarmTx = (on: boolean): void => {
    const ep = Atomics.load(lock, TX_EPFD);
    if (ep >= 0 && txWaiter && !txWaiter(ep, init.tunFd, 1, on)) Atomics.compareExchange(lock, TX_EPFD, ep, -1);
  };
  const drainRx = (): void => {
    disarmTx(false);
    try {
      if (dp.drainUdp() === 0 || Atomics.compareExchange(lock, 0, TUN_FREE, TUN_HELD) !== TUN_FREE) return;
      try {
        dp.drainTun(LANE_RELAY);
      } finally {
        release();
      }
    } finally {
      disarmTx(true);
    }
  };
  // One worker for both directions: no other thread reads the TUN, so no lock. UDP first: what it
  // delivers is often answered before the TUN write returns (see above), and the TUN drain right
  // after sends the answers in the same turn, without another wait.
  const drainBoth = (bits: number): void => {
    const delivered = (bits & READY_UDP) !== 0 ? dp.drainUdp() : 0;
    if ((bits & READY_TUN) !== 0 || delivered > 0) dp.drainTun();
  };
  const drain: (bits: number) => void = init.role === 'both' ? drainBoth : init.role === 'tx' ? drainTx : drainRx;
  // An I/O error (device gone, socket broken) would fire on every poll: report once and stop polling;
  // the main thread marks the data path down.
  let stopWaiting: (() => void) | null = null;
  const guarded = (bits: number): void => {
    try {
      drain(bits);
    } catch (e) {
      stopWaiting?.();
      tun.setReadable(null);
      udp.setReadable(null);
      post({ k: 'err', role: init.role, msg: errMsg(e), fatal: true });
    }
  };
  // the waiter's fds: bit 0 (READY_TUN) the first, bit 1 (READY_UDP) the second (tunio.c waiterOpen)
  const fds = init.role === 'both' ? Int32Array.of(tun.fd, udp.fd) : Int32Array.of(init.role === 'tx' ? tun.fd : udp.fd);
  const bitsFor = init.role === 'rx' ? (r: number): number => ((r & 1) !== 0 ? READY_UDP : 0) : (r: number): number => r & (READY_TUN | READY_UDP);
  if (io.waiterOpen && io.ioWait && io.waiterClose && init.spinUs >= 0) {
    try {
      stopWaiting = waitLoop(io, fds, init.spinUs, (r) => guarded(bitsFor(r)), init.role === 'tx' ? lock : null, (e) => {
        // epoll_wait failed: the fd cannot be waited on any more; the main thread marks the data path down
        stopWaiting?.();
        post({ k: 'err', role: init.role, msg: `ioWait: ${errMsg(e)}`, fatal: true });
      });
    } catch (e) {
      // no waiter (epoll_create1 or epoll_ctl refused): the uv_poll path below serves, and the main thread logs why
      post({ k: 'err', role: init.role, msg: `native waiter unavailable, waking through uv_poll: ${errMsg(e)}` });
    }
  }
  if (!stopWaiting) {
    // uv_poll wake-ups (closures made once, not per packet)
    if (init.role !== 'rx') tun.setReadable(() => guarded(READY_TUN));
    if (init.role !== 'tx') udp.setReadable(() => guarded(READY_UDP));
  }
  port.on('message', (m: ToWorker) => {
    switch (m.k) {
      case 'path': dp.setPath(m.spec); break;
      case 'unpath': dp.removePath(m.slot); break;
      case 'fwd': dp.setForwarding(m.spec); break;
      case 'beat': dp.beat(m.slots); break;
      case 'stop':
        stopWaiting?.();
        tun.setReadable(null);
        udp.setReadable(null);
        port.close();
        break;
    }
  });
  post({ k: 'ready', role: init.role });
}

/** how long a waiting worker sleeps before it lets its event loop turn anyway (its loop has no timers) */
const WAIT_MS = 1000;
/** ioWait's bit for "the thread's own event loop has work" (native/tunio.c WAIT_LOOP) */
const WAIT_LOOP = 1 << 8;
/** what drain is told is ready: the TUN, the UDP socket */
const READY_TUN = 1;
const READY_UDP = 2;

/**
 * Runs the worker's drain from a native wait (native/tunio.c waiter) instead of a uv_poll callback:
 * the thread blocks in epoll on fds and on its own event loop, drains when one is ready (told which:
 * bit i for fds[i]), spins up to spinUs after activity, and returns to the event loop only when the
 * loop has work (the main thread's messages, termination). Returns the function that stops waiting
 * (idempotent; drain may call it). publish: where the waiter's epoll fd goes for the other worker
 * (TX_EPFD), or null; failed: told once if a wait throws (the loop has stopped). Throws when no
 * waiter can be opened.
 */
function waitLoop(io: TunIo, fds: Int32Array, spinUs: number, drain: (ready: number) => void, publish: Int32Array | null, failed: (e: unknown) => void): () => void {
  const waiter = io.waiterOpen!(fds);
  if (publish && io.waiterFd) Atomics.store(publish, TX_EPFD, io.waiterFd(waiter));
  let stopped = false;
  const turn = (): void => {
    while (!stopped) {
      let r: number;
      try {
        r = io.ioWait!(waiter, WAIT_MS, spinUs);
      } catch (e) {
        failed(e);
        return;
      }
      if ((r & ~WAIT_LOOP) !== 0) drain(r & ~WAIT_LOOP);
      if ((r & WAIT_LOOP) !== 0 || r === 0) {
        setImmediate(turn);
        return;
      }
    }
  };
  setImmediate(turn);
  return () => {
    stopped = true;
    if (publish) Atomics.store(publish, TX_EPFD, -1);
    io.waiterClose!(waiter);
  };
}

main();
