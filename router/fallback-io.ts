// The sleeve's I/O without the project's native addon: the same TunIo interface (router/native.ts),
// implemented by calling libc through koffi (FFI, prebuilt binaries shipped inside the npm package).
// Chosen by createSleeve when the addon cannot load (or WEAVE_SLEEVE_IO=fallback forces it).
//
// Why it is shaped like this:
// - Node has no ioctl, so the TUN device cannot be opened from plain Node; and a Node stream on the
//   TUN fd merges writes into one packet. Every packet is one read()/write() syscall here.
// - Buffers are passed to libc as raw addresses (koffi.address, once per batch) plus offsets, so a
//   packet costs no JS allocation: slicing a Buffer per packet would.
// - UDP uses recvmmsg/sendmmsg on mmsghdr/iovec/sockaddr_in arrays built once per io instance, the
//   same batching the addon does in C.
// - Readiness: there is no uv_poll from JS. Each poll handle keeps one koffi async call of poll(2)
//   (run on koffi's own threads) in flight; when it reports readable, the callback runs on this
//   thread's loop and the call is re-armed. One round trip per wake-up (a drained batch), not per
//   packet. The poll(2) timeout bounds how long an unpoll()ed handle lingers.
// Only LP64 Linux layouts (x64, arm64) are encoded below; elsewhere loading fails with a clear error.
import type { Logger } from '../lib/log';
import { WeaveError, errMsg } from '../lib/errors';
import { errno as E, errnoName } from '../lib/errno';
import { ADDON_MAX_BATCH, type TunIo } from './native';

/** Which implementation a TunIo is, for reports ('native' = the addon). */
export type IoKind = 'native' | 'koffi';

const O_RDWR = 0o2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const TUNSETIFF = 0x400454ca;
const IFF_TUN = 0x0001;
const IFF_NO_PI = 0x1000;
const IFF_MULTI_QUEUE = 0x0100;
const IFNAMSIZ = 16;

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;
const IPPROTO_IP = 0;
const IP_MTU_DISCOVER = 10;
const IP_PMTUDISC_DO = 2;
const MSG_DONTWAIT = 0x40;
const MSG_TRUNC = 0x20;

const { EINTR, EAGAIN, ENETUNREACH, ECONNREFUSED, EHOSTUNREACH, EMSGSIZE } = E;

const POLLIN = 0x1;
const POLLERR = 0x8;
const POLLHUP = 0x10;
const POLLNVAL = 0x20;
/** poll(2) timeout of each async wait: how long an unpolled handle may still occupy a koffi thread */
const POLL_WAIT_MS = 200;

// LP64 Linux: struct msghdr is 56 bytes, struct mmsghdr 64, struct iovec 16, struct sockaddr_in 16.
const MMSG = 64;
const MSG_NAME = 0;
const MSG_NAMELEN = 8;
const MSG_IOV = 16;
const MSG_IOVLEN = 24;
const MSG_FLAGS = 48;
const MSG_LEN = 56;
const IOV = 16;
const SIN = 16;

const TWO32 = 0x100000000;

type Fn = ((...args: unknown[]) => number) & { async(...args: unknown[]): void };

interface Libc {
  open: Fn; close: Fn; ioctl: Fn; read: Fn; write: Fn; socket: Fn; setsockopt: Fn; bind: Fn; getsockname: Fn;
  sendmmsg: Fn; recvmmsg: Fn; poll: Fn; errno: () => number;
  address: (b: Uint8Array) => number;
}

function loadLibc(koffi: typeof import('koffi')): Libc {
  const lib = koffi.load('libc.so.6');
  const f = (decl: string): Fn => lib.func(decl) as unknown as Fn;
  return {
    open: f('int open(const char *path, int flags)'),
    close: f('int close(int fd)'),
    ioctl: f('int ioctl(int fd, unsigned long req, uintptr_t arg)'),
    read: f('intptr_t read(int fd, uintptr_t buf, size_t n)'),
    write: f('intptr_t write(int fd, uintptr_t buf, size_t n)'),
    socket: f('int socket(int domain, int type, int proto)'),
    setsockopt: f('int setsockopt(int fd, int level, int name, uintptr_t val, uint32_t len)'),
    bind: f('int bind(int fd, uintptr_t addr, uint32_t len)'),
    getsockname: f('int getsockname(int fd, uintptr_t addr, uintptr_t len)'),
    sendmmsg: f('int sendmmsg(int fd, uintptr_t msgs, unsigned int n, int flags)'),
    recvmmsg: f('int recvmmsg(int fd, uintptr_t msgs, unsigned int n, int flags, uintptr_t timeout)'),
    poll: f('int poll(uintptr_t fds, unsigned long n, int timeout)'),
    // koffi saves errno right after each call, before its own work could clobber it
    errno: () => koffi.errno(),
    address: (b) => Number(koffi.address(b)),
  };
}

