// Fuzz targets: what a peer sends over TCP (hello, key exchange, features, frames, a whole session)
// and every gossip channel's decoder. Seeds are real messages made with the project's encoders.
import { loadCrypto } from '../../mesh/crypto';
import { ProtocolError, RefusedError } from '../../lib/errors';
import { encodeMsg } from '../../mesh/codec';
import { EventEmitter } from 'events';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { Sleeve, type SleeveHandle } from '../../router/sleeve';
import { PrefixTable as SleevePrefixes } from '../../router/prefixes';
import { ChannelTun } from '../fakes/channel-tun';
import { ChannelNet } from '../fakes/channel-udp';
import { Msg, type Features, type MeshConnection } from '../../mesh/types';
import { FrameReader, FrameSealer, WireSession, decodeFeatures, decodeHello, decodeKeyExchange, encodeFeatures, encodeHello, encodeKeyExchange } from '../../mesh/wire';
import { decodeTopology, encodeTopology, TopoKind } from '../../mesh/topology';
import { decodeGossip as decodeMeshGossip, encodeGossip as encodeMeshGossip, GossipKind } from '../../mesh/gossip';
import { Ring } from '../../ipam/ring';
import { decodeGossip as decodeIpamGossip, decodePaxosNode, decodeRecords, decodeUnicast, encodeGossip as encodeIpamGossip, encodePaxosNode, encodeRecords, encodeUnicast } from '../../ipam/wire';
import { decodeEntries, encodeEntries } from '../../dns/records';
import { PrefixUpdate, decodePrefixUpdate } from '../../router/prefixes';
import { LinksAsk, LinksUpdate, decodeLinksMessage } from '../../ui/links';
import { decodeFastDpCtl, encodeFastDpCtl } from '../../router/fastdp';
import { chunks, int, perturb, pick, value, type Rng } from './mutate';
import type { Target } from './engine';

const crypto = loadCrypto('sodium');
const KA = crypto.x25519Keypair();
const KB = crypto.x25519Keypair();
const PW = Buffer.from('fuzz-password');
const P1 = '02:00:00:00:00:01';
const P2 = '02:00:00:00:00:02';
const P3 = '0a:bb:cc:dd:ee:ff';

const isProto = (e: unknown): boolean => e instanceof ProtocolError;
const isWire = (e: unknown): boolean => e instanceof ProtocolError || e instanceof RefusedError;

function features(name: string): Features {
  return {
    name, nickname: 'host-1', uid: '1234567890abcdef', connId: 'c0ffee', overlays: ['fastdp', 'sleeve'],
    overlayParams: { sleeve: { port: 6783 }, fastdp: { v: 1, mac: '02:00:00:00:00:aa', vtep: '10.0.0.1', port: 6784, hb: 6785 } },
    trusted: false, listenPort: 6783,
  };
}

/** A structured target input: a perturbed seed object or a random value, msgpack-encoded. */
function msgpackStructured(objs: () => unknown[]): (r: Rng) => Uint8Array {
  let cache: unknown[] | undefined;
  return (r) => {
    cache ??= objs();
    return encodeMsg(r() < 0.7 ? perturb(r, pick(r, cache)) : value(r, 5));
  };
}

function decoderTarget(name: string, seeds: () => Uint8Array[], objs: () => unknown[], decode: (b: Uint8Array) => unknown): Target {
  return { name, seeds, structured: msgpackStructured(objs), run: (b) => { decode(b); }, expected: isProto };
}

// ---- handshake and framing ---------------------------------------------------------------------

interface Party { s: WireSession; out: Buffer[]; est: boolean; msgs: number }

function party(outbound: boolean, password: Buffer | null): Party {
  const p: Party = { s: undefined as unknown as WireSession, out: [], est: false, msgs: 0 };
  p.s = new WireSession(
    { crypto, outbound, password, ephemeral: outbound ? KA : KB, local: features(outbound ? P1 : P2) },
    { write: (b) => p.out.push(b), established: () => { p.est = true; }, message: () => { p.msgs++; } },
  );
  p.s.start();
  return p;
}

