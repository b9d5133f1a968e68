// Reads the drop log: nftables `log group N` sends each logged packet to nfnetlink_log, which hands it
// to the one netlink socket bound to group N in this network namespace. No library: a NETLINK_NETFILTER
// socket through koffi (libc's socket/bind/send/recv, already a dependency for the data path's fallback).
//
//   open:  socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER) -> bind -> NFULNL_MSG_CONFIG: bind group N,
//          copy 128 bytes of each packet (the IPv4 and transport headers are all we read), queue
//          threshold 1 (deliver each packet at once, not in batches of 100 or once a second)
//   read:  poll(2) on koffi's worker thread; when readable, recv with MSG_DONTWAIT until EAGAIN, each
//          datagram split into netlink messages, each NFULNL_MSG_PACKET into {prefix, IPv4 header
//          fields}. The drops themselves are rate-limited in nftables, so this path is cold.
import { errno as E, errnoName } from '../lib/errno';
import { errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import { NpcError } from './errors';

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_NETFILTER = 12;
const NFNL_SUBSYS_ULOG = 4;
const NFULNL_MSG_PACKET = 0;
const NFULNL_MSG_CONFIG = 1;
const NLMSG_ERROR = 2;
const NLM_F_REQUEST = 1;
const NLM_F_ACK = 4;
const NFULA_CFG_CMD = 1;
const NFULA_CFG_MODE = 2;
const NFULA_CFG_QTHRESH = 4;
const NFULNL_CFG_CMD_BIND = 1;
const NFULNL_COPY_PACKET = 2;
const NFULA_IFINDEX_INDEV = 4;
const NFULA_IFINDEX_OUTDEV = 5;
const NFULA_PAYLOAD = 9;
const NFULA_PREFIX = 10;
const MSG_DONTWAIT = 0x40;
const POLLIN = 1;
const POLL_WAIT_MS = 500;
export const COPY_RANGE = 128;

export interface LoggedPacket {
  prefix: string;
  indev?: number;
  outdev?: number;
  src?: string;
  dst?: string;
  /** IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP ...) */
  proto?: number;
  /** destination port (TCP, UDP, SCTP) */
  port?: number;
}

function attr(type: number, body: Buffer): Buffer {
  const len = 4 + body.length;
  const b = Buffer.alloc((len + 3) & ~3);
  b.writeUInt16LE(len, 0);
  b.writeUInt16LE(type, 2);
  body.copy(b, 4);
  return b;
}

/** The config request that binds the socket to group and asks for packets (pure; unit-tested). */
export function configMessage(group: number, seq: number): Buffer {
  const cmd = attr(NFULA_CFG_CMD, Buffer.from([NFULNL_CFG_CMD_BIND]));
  const mode = Buffer.alloc(6);
  mode.writeUInt32BE(COPY_RANGE, 0);
  mode.writeUInt8(NFULNL_COPY_PACKET, 4);
  const qthresh = Buffer.alloc(4);
  qthresh.writeUInt32BE(1, 0);
  const body = Buffer.concat([Buffer.from([0, 0, (group >> 8) & 255, group & 255]), cmd, attr(NFULA_CFG_MODE, mode), attr(NFULA_CFG_QTHRESH, qthresh)]);
  const h = Buffer.alloc(16);
  h.writeUInt32LE(16 + body.length, 0);
  h.writeUInt16LE((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, 4);
  h.writeUInt16LE(NLM_F_REQUEST | NLM_F_ACK, 6);
  h.writeUInt32LE(seq, 8);
  return Buffer.concat([h, body]);
}

function ipText(b: Buffer, off: number): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

/** The IPv4 header fields of a logged packet (payload as copied: may be cut short). */
export function parseIpv4(p: Buffer): Pick<LoggedPacket, 'src' | 'dst' | 'proto' | 'port'> {
  if (p.length < 20 || p[0] >> 4 !== 4) return {};
  const ihl = (p[0] & 15) * 4;
  const proto = p[9];
  const out: Pick<LoggedPacket, 'src' | 'dst' | 'proto' | 'port'> = { src: ipText(p, 12), dst: ipText(p, 16), proto };
  const fragOff = p.readUInt16BE(6) & 0x1fff;
  if ((proto === 6 || proto === 17 || proto === 132) && fragOff === 0 && p.length >= ihl + 4) out.port = p.readUInt16BE(ihl + 2);
  return out;
}

export type NetlinkItem = { kind: 'packet'; packet: LoggedPacket } | { kind: 'error'; errno: number; seq: number };

/** Splits one datagram into netlink messages: logged packets and error/ack replies (pure). */
export function parseDatagram(buf: Buffer, n: number): NetlinkItem[] {
  const out: NetlinkItem[] = [];
  let off = 0;
  while (off + 16 <= n) {
    const len = buf.readUInt32LE(off);
    const type = buf.readUInt16LE(off + 4);
    if (len < 16 || off + len > n) break;
    if (type === NLMSG_ERROR && len >= 20) {
      out.push({ kind: 'error', errno: -buf.readInt32LE(off + 16), seq: buf.readUInt32LE(off + 8) });
    } else if (type === ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)) {
      const pkt: LoggedPacket = { prefix: '' };
      let a = off + 20;
      while (a + 4 <= off + len) {
        const alen = buf.readUInt16LE(a);
        const atype = buf.readUInt16LE(a + 2) & 0x7fff;
        if (alen < 4 || a + alen > off + len) break;
        const body = buf.subarray(a + 4, a + alen);
        if (atype === NFULA_PREFIX) pkt.prefix = body.toString('utf8').replace(/\0.*$/s, '');
        else if (atype === NFULA_IFINDEX_INDEV && body.length >= 4) pkt.indev = body.readUInt32BE(0);
        else if (atype === NFULA_IFINDEX_OUTDEV && body.length >= 4) pkt.outdev = body.readUInt32BE(0);
        else if (atype === NFULA_PAYLOAD) Object.assign(pkt, parseIpv4(Buffer.from(body)));
        a += (alen + 3) & ~3;
      }
      out.push({ kind: 'packet', packet: pkt });
    }
    off += (len + 3) & ~3;
  }
  return out;
}

type Fn = ((...a: unknown[]) => number) & { async: (...a: unknown[]) => void };

interface Libc {
  socket: Fn; bind: Fn; send: Fn; recv: Fn; close: Fn; poll: Fn;
  errno: () => number; address: (b: Buffer) => number;
}

function loadLibc(): Libc {
  const koffi = require('koffi') as typeof import('koffi');
  const lib = koffi.load('libc.so.6');
  const f = (decl: string): Fn => lib.func(decl) as unknown as Fn;
  return {
    socket: f('int socket(int domain, int type, int proto)'),
    bind: f('int bind(int fd, uintptr_t addr, uint32_t len)'),
    send: f('intptr_t send(int fd, uintptr_t buf, size_t n, int flags)'),
    recv: f('intptr_t recv(int fd, uintptr_t buf, size_t n, int flags)'),
    close: f('int close(int fd)'),
    poll: f('int poll(uintptr_t fds, unsigned long n, int timeout)'),
    errno: () => koffi.errno(),
    address: (b) => Number(koffi.address(b)),
  };
}

/** One bound NFLOG group; `onPacket` runs on the main thread for each logged packet. */
export class NflogReader {
  private readonly c: Libc;
  private fd = -1;
  private stopped = false;
  private readonly buf = Buffer.alloc(65536);
  private readonly pollfd = Buffer.alloc(8);
  /** packets the kernel could not queue to us (ENOBUFS) */
  overruns = 0;

  private constructor(readonly group: number, private readonly onPacket: (p: LoggedPacket) => void, private readonly log: Logger) {
    this.c = loadLibc();
  }

  /** Opens and binds; throws NpcError naming why (EBUSY: another process reads this group). */
  static open(group: number, onPacket: (p: LoggedPacket) => void, log: Logger): NflogReader {
    let r: NflogReader;
    try {
      r = new NflogReader(group, onPacket, log);
    } catch (e) {
      throw new NpcError('ENFLOG', `cannot load libc through koffi for the drop log: ${errMsg(e)}`, {}, { cause: e });
    }
    r.bindGroup();
    r.arm();
    return r;
  }

  private fail(what: string, errno: number): never {
    const name = errnoName(errno);
    if (this.fd >= 0) { this.c.close(this.fd); this.fd = -1; }
    const hint = errno === E.EBUSY ? ` (another process reads NFLOG group ${this.group} in this network namespace)` : '';
    throw new NpcError('ENFLOG', `drop log: ${what}: ${name}${hint}`, { group: this.group, errno: name });
  }

  private bindGroup(): void {
    const fd = this.c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0) this.fail('socket(AF_NETLINK, NETLINK_NETFILTER)', this.c.errno());
    this.fd = fd;
    const sa = Buffer.alloc(12);
    sa.writeUInt16LE(AF_NETLINK, 0);
    if (this.c.bind(fd, this.c.address(sa), 12) < 0) this.fail('bind', this.c.errno());
    const msg = configMessage(this.group, 1);
    if (this.c.send(fd, this.c.address(msg), msg.length, 0) < 0) this.fail('send config', this.c.errno());
    // the ack (or the kernel's refusal) comes back at once
    const n = this.c.recv(fd, this.c.address(this.buf), this.buf.length, 0);
    if (n < 0) this.fail('recv config ack', this.c.errno());
    for (const it of parseDatagram(this.buf, n)) {
      if (it.kind === 'error' && it.errno !== 0) this.fail(`bind NFLOG group ${this.group}`, it.errno);
    }
  }

  private arm(): void {
    if (this.stopped || this.fd < 0) return;
    this.pollfd.writeInt32LE(this.fd, 0);
    this.pollfd.writeInt16LE(POLLIN, 4);
    this.pollfd.writeInt16LE(0, 6);
    this.c.poll.async(this.c.address(this.pollfd), 1, POLL_WAIT_MS, (err: unknown, res: number) => {
      if (this.stopped) { this.closeFd(); return; }
      if (err) { this.log.error({ err: errMsg(err) }, 'drop log: poll failed; no more drop lines'); return; }
      if (res > 0) this.drain();
      this.arm();
    });
  }

  private drain(): void {
    for (;;) {
      const n = this.c.recv(this.fd, this.c.address(this.buf), this.buf.length, MSG_DONTWAIT);
      if (n < 0) {
        const e = this.c.errno();
        if (e === E.EAGAIN) return;
        if (e === E.ENOBUFS) { this.overruns++; continue; }
        this.log.error({ errno: errnoName(e) }, 'drop log: recv failed');
        return;
      }
      for (const it of parseDatagram(this.buf, n)) {
        if (it.kind !== 'packet') continue;
        try { this.onPacket(it.packet); } catch (e) { this.log.error({ err: errMsg(e) }, 'drop log: handler failed'); }
      }
    }
  }

  private closeFd(): void {
    if (this.fd >= 0) { this.c.close(this.fd); this.fd = -1; }
  }

  /** Stops reading; the socket is closed once the pending poll returns (at most POLL_WAIT_MS). */
  stop(): void {
    this.stopped = true;
  }
}
