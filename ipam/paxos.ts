// One-time consensus that seeds the ring: single-decree Paxos carried by gossip, as Weave Net does.
// Every participant keeps a view of every participant's acceptor state; each node edits only its
// own record (with a version), so views merge like the ring (highest version per node wins) and
// ride the normal gossip. The decided value is the list of participants the winning proposer knew
// when it chose: the ring is split evenly among them. A quorum (majority of the expected peer
// count) is needed, so two halves of a partitioned new mesh cannot both seed a ring.
import { ProtocolError } from '../lib/errors';
import { isPeerName, type PeerName } from '../mesh/peer';

export interface ProposalId {
  round: number;
  proposer: PeerName | '';
}

export interface PaxosNode {
  nickname: string;
  ver: number;
  promised: ProposalId;
  accepted: ProposalId;
  value: Array<[PeerName, string]> | null;
}

const ZERO: ProposalId = { round: 0, proposer: '' };

export function cmpId(a: ProposalId, b: ProposalId): number {
  if (a.round !== b.round) return a.round - b.round;
  return a.proposer < b.proposer ? -1 : a.proposer > b.proposer ? 1 : 0;
}

export class Paxos {
  readonly nodes = new Map<PeerName, PaxosNode>();

  constructor(readonly us: PeerName, nickname: string, readonly quorum: number) {
    this.nodes.set(us, { nickname, ver: 0, promised: ZERO, accepted: ZERO, value: null });
  }

  /**
   * Our acceptor state from before a restart: what we promised and accepted stays binding (a
   * fresh record would let us promise or accept a lower proposal than one we already voted for).
   */
  restore(n: PaxosNode): void {
    this.nodes.set(this.us, { ...this.self(), ver: n.ver, promised: { ...n.promised }, accepted: { ...n.accepted }, value: n.value && n.value.map((p) => [p[0], p[1]]) });
  }

  /** Our own record (persisted by the allocator before it is gossiped). */
  selfState(): PaxosNode {
    return this.self();
  }

  private self(): PaxosNode {
    return this.nodes.get(this.us)!;
  }

  /** Becomes a proposer with a round above any seen. */
  propose(): void {
    let max = 0;
    for (const n of this.nodes.values()) max = Math.max(max, n.promised.round, n.accepted.round);
    const s = this.self();
    s.promised = { round: max + 1, proposer: this.us };
    s.ver++;
  }

  isProposing(): boolean {
    return this.self().promised.proposer === this.us;
  }

  /** Merges another view; returns true when anything changed. */
  merge(other: Map<PeerName, PaxosNode>): boolean {
    let changed = false;
    for (const [name, n] of other) {
      const mine = this.nodes.get(name);
      if (name === this.us) continue; // only we write our record; an echo can never be newer
      if (!mine || n.ver > mine.ver) {
        this.nodes.set(name, { ...n, promised: { ...n.promised }, accepted: { ...n.accepted }, value: n.value && n.value.map((p) => [p[0], p[1]]) });
        changed = true;
      }
    }
    return changed;
  }

  /** Applies the acceptor and proposer rules to our own record. Returns true when it changed. */
  think(): boolean {
    const s = this.self();
    let changed = false;
    // Acceptor: promise the highest proposal any proposer is making.
    let best = s.promised;
    for (const [name, n] of this.nodes) if (n.promised.proposer === name && cmpId(n.promised, best) > 0) best = n.promised;
    if (cmpId(best, s.promised) > 0) {
      s.promised = { ...best };
      changed = true;
    }
    // Acceptor: accept the value our promised proposer has accepted for that proposal.
    const p = s.promised.proposer ? this.nodes.get(s.promised.proposer) : undefined;
    if (p && s.promised.proposer !== this.us && p.value && cmpId(p.accepted, s.promised) === 0 && cmpId(s.accepted, s.promised) < 0) {
      s.accepted = { ...s.promised };
      s.value = p.value.map((x) => [x[0], x[1]]);
      changed = true;
    }
    // Proposer: with a quorum of promises, choose (the highest value already accepted, else ours).
    if (s.promised.proposer === this.us && cmpId(s.accepted, s.promised) < 0) {
      let promises = 0;
      let highest: PaxosNode | null = null;
      for (const n of this.nodes.values()) {
        if (cmpId(n.promised, s.promised) !== 0) continue;
        promises++;
        if (n.value && (!highest || cmpId(n.accepted, highest.accepted) > 0)) highest = n;
      }
      if (promises >= this.quorum) {
        s.value = highest
          ? highest.value!.map((x) => [x[0], x[1]])
          : [...this.nodes].map(([name, n]) => [name, n.nickname] as [PeerName, string]).sort((a, b) => (a[0] < b[0] ? -1 : 1));
        s.accepted = { ...s.promised };
        changed = true;
      }
    }
    if (changed) s.ver++;
    return changed;
  }