/** The same shape the addon throws (code, errno), with the errno's name where the addon has a number. */
function errnoError(what: string, errno: number): Error {
  const name = errnoName(errno);
  const e = new Error(`${what}: ${name}`) as Error & { errno: number; code: string };
  e.errno = errno;
  e.code = name;
  return e;
}

/** Writes a host-order pointer-sized value at byte offset off of a Uint32Array-viewed scratch. */
function putPtr(u32: Uint32Array, off: number, v: number): void {
  u32[off >>> 2] = v >>> 0;
  u32[(off >>> 2) + 1] = Math.floor(v / TWO32);
}

interface Poller { stopped: boolean; fds: Buffer }

/**
 * The koffi-backed TunIo. Throws WeaveError('ENOFALLBACK') when koffi or libc cannot load or the
 * platform's struct layouts are not the LP64 ones encoded here.
 */
export function loadFallbackIo(log: Logger, load: () => unknown = () => require('koffi')): TunIo & { readonly kind: IoKind } {
  if (process.platform !== 'linux' || (process.arch !== 'x64' && process.arch !== 'arm64')) {
    throw new WeaveError('ENOFALLBACK', `the koffi data-path fallback supports linux x64/arm64, not ${process.platform} ${process.arch}`);
  }
  let c: Libc;
  try {
    c = loadLibc(load() as typeof import('koffi'));
  } catch (e) {
    throw new WeaveError('ENOFALLBACK', `cannot load koffi/libc for the data-path fallback: ${errMsg(e)}`, {}, { cause: e });
  }
  const plog = log.child({ component: 'fallback-io' });

  // Scratch for one batch each way; calls are synchronous, so one set per direction is enough.
  const mk = (): Scratch => {
    const msgs = Buffer.alloc(MMSG * ADDON_MAX_BATCH);
    const iov = Buffer.alloc(IOV * ADDON_MAX_BATCH);
    const sin = Buffer.alloc(SIN * ADDON_MAX_BATCH);
    const m = { msgs, m32: new Uint32Array(msgs.buffer, msgs.byteOffset, msgs.length >>> 2), iov, i32: new Uint32Array(iov.buffer, iov.byteOffset, iov.length >>> 2), sin, msgsA: c.address(msgs), iovA: c.address(iov), sinA: c.address(sin) };
    for (let i = 0; i < ADDON_MAX_BATCH; i++) {
      putPtr(m.m32, i * MMSG + MSG_NAME, m.sinA + i * SIN);
      putPtr(m.m32, i * MMSG + MSG_IOV, m.iovA + i * IOV);
      putPtr(m.m32, i * MMSG + MSG_IOVLEN, 1);
    }
    return m;
  };
  const tx = mk();
  const rx = mk();
  const small = Buffer.alloc(64);
  const smallA = c.address(small);

  // The data path passes the same few ring buffers every call; their memory never moves (ArrayBuffer
  // backing stores are fixed), so each address is looked up once.
  const addrs = new WeakMap<Uint8Array, number>();
  const addrOf = (b: Uint8Array): number => {
    let a = addrs.get(b);
    if (a === undefined) {
      a = c.address(b);
      addrs.set(b, a);
    }
    return a;
  };

  return { kind: 'koffi', ...tunCalls(c, addrOf), ...udpCalls(c, { tx, rx, small, smallA }, addrOf), ...pollCalls(c, plog) };
}

/** Scratch memory of one direction's batch: mmsghdr, iovec and sockaddr_in arrays, and their addresses. */
interface Scratch { msgs: Buffer; m32: Uint32Array; iov: Buffer; i32: Uint32Array; sin: Buffer; msgsA: number; iovA: number; sinA: number }

type TunCalls = Pick<TunIo, 'openTun' | 'closeFd' | 'readBatch' | 'writeBatch'>;
type UdpCalls = Pick<TunIo, 'udpOpen' | 'udpPort' | 'sendBatch' | 'recvBatch'>;
type PollCalls = Pick<TunIo, 'poll' | 'unpoll'>;

