// Kernel IPsec for fastdp: ESP transport-mode states and policies that cover exactly the VXLAN flow
// (UDP to the VXLAN port) between two underlay addresses.
//
// Per peer, in the router's namespace:
//   state  src L dst R spi out.spi  (we encrypt with it)     sel udp dport VX
//   state  src R dst L spi in.spi   (we decrypt with it)     sel udp dport VX
//   policy src L/32 dst R/32 udp dport VX dir out  -> tmpl esp transport reqid Q
//   policy src R/32 dst L/32 udp dport VX dir in   -> tmpl esp transport reqid Q
// The out policy makes the kernel refuse to send plain VXLAN to R (no SA: the packet is dropped, never sent
// in clear); the in policy makes it drop plain VXLAN from R. "Ours" is recognised by the reqid Q: nothing
// else on the host is touched, so `removeAll` (weave reset) and rekeys leave foreign IPsec alone.
//
// Key material travels to ip(8) only on stdin (`ip -batch -`), never in argv (visible in ps), and errors
// are re-raised without the batch text so keys cannot reach a log.
import { HostCtx, HostError, ip, ipBatch } from '../host/ip';
import { WeaveError, UsageError, errMsg } from '../lib/errors';
import type { Logger } from '../lib/log';
import { isAddrText } from '../lib/addr';
import { VXLAN_PORT } from '../lib/ports';
import { ESP_AEAD_ALG, ESP_ICV_BITS, EspKeys, EspSa, keyHex, spiHex } from './keys';
import { randomBytes } from 'crypto';

/** 'weav': the reqid that marks our states and policy templates. */
export const DEFAULT_REQID = 0x77656176;
/** Reqid of the throwaway state supportsEsp adds and deletes. */
export const PROBE_REQID = 0x77656170;
/**
 * Bytes ESP adds to each VXLAN datagram (transport mode, rfc4106(gcm(aes))): SPI + sequence 8, IV 8,
 * ICV 16, pad length + next header 2, up to 3 bytes padding to 4-byte alignment. The VXLAN device's MTU
 * must leave room for it, or full-size packets (and fastdp's DF heartbeats) exceed the path MTU.
 */
export const ESP_OVERHEAD = 37;
/** With ESN (64-bit sequence numbers) a 10 Gbit/s flow never wraps, so an SA needs no rekey timer. */
export const REPLAY_WINDOW = 256;

export class XfrmError extends WeaveError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super('EXFRM', message, context);
    this.name = 'XfrmError';
  }
}

export interface XfrmOptions {
  ctx: HostCtx;
  log: Logger;
  /** UDP destination port of the VXLAN device (router port + 1) */
  port?: number;
  reqid?: number;
}

export interface PeerSas {
  /** our underlay address (the VXLAN device's `local`) */
  local: string;
  /** the peer's underlay address (its FDB `dst`) */
  remote: string;
  keys: EspKeys;
  /**
   * more inbound SAs to hold next to keys.in: during a password rotation's re-key the old and the new
   * receive key overlap (router/fastdp.ts), so the peer may seal under either
   */
  extraIn?: EspSa[];
}

/** One xfrm state as `ip xfrm state` prints it. keyHex is only filled for AEAD states. */
export interface XfrmState {
  src: string;
  dst: string;
  proto: string;
  spi: number;
  reqid: number;
  mode: string;
  esn: boolean;
  aead?: { alg: string; keyHex: string; icvBits: number };
  sel?: { src: string; dst: string; proto?: string; dport?: number };
}

export interface XfrmPolicy {
  src: string;
  dst: string;
  proto?: string;
  dport?: number;
  dir: string;
  tmpl?: { src: string; dst: string; proto: string; reqid: number; mode: string };
}

/** Ours, without key material. */
export interface XfrmList {
  states: Array<{ src: string; dst: string; spi: number; dport?: number }>;
  policies: Array<{ src: string; dst: string; dir: string; dport?: number }>;
}

export interface InstallResult { added: number; removed: number; unchanged: number }

export interface XfrmStats { installs: number; removals: number; errors: number }

// ---------------------------------------------------------------------------------------------- parsing

function blocks(text: string): string[][] {
  const out: string[][] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (!/^\s/.test(line)) out.push([line.trim()]);
    else if (out.length > 0) out[out.length - 1].push(line.trim());
  }
  return out;
}

