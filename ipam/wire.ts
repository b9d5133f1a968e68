// IPAM messages on the 'ipam' gossip channel. All msgpack maps with v:1; every decoder validates
// everything and throws ProtocolError (the mesh then treats it as that connection's problem).
//   gossip/broadcast: {v:1, k:'g', range:[s,e], ring?: RingWire, px?: paxos records,
//                      h?: held-address records [peer, ver, [seeds...], [held...], [dups...], removed(0|1), ...]}
//   unicast:          {v:1, k:'req', s:[start,end]}            ask the receiver for space in [start,end)
//                     {v:1, k:'donate'|'nospace'|'handover', ring: RingWire}   answer / hand-over, carrying the ring
//                     {v:1, k:'ack'}                           hand-over received
import type { GossipData } from '../mesh/types';
import { decodeMsg, encodeMsg } from '../mesh/codec';
import { isPeerName, type PeerName } from '../mesh/peer';
import { ProtocolError } from '../lib/errors';
import { isAddr, type Addr, type Range } from '../lib/addr';
import { Ring, compareSeeds, describe, isObj } from './ring';
import { Paxos, type PaxosNode } from './paxos';

/**
 * What a peer tells everyone during a merge repair (owner-only record, highest ver wins): the ring
 * it uses now, the addresses its containers hold outside its own space (kept reserved everywhere
 * and handed to it by their owners when free) and the duplicates it found. `removed` is written by
 * rmpeer on behalf of a dead peer (with a CLAIM_BUMP), releasing what it held.
 */
export interface HeldRecord {
  ver: number;
  seeds: PeerName[];
  held: Addr[];
  dups: Addr[];
  removed: boolean;
}

export interface GossipMsg {
  range: Range;
  ring: Ring | null;
  paxos: Map<PeerName, PaxosNode> | null;
  records?: Map<PeerName, HeldRecord> | null;
}

const MAX_HELD = 1 << 16;

export type UnicastMsg =
  | { k: 'req'; subnet: Range }
  | { k: 'donate' | 'nospace' | 'handover'; ring: Ring }
  | { k: 'ack' };

function unpack(buf: Uint8Array, what: string): Record<string, unknown> {
  const raw = decodeMsg(buf, `ipam ${what}`);
  if (!isObj(raw)) throw new ProtocolError(`ipam ${what}: not a map`);
  if (raw.v !== 1) throw new ProtocolError(`ipam ${what}: unsupported version ${describe(raw.v)}`);
  return raw;
}

function decodeRange(x: unknown, what: string): Range {
  if (!Array.isArray(x) || x.length !== 2) throw new ProtocolError(`ipam ${what}: range must be [start, end]`);
  const [s, e] = x as unknown[];
  if (!isAddr(s) || typeof e !== 'number' || !Number.isInteger(e) || e <= s || e > 2 ** 32) throw new ProtocolError(`ipam ${what}: invalid range`);
  return { start: s, end: e };
}

export function encodeGossip(m: GossipMsg): Uint8Array {
  const o: Record<string, unknown> = { v: 1, k: 'g', range: [m.range.start, m.range.end] };
  if (m.ring && !m.ring.isEmpty()) o.ring = m.ring.toWire();
  if (m.paxos) o.px = paxosToWire(m.paxos);
  if (m.records && m.records.size) o.h = recordsToWire(m.records);
  return encodeMsg(o);
}

export function decodeGossip(buf: Uint8Array): GossipMsg {
  const raw = unpack(buf, 'gossip');
  if (raw.k !== 'g') throw new ProtocolError(`ipam gossip: unexpected kind ${describe(raw.k)}`);
  const range = decodeRange(raw.range, 'gossip');
  const ring = raw.ring === undefined ? null : Ring.fromWire(raw.ring);
  if (ring && (ring.range.start !== range.start || ring.range.end !== range.end)) throw new ProtocolError('ipam gossip: ring range differs from message range');
  const paxos = raw.px === undefined ? null : Paxos.fromWire(raw.px);
  const records = raw.h === undefined ? null : recordsFromWire(raw.h, range);
  return { range, ring, paxos, records };
}

export function encodeUnicast(m: UnicastMsg): Uint8Array {
  if (m.k === 'req') return encodeMsg({ v: 1, k: 'req', s: [m.subnet.start, m.subnet.end] });
  if (m.k === 'ack') return encodeMsg({ v: 1, k: 'ack' });
  return encodeMsg({ v: 1, k: m.k, ring: m.ring.toWire() });
}

export function decodeUnicast(buf: Uint8Array): UnicastMsg {
  const raw = unpack(buf, 'unicast');
  switch (raw.k) {
    case 'req':
      return { k: 'req', subnet: decodeRange(raw.s, 'space request') };
    case 'ack':
      return { k: 'ack' };
    case 'donate':
    case 'nospace':
    case 'handover':
      return { k: raw.k, ring: Ring.fromWire(raw.ring) };
    default:
      throw new ProtocolError(`ipam unicast: unknown kind ${describe(raw.k)}`);
  }
}