/** The TUN device: open with TUNSETIFF, read and write one packet per syscall. */
function tunCalls(c: Libc, addrOf: (b: Uint8Array) => number): TunCalls {
  return {
    openTun(name, multiQueue) {
      const nb = Buffer.from(name, 'utf8');
      if (nb.length === 0 || nb.length >= IFNAMSIZ) throw new WeaveError('EINVAL', 'openTun: interface name must be 1-15 bytes');
      const fd = c.open('/dev/net/tun', O_RDWR | O_CLOEXEC | O_NONBLOCK);
      if (fd < 0) throw errnoError('open /dev/net/tun', c.errno());
      const ifr = Buffer.alloc(40);
      nb.copy(ifr, 0);
      ifr.writeUInt16LE(IFF_TUN | IFF_NO_PI | (multiQueue ? IFF_MULTI_QUEUE : 0), IFNAMSIZ);
      if (c.ioctl(fd, TUNSETIFF, c.address(ifr)) < 0) {
        const e = c.errno();
        c.close(fd);
        throw errnoError('TUNSETIFF', e);
      }
      return fd;
    },

    closeFd(fd) {
      if (c.close(fd) < 0) throw errnoError('close', c.errno());
    },

    readBatch(fd, buf, stride, max, lens) {
      if (stride <= 0 || max < 0 || stride * max > buf.length || lens.length < max) throw new WeaveError('EINVAL', 'readBatch: bad arguments or buffers too small');
      const a = addrOf(buf);
      let n = 0;
      while (n < max) {
        const r = c.read(fd, a + n * stride, stride);
        if (r < 0) {
          const e = c.errno();
          if (e === EINTR) continue;
          if (e === EAGAIN) break;
          if (n === 0) throw errnoError('read tun', e);
          break;
        }
        lens[n++] = r;
      }
      return n;
    },

    writeBatch(fd, buf, offs, lens, n) {
      const a = addrOf(buf);
      for (let i = 0; i < n; i++) if (offs[i] + lens[i] > buf.length || offs[i] < 0 || lens[i] < 0) throw new WeaveError('EINVAL', 'writeBatch: packet outside buffer');
      let ok = 0;
      for (let i = 0; i < n; i++) {
        const r = c.write(fd, a + offs[i], lens[i]);
        if (r < 0) {
          const e = c.errno();
          if (e === EINTR) { i--; continue; }
          if (e === EAGAIN) break;
          continue; // refused packet (not IP): skip it, like the addon
        }
        ok++;
      }
      return ok;
    },
  };
}