function num(s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const n = Number(s);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

function stripLen(addr: string): string {
  return addr.replace(/\/(32|128)$/, '');
}

/** Parses `ip xfrm state [list ...]` output (iproute2 text; ip xfrm has no -json). */
export function parseStates(text: string): XfrmState[] {
  const out: XfrmState[] = [];
  for (const b of blocks(text)) {
    const head = /^src (\S+) dst (\S+)$/.exec(b[0]);
    if (!head) continue;
    const st: Partial<XfrmState> = { src: head[1], dst: head[2], esn: false };
    for (const l of b.slice(1)) {
      let m: RegExpExecArray | null;
      if ((m = /^proto (\S+) spi (0x[0-9a-f]+) reqid (\d+) mode (\S+)/.exec(l))) {
        st.proto = m[1]; st.spi = parseInt(m[2], 16); st.reqid = Number(m[3]); st.mode = m[4];
      } else if ((m = /^aead (\S+) (0x[0-9a-f]+) (\d+)$/.exec(l))) {
        st.aead = { alg: m[1], keyHex: m[2], icvBits: Number(m[3]) };
      } else if (/^replay-window \d+.*\bflag\b.*\besn\b/.test(l)) {
        st.esn = true;
      } else if ((m = /^sel src (\S+) dst (\S+)(?: proto (\S+))?(?:.* dport (\d+))?/.exec(l))) {
        st.sel = { src: stripLen(m[1]), dst: stripLen(m[2]), proto: m[3], dport: num(m[4]) };
      }
    }
    if (st.proto !== undefined && st.spi !== undefined) out.push(st as XfrmState);
  }
  return out;
}

/** Parses `ip xfrm policy` output; socket policies (no selector head) are skipped. */
export function parsePolicies(text: string): XfrmPolicy[] {
  const out: XfrmPolicy[] = [];
  for (const b of blocks(text)) {
    const head = /^src (\S+) dst (\S+)(?: proto (\S+))?(?:.* dport (\d+))?/.exec(b[0]);
    if (!head) continue;
    const p: Partial<XfrmPolicy> = { src: stripLen(head[1]), dst: stripLen(head[2]), proto: head[3], dport: num(head[4]) };
    for (let i = 1; i < b.length; i++) {
      const l = b[i];
      let m: RegExpExecArray | null;
      if ((m = /^dir (\S+)/.exec(l))) p.dir = m[1];
      else if (p.tmpl === undefined && (m = /^tmpl src (\S+) dst (\S+)$/.exec(l))) {
        const t = /^proto (\S+) (?:spi \S+ )?reqid (\d+) mode (\S+)/.exec(b[i + 1] ?? '');
        if (t) p.tmpl = { src: m[1], dst: m[2], proto: t[1], reqid: Number(t[2]), mode: t[3] };
      }
    }
    if (p.dir !== undefined) out.push(p as XfrmPolicy);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- commands

function stateAddLine(src: string, dst: string, spi: number, key: string, reqid: number, port: number): string {
  return `xfrm state add src ${src} dst ${dst} proto esp spi ${spiHex(spi)} reqid ${reqid} mode transport`
    + ` replay-window ${REPLAY_WINDOW} flag esn aead ${ESP_AEAD_ALG} ${key} ${ESP_ICV_BITS}`
    + ` sel src ${src} dst ${dst} proto udp dport ${port}`;
}

function stateDelLine(s: { src: string; dst: string; spi: number }): string {
  return `xfrm state delete src ${s.src} dst ${s.dst} proto esp spi ${spiHex(s.spi)}`;
}

function policyUpdateLine(src: string, dst: string, dir: 'in' | 'out', reqid: number, port: number): string {
  return `xfrm policy update src ${src}/32 dst ${dst}/32 proto udp dport ${port} dir ${dir}`
    + ` tmpl src ${src} dst ${dst} proto esp reqid ${reqid} mode transport`;
}

function policyDelLine(p: { src: string; dst: string; dir: string; dport?: number; proto?: string }): string {
  const sel = p.proto ? ` proto ${p.proto}${p.dport !== undefined ? ` dport ${p.dport}` : ''}` : '';
  return `xfrm policy delete src ${p.src}/32 dst ${p.dst}/32${sel} dir ${p.dir}`;
}

/** ip's batch stderr without its "Command failed -:N" bookkeeping lines. */
function kernelWords(e: unknown): string {
  const s = e instanceof HostError ? e.stderr : errMsg(e);
  return s.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !/^Command failed/.test(l)).join('; ') || errMsg(e);
}

/** ipBatch whose failure carries ip's words but never the batch text (it holds keys). */
async function batchRedacted(ctx: HostCtx, what: string, lines: string[], force = false): Promise<void> {
  try {
    await ipBatch(ctx, lines, { force });
  } catch (e) {
    throw new XfrmError(`${what}: ${kernelWords(e)}`, { netns: ctx.netns, lines: lines.length });
  }
}

function checkAddr(what: string, a: string): void {
  // IPv4 only: the underlay of weave.ts is IPv4, and ip prints IPv6 in a canonical form we would
  // have to reproduce to recognise our own entries.
  if (!isAddrText(a)) throw new UsageError(`${what} "${a}" is not an IPv4 address`, { what, addr: a });
}

// ---------------------------------------------------------------------------------------------- manager

export class XfrmManager {
  private readonly ctx: HostCtx;
  private readonly log: Logger;
  readonly port: number;
  readonly reqid: number;
  private readonly counters: XfrmStats = { installs: 0, removals: 0, errors: 0 };

  constructor(opts: XfrmOptions) {
    this.ctx = opts.ctx;
    this.log = opts.log.child({ component: 'ipsec' });
    this.port = opts.port ?? VXLAN_PORT;
    this.reqid = opts.reqid ?? DEFAULT_REQID;
    if (!Number.isInteger(this.port) || this.port < 1 || this.port > 65535) throw new UsageError(`bad VXLAN port ${this.port}`);
    if (!Number.isInteger(this.reqid) || this.reqid < 1 || this.reqid > 0xffffffff) throw new UsageError(`bad reqid ${this.reqid}`);
  }

  stats(): XfrmStats { return { ...this.counters }; }

  private async ours(): Promise<{ states: XfrmState[]; policies: XfrmPolicy[] }> {
    const [st, po] = await Promise.all([
      ip(this.ctx, ['xfrm', 'state', 'list', 'reqid', String(this.reqid)]),
      ip(this.ctx, ['xfrm', 'policy', 'list']),
    ]);
    return {
      states: parseStates(st).filter((s) => s.reqid === this.reqid && s.proto === 'esp'),
      policies: parsePolicies(po).filter((p) => p.tmpl?.reqid === this.reqid && p.tmpl.proto === 'esp'),
    };
  }

  /** Ours (by reqid), without keys. */
  async list(): Promise<XfrmList> {
    const o = await this.ours();
    return {
      states: o.states.map((s) => ({ src: s.src, dst: s.dst, spi: s.spi, dport: s.sel?.dport })),
      policies: o.policies.map((p) => ({ src: p.src, dst: p.dst, dir: p.dir, dport: p.dport })),
    };
  }

  /**
   * Makes the kernel hold exactly this peer's two SAs and two policies. Idempotent: what already matches
   * is left alone. A rekey (new SPIs) adds the new states before deleting the old ones, so the kernel
   * always has an SA to use; the policies name the reqid, not the SPI, and stay.
   */
  async install(p: PeerSas): Promise<InstallResult> {
    checkAddr('local underlay address', p.local);
    checkAddr('remote underlay address', p.remote);
    if (p.local === p.remote) throw new UsageError(`local and remote underlay address are both ${p.local}`);
    const { states, policies } = await this.ours();
    const { local: L, remote: R } = p;
    const want = [
      { src: L, dst: R, spi: p.keys.out.spi, key: keyHex(p.keys.out) },
      { src: R, dst: L, spi: p.keys.in.spi, key: keyHex(p.keys.in) },
      ...(p.extraIn ?? []).filter((sa) => sa.spi !== p.keys.in.spi).map((sa) => ({ src: R, dst: L, spi: sa.spi, key: keyHex(sa) })),
    ];
    const pairStates = states.filter((s) => (s.src === L && s.dst === R) || (s.src === R && s.dst === L));
    const first: string[] = []; // deletes that must precede an add of the same (dst, spi)
    const adds: string[] = [];
    const after: string[] = []; // stale states: removed once the new ones are in
    let unchanged = 0;
    const kept = new Set<XfrmState>();
    for (const w of want) {
      const same = pairStates.find((s) => s.src === w.src && s.dst === w.dst && s.spi === w.spi);
      const matches = same !== undefined && same.mode === 'transport' && same.esn
        && same.aead?.alg === ESP_AEAD_ALG && same.aead.keyHex === w.key && same.aead.icvBits === ESP_ICV_BITS
        && same.sel?.proto === 'udp' && same.sel.dport === this.port && same.sel.src === w.src && same.sel.dst === w.dst;
      if (matches) { unchanged++; kept.add(same); continue; }
      if (same) { first.push(stateDelLine(same)); kept.add(same); }
      adds.push(stateAddLine(w.src, w.dst, w.spi, w.key, this.reqid, this.port));
    }
    for (const s of pairStates) if (!kept.has(s)) after.push(stateDelLine(s));

    const wantPol = [{ src: L, dst: R, dir: 'out' as const }, { src: R, dst: L, dir: 'in' as const }];
    const pairPols = policies.filter((x) => (x.src === L && x.dst === R) || (x.src === R && x.dst === L));
    const keptPol = new Set<XfrmPolicy>();
    for (const w of wantPol) {
      const have = pairPols.find((x) => x.src === w.src && x.dst === w.dst && x.dir === w.dir && x.proto === 'udp' && x.dport === this.port);
      if (have && have.tmpl?.src === w.src && have.tmpl.dst === w.dst && have.tmpl.mode === 'transport') { unchanged++; keptPol.add(have); continue; }
      if (have) keptPol.add(have); // update replaces it in place
      adds.push(policyUpdateLine(w.src, w.dst, w.dir, this.reqid, this.port));
    }
    for (const x of pairPols) if (!keptPol.has(x)) after.push(policyDelLine(x));

    const lines = [...first, ...adds, ...after];
    if (lines.length === 0) return { added: 0, removed: 0, unchanged };
    try {
      await batchRedacted(this.ctx, `installing ESP for ${L} <-> ${R}`, lines);
    } catch (e) {
      this.counters.errors++;
      this.log.error({ local: L, remote: R, err: errMsg(e) }, 'installing ESP states/policies failed');
      throw e;
    }
    this.counters.installs++;
    const res = { added: adds.length, removed: first.length + after.length, unchanged };
    this.log.info({ local: L, remote: R, spiOut: spiHex(p.keys.out.spi), spiIn: spiHex(p.keys.in.spi), ...res }, 'ESP installed');
    return res;
  }

  /** Removes this peer's states and policies (any SPI, any port). Returns how many entries went. */
  async removePeer(local: string, remote: string): Promise<number> {
    checkAddr('local underlay address', local);
    checkAddr('remote underlay address', remote);
    const pair = (a: string, b: string) => (a === local && b === remote) || (a === remote && b === local);
    return this.remove(`removing ESP for ${local} <-> ${remote}`, pair);
  }

  /** Removes every state and policy of ours, and nothing else (weave reset, shutdown). */
  async removeAll(): Promise<number> {
    return this.remove('removing all weave ESP states/policies', () => true);
  }

  private async remove(what: string, pick: (src: string, dst: string) => boolean): Promise<number> {
    const { states, policies } = await this.ours();
    const lines = [
      // policies first: with the states gone but a policy left, packets would be dropped, not sent
      ...policies.filter((p) => pick(p.src, p.dst)).map(policyDelLine),
      ...states.filter((s) => pick(s.src, s.dst)).map(stateDelLine),
    ];
    if (lines.length === 0) return 0;
    try {
      // -force: one entry that vanished meanwhile must not keep the others in place
      await batchRedacted(this.ctx, what, lines, true);
    } catch (e) {
      const left = await this.ours();
      const remaining = left.states.filter((s) => pick(s.src, s.dst)).length + left.policies.filter((p) => pick(p.src, p.dst)).length;
      if (remaining > 0) {
        this.counters.errors++;
        this.log.error({ err: errMsg(e), remaining }, `${what} failed`);
        throw e;
      }
      this.log.debug({ err: errMsg(e) }, `${what}: some entries were already gone`);
    }
    this.counters.removals++;
    this.log.info({ removed: lines.length }, what);
    return lines.length;
  }
}

// ---------------------------------------------------------------------------------------------- detection

export interface EspSupport { ok: boolean; reason?: string }

/**
 * Whether the kernel of ctx's namespace can do what XfrmManager installs: it adds, then deletes, a
 * throwaway ESP state with the same AEAD, ICV and ESN settings between two TEST-NET addresses. Module
 * autoloading makes the first try load esp4/gcm where they exist; a kernel without them fails the add.
 */
export async function supportsEsp(ctx: HostCtx, log?: Logger): Promise<EspSupport> {
  const src = '192.0.2.1';
  const dst = '192.0.2.2';
  const spi = 0x100 + (randomBytes(4).readUInt32BE(0) % 0xffff0000);
  const key = '0x' + randomBytes(20).toString('hex');
  const add = `xfrm state add src ${src} dst ${dst} proto esp spi ${spiHex(spi)} reqid ${PROBE_REQID} mode transport`
    + ` replay-window ${REPLAY_WINDOW} flag esn aead ${ESP_AEAD_ALG} <key> ${ESP_ICV_BITS}`;
  try {
    await ipBatch(ctx, [add.replace('<key>', key)]);
  } catch (e) {
    const reason = `kernel lacks ESP (ip ${add} failed: ${kernelWords(e)})`;
    log?.info({ netns: ctx.netns, reason }, 'kernel IPsec unavailable');
    return { ok: false, reason };
  }
  try {
    await ipBatch(ctx, [stateDelLine({ src, dst, spi })]);
  } catch (e) {
    // Supported all the same; the leftover is inert (no policy uses it) but say so.
    log?.warn({ netns: ctx.netns, spi: spiHex(spi), err: kernelWords(e) }, 'could not delete the ESP probe state');
  }
  return { ok: true };
}