/** What one side sends in a clean session (with messages after the handshake). */
function transcript(outbound: boolean, password: Buffer | null): Buffer {
  const a = party(outbound, password);
  const b = party(!outbound, password);
  const sent: Buffer[] = [];
  for (let i = 0; i < 5; i++) {
    const fromA = a.out.splice(0);
    sent.push(...fromA);
    for (const c of fromA) b.s.push(c);
    for (const c of b.out.splice(0)) a.s.push(c);
  }
  if (!a.est || !b.est) throw new Error('reference handshake did not complete');
  sent.push(a.s.encode(Msg.Topology, encodeTopology({ kind: TopoKind.Hash, hash: 'abc' })));
  sent.push(a.s.encode(Msg.Gossip, Buffer.alloc(300, 7)));
  sent.push(a.s.encode(Msg.Overlay, Buffer.from('overlay')));
  return Buffer.concat(sent);
}

const SESSIONS: Array<{ outbound: boolean; password: Buffer | null }> = [
  { outbound: true, password: null }, { outbound: false, password: null }, { outbound: true, password: PW }, { outbound: false, password: PW },
];

const handshake: Target = {
  name: 'tcp-session',
  seeds: () => SESSIONS.map((s) => transcript(s.outbound, s.password)),
  run(input, r) {
    // the seed transcripts are the dialler's and the listener's, plain and sealed: pick the receiver
    // that matches one of them (a mismatch is just more hostile input)
    const k = int(r, SESSIONS.length);
    const recv = party(!SESSIONS[k].outbound, SESSIONS[k].password);
    recv.out.length = 0;
    for (const c of chunks(r, input)) recv.s.push(c);
  },
  large(r) {
    // a plain session, then one frame declaring the limit and delivering it byte by byte
    const body = Buffer.alloc(64 * 1024 + int(r, 64 * 1024), int(r, 256));
    const hdr = Buffer.alloc(4);
    hdr.writeUInt32BE(body.length, 0);
    return Buffer.concat([transcript(true, null), hdr, body]);
  },
  expected: isWire,
};

const hello: Target = {
  name: 'hello',
  seeds: () => [encodeHello(1, 1), encodeHello(1, 255)],
  run: (b) => { decodeHello(b); },
  expected: isProto,
};

const keyx: Target = {
  name: 'key-exchange',
  seeds: () => [encodeKeyExchange(true, KA.publicKey), encodeKeyExchange(false, KB.publicKey), encodeKeyExchange(true, KA.publicKey, true)],
  run: (b) => { decodeKeyExchange(b); },
  expected: isProto,
};

const featuresTarget = decoderTarget('features', () => [encodeFeatures(features(P1)), encodeFeatures({ ...features(P2), overlays: [], overlayParams: {} })],
  () => [encodeObj(features(P1))], (b) => {
    const f = decodeFeatures(b);
    // what the overlays read from the params must be what decodeFeatures promised
    for (const v of Object.values(f.overlayParams)) if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('overlay params entry is not a map');
  });

function encodeObj(f: Features): Record<string, unknown> {
  return { v: 1, ...f };
}

const frames: Target = {
  name: 'frames',
  seeds: () => {
    const s = new FrameSealer(null as never, null, 0, 1 << 20);
    return [Buffer.concat([s.encodeRaw(Buffer.from('hello')), s.encodeRaw(Buffer.alloc(0)), s.encodeRaw(Buffer.alloc(1000, 1))])];
  },
  run(input, r) {
    const max = pick(r, [16, 1024, 16 * 1024, 1 << 20]);
    const fr = new FrameReader(max);
    for (const c of chunks(r, input)) {
      fr.push(c);
      for (let f = fr.nextFrame(); f; f = fr.nextFrame()) if (f.length > max) throw new Error('frame beyond the limit');
    }
  },
  large(r) {
    const n = 200_000 + int(r, 100_000);
    const b = Buffer.alloc(4 + n, 0x41);
    b.writeUInt32BE(n, 0);
    return b;
  },
  expected: isProto,
};

// ---- gossip channels ---------------------------------------------------------------------------