/** The UDP socket: bind with PMTU discovery, sendmmsg/recvmmsg batches through the scratch arrays. */
function udpCalls(c: Libc, s: { tx: Scratch; rx: Scratch; small: Buffer; smallA: number }, addrOf: (b: Uint8Array) => number): UdpCalls {
  const { tx, rx, small, smallA } = s;
  return {
    udpOpen(ip, port, rcvbuf, sndbuf) {
      const fd = c.socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) throw errnoError('socket', c.errno());
      const opt = (level: number, name: number, v: number): number => {
        small.writeInt32LE(v, 0);
        return c.setsockopt(fd, level, name, smallA, 4);
      };
      if (rcvbuf > 0 && opt(SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf) < 0) opt(SOL_SOCKET, SO_RCVBUF, rcvbuf);
      if (sndbuf > 0 && opt(SOL_SOCKET, SO_SNDBUFFORCE, sndbuf) < 0) opt(SOL_SOCKET, SO_SNDBUF, sndbuf);
      if (opt(IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO) < 0) {
        const e = c.errno();
        c.close(fd);
        throw errnoError('setsockopt IP_MTU_DISCOVER', e);
      }
      small.fill(0, 0, SIN);
      small.writeUInt16LE(AF_INET, 0);
      small.writeUInt16BE(port, 2);
      small.writeUInt32BE(ip >>> 0, 4);
      if (c.bind(fd, smallA, SIN) < 0) {
        const e = c.errno();
        c.close(fd);
        throw errnoError('bind udp', e);
      }
      return fd;
    },

    udpPort(fd) {
      small.fill(0, 0, 32);
      small.writeUInt32LE(SIN, 16);
      if (c.getsockname(fd, smallA, smallA + 16) < 0) throw errnoError('getsockname', c.errno());
      return small.readUInt16BE(2);
    },

    sendBatch(fd, buf, offs, lens, ips, ports, errs, n) {
      if (n < 0 || n > ADDON_MAX_BATCH) throw new WeaveError('EINVAL', 'sendBatch: bad arguments (n <= 256)');
      const a = addrOf(buf);
      const { m32, i32, sin } = tx;
      for (let i = 0; i < n; i++) {
        if (offs[i] + lens[i] > buf.length || offs[i] < 0 || lens[i] < 0) throw new WeaveError('EINVAL', 'sendBatch: datagram outside buffer');
        const s = i * SIN;
        sin.writeUInt16LE(AF_INET, s);
        sin.writeUInt16BE(ports[i] & 0xffff, s + 2);
        sin.writeUInt32BE(ips[i] >>> 0, s + 4);
        putPtr(i32, i * IOV, a + offs[i]);
        putPtr(i32, i * IOV + 8, lens[i]);
        const mo = i * MMSG;
        m32[(mo + MSG_NAMELEN) >>> 2] = SIN;
        m32[(mo + MSG_FLAGS) >>> 2] = 0;
        errs[i] = 0;
      }
      let done = 0;
      let sent = 0;
      while (done < n) {
        const r = c.sendmmsg(fd, tx.msgsA + done * MMSG, n - done, 0);
        if (r < 0) {
          const e = c.errno();
          if (e === EINTR) continue;
          if (e === EAGAIN) {
            for (let i = done; i < n; i++) errs[i] = EAGAIN;
            break;
          }
          errs[done++] = e; // this datagram failed; carry on with the next
          continue;
        }
        done += r;
        sent += r;
      }
      return sent;
    },

    recvBatch(fd, buf, stride, max, lens, ips, ports) {
      if (stride <= 0 || max < 0 || max > ADDON_MAX_BATCH || stride * max > buf.length) throw new WeaveError('EINVAL', 'recvBatch: bad arguments (max <= 256)');
      if (max === 0) return 0;
      const a = addrOf(buf);
      const { m32, i32, sin } = rx;
      for (let i = 0; i < max; i++) {
        putPtr(i32, i * IOV, a + i * stride);
        putPtr(i32, i * IOV + 8, stride);
        const mo = i * MMSG;
        m32[(mo + MSG_NAMELEN) >>> 2] = SIN;
        m32[(mo + MSG_FLAGS) >>> 2] = 0;
      }
      let r: number;
      do {
        r = c.recvmmsg(fd, rx.msgsA, max, MSG_DONTWAIT, 0);
      } while (r < 0 && c.errno() === EINTR);
      if (r < 0) {
        const e = c.errno();
        if (e === EAGAIN) return 0;
        // queued ICMP errors (a peer went away, path MTU) are not fatal for the socket
        if (e === ECONNREFUSED || e === EHOSTUNREACH || e === ENETUNREACH || e === EMSGSIZE) return 0;
        throw errnoError('recvmmsg', e);
      }
      for (let i = 0; i < r; i++) {
        const mo = i * MMSG;
        lens[i] = m32[(mo + MSG_FLAGS) >>> 2] & MSG_TRUNC ? stride + 1 : m32[(mo + MSG_LEN) >>> 2];
        ips[i] = sin.readUInt32BE(i * SIN + 4);
        ports[i] = sin.readUInt16BE(i * SIN + 2);
      }
      return r;
    },
  };
}

/** Readiness through poll(2) on koffi's worker thread, re-armed after each callback. */
function pollCalls(c: Libc, plog: Logger): PollCalls {
  return {
    poll(fd, cb) {
      const p: Poller = { stopped: false, fds: Buffer.alloc(8) };
      p.fds.writeInt32LE(fd, 0);
      p.fds.writeInt16LE(POLLIN, 4);
      const fdsA = c.address(p.fds);
      const arm = (): void => {
        if (p.stopped) return;
        p.fds.writeInt16LE(0, 6);
        c.poll.async(fdsA, 1, POLL_WAIT_MS, (err: unknown, res: number) => {
          if (p.stopped) return;
          if (err) {
            p.stopped = true;
            plog.error({ fd, err: errMsg(err) }, 'async poll failed; this fd is no longer watched');
            cb(-1);
            return;
          }
          const rev = p.fds.readInt16LE(6);
          if (res > 0 && rev & POLLNVAL) {
            p.stopped = true;
            plog.error({ fd }, 'polled fd is not open; this fd is no longer watched');
            cb(-9);
            return;
          }
          try {
            if (res > 0 && rev & (POLLIN | POLLERR | POLLHUP)) cb(0);
          } finally {
            arm();
          }
        });
      };
      arm();
      return p;
    },

    unpoll(handle) {
      const p = handle as Poller;
      if (p && typeof p === 'object') p.stopped = true;
    },
  };
}