function paxosToWire(m: Map<PeerName, PaxosNode>): unknown[] {
  const out: unknown[] = [];
  for (const [name, n] of m) out.push(name, n.nickname, n.ver, n.promised.round, n.promised.proposer, n.accepted.round, n.accepted.proposer, n.value ? n.value.flat() : null);
  return out;
}

function recordsToWire(m: Map<PeerName, HeldRecord>): unknown[] {
  const out: unknown[] = [];
  for (const [name, r] of m) out.push(name, r.ver, r.seeds, r.held, r.dups, r.removed ? 1 : 0);
  return out;
}

function recordsFromWire(raw: unknown, range: Range): Map<PeerName, HeldRecord> {
  const bad = (why: string): never => {
    throw new ProtocolError(`ipam held records: ${why}`);
  };
  if (!Array.isArray(raw) || raw.length % 6 !== 0 || raw.length > 6 * 65536) return bad('must be a flat list of 6-tuples');
  const addrs = (x: unknown, what: string): Addr[] => {
    if (!Array.isArray(x) || x.length > MAX_HELD) return bad(`${what} must be a list`);
    for (const a of x) if (!isAddr(a) || a < range.start || a >= range.end) return bad(`${what}: address outside the range`);
    return (x as Addr[]).slice();
  };
  const m = new Map<PeerName, HeldRecord>();
  for (let k = 0; k < raw.length; k += 6) {
    const name = raw[k];
    if (typeof name !== 'string' || !isPeerName(name)) return bad('invalid peer name');
    if (m.has(name)) return bad('duplicate peer');
    const ver = raw[k + 1];
    if (typeof ver !== 'number' || !Number.isSafeInteger(ver) || ver < 0) return bad('invalid version');
    const seeds = raw[k + 2];
    if (!Array.isArray(seeds) || seeds.length > 65536) return bad('seeds must be a list');
    for (let i = 0; i < seeds.length; i++) {
      const sd = seeds[i];
      if (typeof sd !== 'string' || !isPeerName(sd)) return bad('invalid seed');
      if (i > 0 && !(seeds[i - 1] < sd)) return bad('seeds must be sorted and unique');
    }
    const removed = raw[k + 5];
    if (removed !== 0 && removed !== 1) return bad('removed must be 0 or 1');
    m.set(name, { ver, seeds: seeds as PeerName[], held: addrs(raw[k + 3], 'held'), dups: addrs(raw[k + 4], 'dups'), removed: removed === 1 });
  }
  return m;
}

/** Held-address records as persisted by the allocator (same validation as on the wire). */
export function encodeRecords(m: Map<PeerName, HeldRecord>): Uint8Array {
  return encodeMsg(recordsToWire(m));
}

export function decodeRecords(buf: Uint8Array, range: Range): Map<PeerName, HeldRecord> {
  return recordsFromWire(decodeMsg(buf, 'ipam held records'), range);
}

/** One acceptor's Paxos state as persisted (the 8-tuple of the gossip format). */
export function encodePaxosNode(name: PeerName, n: PaxosNode): Uint8Array {
  return encodeMsg(paxosToWire(new Map([[name, n]])));
}

export function decodePaxosNode(buf: Uint8Array, name: PeerName): PaxosNode {
  const n = Paxos.fromWire(decodeMsg(buf, 'ipam paxos state')).get(name);
  if (!n) throw new ProtocolError(`ipam paxos state: no record for ${name}`);
  return n;
}

/** Gossip state handed to the mesh: a snapshot that merges (coalesces queued outgoing gossip). */
export class IpamGossipData implements GossipData {
  constructor(private msg: GossipMsg) {}

  encode(): Uint8Array[] {
    return [encodeGossip(this.msg)];
  }

  merge(other: GossipData): GossipData {
    if (!(other instanceof IpamGossipData)) return this;
    const o = other.msg;
    if (o.range.start !== this.msg.range.start || o.range.end !== this.msg.range.end) return this;
    if (o.ring) {
      if (!this.msg.ring) this.msg.ring = o.ring.clone();
      else {
        const r = this.msg.ring.clone();
        // Two differently seeded rings (we adopted a winner in between, or relay both): keep the
        // winner, the one every peer converges to; the allocator reports and repairs the conflict.
        if (r.merge(o.ring).conflict?.kind !== 'seeds') this.msg.ring = r;
        else if (compareSeeds(o.ring.seeds, this.msg.ring.seeds) < 0) this.msg.ring = o.ring.clone();
      }
    }
    if (o.records) this.msg.records = newerOf(this.msg.records, o.records);
    if (o.paxos) this.msg.paxos = newerOf(this.msg.paxos, o.paxos);
    return this;
  }

  get message(): GossipMsg {
    return this.msg;
  }
}

/** Per key, the entry with the higher version (a's on a tie); a new map, a and b untouched. */
function newerOf<K, V extends { ver: number }>(a: ReadonlyMap<K, V> | null | undefined, b: ReadonlyMap<K, V>): Map<K, V> {
  const out = new Map(a ?? []);
  for (const [k, v] of b) {
    const mine = out.get(k);
    if (!mine || v.ver > mine.ver) out.set(k, v);
  }
  return out;
}