const topoObjs = (): unknown[] => [
  { v: 1, k: TopoKind.Records, p: [[P1, 'a', 'u1', 3, [[P2, '10.0.0.2:6783', true, true]]]], w: [P3] },
  { v: 1, k: TopoKind.Digest, d: [[P1, 'u1', 3]] },
  { v: 1, k: TopoKind.Hash, h: 'abc' },
  { v: 1, k: TopoKind.Refused, c: 'EPASSWORD', m: 'no' },
];
const topology = decoderTarget('gossip-topology', () => [
  encodeTopology({ kind: TopoKind.Records, peers: [{ name: P1, nickname: 'a', uid: 'u1', version: 3, connections: [{ name: P2, address: '10.0.0.2:6783', outbound: true, established: true }] }], want: [P3] }),
  encodeTopology({ kind: TopoKind.Digest, digest: [[P1, 'u1', 3]] }),
  encodeTopology({ kind: TopoKind.Hash, hash: 'abc' }),
  encodeTopology({ kind: TopoKind.Refused, code: 'EPASSWORD', message: 'wrong password' }),
], topoObjs, decodeTopology);

const meshGossip = decoderTarget('gossip-envelope', () => [
  encodeMeshGossip({ channel: 'ipam', kind: GossipKind.Unicast, src: P1, dst: P2, payload: new Uint8Array([1, 2, 3]) }),
  encodeMeshGossip({ channel: 'dns', kind: GossipKind.Broadcast, src: P1, payload: new Uint8Array([9]) }),
], () => [{ v: 1, channel: 'ipam', kind: 2, src: P1, dst: P2, payload: new Uint8Array([1]) }], decodeMeshGossip);

function ring(): Ring {
  const rg = new Ring({ start: 0x0a200000, end: 0x0a300000 });
  rg.seed([{ name: P1, nickname: 'a' }, { name: P2, nickname: 'b' }]);
  return rg;
}
const RANGE = { start: 0x0a200000, end: 0x0a300000 };
const paxos = { nickname: 'a', ver: 2, promised: { round: 1, proposer: P1 }, accepted: { round: 1, proposer: P1 }, value: [[P1, 'a'], [P2, 'b']] as Array<[string, string]> };
const held = new Map([[P1, { ver: 1, seeds: [P1, P2], held: [0x0a200001, 0x0a200002], dups: [], removed: false }]]);

const ipamRing = decoderTarget('gossip-ipam-ring', () => [ring().encode()], () => [ring().toWire()], Ring.decode);
const ipamGossip = decoderTarget('gossip-ipam', () => [
  encodeIpamGossip({ range: RANGE, ring: ring(), paxos: new Map([[P1, paxos]]), records: held }),
  encodeIpamGossip({ range: RANGE, ring: null, paxos: null }),
], () => [{ v: 1, k: 'g', range: [RANGE.start, RANGE.end], ring: ring().toWire(), px: [P1, 'a', 2, 1, P1, 1, P1, [P1, 'a', P2, 'b']] }], decodeIpamGossip);
const ipamUnicast = decoderTarget('gossip-ipam-unicast', () => [
  encodeUnicast({ k: 'req', subnet: RANGE }), encodeUnicast({ k: 'donate', ring: ring() }), encodeUnicast({ k: 'ack' }),
], () => [{ v: 1, k: 'req', subnet: [RANGE.start, RANGE.end] }, { v: 1, k: 'donate', ring: ring().toWire() }], decodeUnicast);
const ipamRecords = decoderTarget('ipam-held-records', () => [encodeRecords(held)], () => [[P1, 1, [P1, P2], [0x0a200001], [], 0]], (b) => decodeRecords(b, RANGE));
const ipamPaxos = decoderTarget('ipam-paxos-state', () => [encodePaxosNode(P1, paxos)], () => [[P1, 'a', 2, 1, P1, 1, P1, [P1, 'a']]], (b) => decodePaxosNode(b, P1));

const dnsEntries = [
  { name: 'web.weave.local.', addr: '10.32.0.5', origin: P1, version: 3, tombstone: false, containerId: 'abc123' },
  { name: 'db.weave.local.', addr: '10.32.0.6', origin: P2, version: 1, tombstone: true },
];
const dnsGossip = decoderTarget('gossip-dns', () => encodeEntries(dnsEntries),
  () => [{ v: 1, e: [['web.weave.local.', '10.32.0.5', P1, 3, 0, 'abc'], ['db.weave.local.', '10.32.0.6', P2, 1, 1, '']] }], decodeEntries);