  /** The decided value: a quorum accepted the same proposal. */
  decision(): Array<[PeerName, string]> | null {
    const counts = new Map<string, { n: number; node: PaxosNode }>();
    for (const n of this.nodes.values()) {
      if (!n.value || n.accepted.round === 0) continue;
      const k = `${n.accepted.round}/${n.accepted.proposer}`;
      const c = counts.get(k);
      if (c) c.n++;
      else counts.set(k, { n: 1, node: n });
    }
    for (const c of counts.values()) if (c.n >= this.quorum) return c.node.value!.map((x) => [x[0], x[1]]);
    return null;
  }

  /** For status: how many participants promised our current proposal / accepted anything. */
  progress(): { participants: number; quorum: number; promisedToHighest: number } {
    let best = ZERO;
    for (const n of this.nodes.values()) if (cmpId(n.promised, best) > 0) best = n.promised;
    let k = 0;
    for (const n of this.nodes.values()) if (cmpId(n.promised, best) === 0) k++;
    return { participants: this.nodes.size, quorum: this.quorum, promisedToHighest: k };
  }

  /** Changes whenever the consensus moves: a higher proposal, another promise or acceptance of it, a new participant. */
  progressKey(): string {
    let best = ZERO;
    for (const n of this.nodes.values()) if (cmpId(n.promised, best) > 0) best = n.promised;
    let promised = 0;
    let accepted = 0;
    for (const n of this.nodes.values()) {
      if (cmpId(n.promised, best) === 0) promised++;
      if (cmpId(n.accepted, best) === 0) accepted++;
    }
    return `${best.round}/${best.proposer}/${promised}/${accepted}/${this.nodes.size}`;
  }

  toWire(): unknown[] {
    const out: unknown[] = [];
    for (const [name, n] of this.nodes) {
      const val: unknown[] | null = n.value ? n.value.flat() : null;
      out.push(name, n.nickname, n.ver, n.promised.round, n.promised.proposer, n.accepted.round, n.accepted.proposer, val);
    }
    return out;
  }

  static fromWire(raw: unknown): Map<PeerName, PaxosNode> {
    const bad = (why: string): never => {
      throw new ProtocolError(`ipam paxos: ${why}`);
    };
    if (!Array.isArray(raw) || raw.length % 8 !== 0 || raw.length > 8 * 65536) return bad('must be a flat list of 8-tuples');
    const m = new Map<PeerName, PaxosNode>();
    const round = (x: unknown): number => (typeof x === 'number' && Number.isSafeInteger(x) && x >= 0 ? x : bad('invalid round'));
    const proposer = (x: unknown): PeerName | '' => (x === '' || (typeof x === 'string' && isPeerName(x)) ? (x as PeerName | '') : bad('invalid proposer'));
    for (let k = 0; k < raw.length; k += 8) {
      const name = raw[k];
      if (typeof name !== 'string' || !isPeerName(name)) return bad('invalid node name');
      if (m.has(name)) return bad('duplicate node');
      const nickname = raw[k + 1];
      if (typeof nickname !== 'string' || nickname.length > 255) return bad('invalid nickname');
      const ver = raw[k + 2];
      if (typeof ver !== 'number' || !Number.isSafeInteger(ver) || ver < 0) return bad('invalid version');
      const promised = { round: round(raw[k + 3]), proposer: proposer(raw[k + 4]) };
      const accepted = { round: round(raw[k + 5]), proposer: proposer(raw[k + 6]) };
      const v = raw[k + 7];
      let value: Array<[PeerName, string]> | null = null;
      if (v !== null) {
        if (!Array.isArray(v) || v.length === 0 || v.length % 2 !== 0 || v.length > 2 * 65536) return bad('invalid value');
        value = [];
        for (let i = 0; i < v.length; i += 2) {
          const pn = v[i];
          const nick = v[i + 1];
          if (typeof pn !== 'string' || !isPeerName(pn) || typeof nick !== 'string' || nick.length > 255) return bad('invalid value entry');
          if (i > 0 && !(value[value.length - 1][0] < pn)) return bad('value must be sorted and unique');
          value.push([pn, nick]);
        }
      }
      m.set(name, { nickname, ver, promised, accepted, value });
    }
    return m;
  }
}
