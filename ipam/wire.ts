// IPAM messages on the 'ipam' gossip channel. All msgpack maps with v:1; every decoder validates
// everything and throws ProtocolError (the mesh then treats it as that connection's problem).
//   gossip/broadcast: {v:1, k:'g', range:[s,e], ring?: RingWire, px?: paxos records}
//   unicast:          {v:1, k:'req', s:[start,end]}            ask the receiver for space in [start,end)
//                     {v:1, k:'donate'|'nospace'|'handover', ring: RingWire}   answer / hand-over, carrying the ring
//                     {v:1, k:'ack'}                           hand-over received
import { Packr } from 'msgpackr';
import type { GossipData } from '../mesh/types';
import type { PeerName } from '../mesh/peer';
import { ProtocolError } from '../mesh/errors';
import { isAddr, type Range } from './addr';
import { Ring, describe, isObj } from './ring';
import { Paxos, type PaxosNode } from './paxos';

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

export interface GossipMsg {
  range: Range;
  ring: Ring | null;
  paxos: Map<PeerName, PaxosNode> | null;
}

export type UnicastMsg =
  | { k: 'req'; subnet: Range }
  | { k: 'donate' | 'nospace' | 'handover'; ring: Ring }
  | { k: 'ack' };

function unpack(buf: Uint8Array, what: string): Record<string, unknown> {
  let raw: unknown;
  try {
    raw = packr.unpack(buf);
  } catch (err) {
    throw new ProtocolError(`ipam ${what}: undecodable msgpack: ${(err as Error).message}`);
  }
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
  return packr.pack(o);
}

export function decodeGossip(buf: Uint8Array): GossipMsg {
  const raw = unpack(buf, 'gossip');
  if (raw.k !== 'g') throw new ProtocolError(`ipam gossip: unexpected kind ${describe(raw.k)}`);
  const range = decodeRange(raw.range, 'gossip');
  const ring = raw.ring === undefined ? null : Ring.fromWire(raw.ring);
  if (ring && (ring.range.start !== range.start || ring.range.end !== range.end)) throw new ProtocolError('ipam gossip: ring range differs from message range');
  const paxos = raw.px === undefined ? null : Paxos.fromWire(raw.px);
  return { range, ring, paxos };
}

export function encodeUnicast(m: UnicastMsg): Uint8Array {
  if (m.k === 'req') return packr.pack({ v: 1, k: 'req', s: [m.subnet.start, m.subnet.end] });
  if (m.k === 'ack') return packr.pack({ v: 1, k: 'ack' });
  return packr.pack({ v: 1, k: m.k, ring: m.ring.toWire() });
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
        // a conflicting ring is dropped from the coalesced message; the allocator reports conflicts
        if (r.merge(o.ring).conflict?.kind !== 'seeds') this.msg.ring = r;
      }
    }
    if (o.paxos) {
      const p = new Map(this.msg.paxos ?? []);
      for (const [k, n] of o.paxos) {
        const mine = p.get(k);
        if (!mine || n.ver > mine.ver) p.set(k, n);
      }
      this.msg.paxos = p;
    }
    return this;
  }

  get message(): GossipMsg {
    return this.msg;
  }
}