const prefixes = decoderTarget('gossip-prefixes', () => new PrefixUpdate(new Map([[P1, { version: 2, prefixes: ['10.32.0.0/24', '10.40.1.7'] }], [P2, { version: 1, prefixes: [] }]])).encode(),
  () => [{ v: 1, entries: [{ o: P1, ver: 2, p: ['10.32.0.0/24'] }] }], decodePrefixUpdate);

const links = decoderTarget('gossip-links', () => [
  ...new LinksUpdate(new Map([[P1, { version: 2, software: '0.1.0 1..1', links: [{ peer: P2, state: 'established', overlay: 'sleeve', encryption: 'encrypted' as const, mtu: 1376, reason: 'x' }] }]])).encode(),
  ...new LinksAsk(new Map([[P1, 2], [P2, 7]])).encode(),
], () => [{ v: 1, e: [[P1, 2, '0.1.0 1..1', [[P2, 'established', 'sleeve', 0, 1376, '']]]] }, { v: 1, e: [], a: [[P1, 2]] }], decodeLinksMessage);

const fastdpCtl = decoderTarget('overlay-fastdp-control', () => [
  encodeFastDpCtl({ t: 'hello', mac: '02:00:00:00:00:aa', vtep: '10.0.0.1', underlay: '192.168.1.2', port: 6784, hb: 6785, token: Buffer.alloc(8, 1) }),
  encodeFastDpCtl({ t: 'hear', on: true }),
  encodeFastDpCtl({ t: 'off', why: 'kernel lacks ESP' }),
], () => [{ v: 1, o: 'fastdp', t: 'hello', mac: '02:00:00:00:00:aa', vtep: '10.0.0.1', underlay: '192.168.1.2', port: 6784, hb: 6785, token: Buffer.alloc(8, 1) }, { v: 1, o: 'fastdp', t: 'hear', on: true }], decodeFastDpCtl);

// ---- the sleeve's control messages (over the mesh connection) ---------------------------------

let sleeveRig: { sleeve: Sleeve; handle: SleeveHandle } | undefined;

function newSleeveRig(): { sleeve: Sleeve; handle: SleeveHandle } {
  const clock = new FakeClock();
  const log = silentLogger();
  const pt = new SleevePrefixes(P1, clock, log);
  pt.setLocal(['10.32.1.0/24']);
  const routes = Object.assign(new EventEmitter(), { name: P1, unicastNextHop: () => undefined });
  const sleeve = new Sleeve({
    name: P1, clock, log, crypto, routes, prefixes: pt, tun: new ChannelTun(), udp: new ChannelNet().bind('198.18.0.1', 6783),
    host: { tunUp: async () => {}, setRoutes: () => {} }, boxes: 'engine',
  });
  const f = (name: string): Features => ({ ...features(name), overlays: ['sleeve'], overlayParams: { sleeve: { port: 6783 } } });
  const conn: MeshConnection = {
    id: 'fuzz', outbound: true, remoteAddr: '198.18.0.2:41000', localAddr: '198.18.0.1:6783', encrypted: true, sessionKey: Buffer.alloc(32, 5), dataKey: Buffer.alloc(32, 5),
    watchDataKey: () => () => {}, local: f(P1), remote: f(P2), send: () => {}, close: () => {}, onMessage: () => {}, onClose: () => {},
  };
  return { sleeve, handle: sleeve.attach(conn, { established: () => {}, failed: () => {} }) };
}

const SLEEVE_CTL = (): unknown[] => [
  { v: 1, o: 'sleeve', t: 'hello', idx: 0x10002, port: 6783 }, { v: 1, o: 'sleeve', t: 'hear', on: true }, { v: 1, o: 'fastdp', t: 'hear', on: false },
];
const sleeveCtl: Target = {
  name: 'overlay-sleeve-control',
  seeds: () => SLEEVE_CTL().map((o) => encodeMsg(o)),
  structured: msgpackStructured(SLEEVE_CTL),
  run(b) {
    sleeveRig ??= newSleeveRig();
    sleeveRig.handle.onMessage(b);
  },
  expected: isProto,
  async close() {
    const r = sleeveRig;
    sleeveRig = undefined;
    await r?.sleeve.close();
  },
};

export const MESH_TARGETS: Target[] = [hello, keyx, featuresTarget, frames, handshake, topology, meshGossip, ipamRing, ipamGossip, ipamUnicast, ipamRecords, ipamPaxos, dnsGossip, prefixes, links, fastdpCtl, sleeveCtl];
