// Worker thread running one direction of the sleeve data path (see datapath.ts): 'tx' drains the
// TUN and seals towards peers (and sends the heartbeats, so they leave through the same path state),
// 'rx' drains the UDP socket, opens, delivers or relays. The fds are
// the main thread's (fds are process-wide); this thread only polls and does I/O on them. State comes
// from the main thread as messages; per-path hot values and counters live in shared memory.
import { parentPort, workerData } from 'worker_threads';
import { loadCrypto } from '../mesh/crypto';
import { makeBoxes, type BoxBatch, type BoxKind } from './boxes';
import { errMsg } from '../lib/errors';
import { silentLogger, type Logger } from '../lib/log';
import { Datapath, PathShared, type DatapathEvents, type ForwardingSpec, type PathSharedBuffers, type PathSpec } from './datapath';
import { loadTunIo } from './native';
import { NativeTun } from './tun';
import { NativeUdp } from './udp';

export interface WorkerInit {
  role: 'tx' | 'rx';
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
}

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
  const log: Logger = { ...silentLogger(), warn: (o: object | string, m?: string) => post({ k: 'err', role: init.role, msg: typeof o === 'string' ? o : `${m ?? ''} ${JSON.stringify(o)}` }) } as Logger;
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
    boxes = makeBoxes(init.boxes, loadCrypto(init.crypto, log), io, log);
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
    heartbeats: init.role === 'tx',
  });
  const drain = init.role === 'tx' ? () => dp.drainTun() : () => dp.drainUdp();
  // An I/O error (device gone, socket broken) would fire on every poll: report once and stop polling;
  // the main thread marks the data path down.
  const guarded = (): void => {
    try {
      drain();
    } catch (e) {
      tun.setReadable(null);
      udp.setReadable(null);
      post({ k: 'err', role: init.role, msg: errMsg(e), fatal: true });
    }
  };
  if (init.role === 'tx') tun.setReadable(guarded);
  else udp.setReadable(guarded);
  port.on('message', (m: ToWorker) => {
    switch (m.k) {
      case 'path': dp.setPath(m.spec); break;
      case 'unpath': dp.removePath(m.slot); break;
      case 'fwd': dp.setForwarding(m.spec); break;
      case 'beat': dp.beat(m.slots); break;
      case 'stop':
        tun.setReadable(null);
        udp.setReadable(null);
        port.close();
        break;
    }
  });
  post({ k: 'ready', role: init.role });
}

main();
