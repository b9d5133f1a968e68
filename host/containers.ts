// Reading back what attach made, from the kernel alone: the host ends of container veths (vethwe*), the
// /32 routes weave owns on them (proto 180), the namespaces at their other ends and the addresses there.
// Used when the endpoints state file is lost or damaged: the kernel is the truth about which containers
// are attached and which addresses they have. Nothing here changes kernel state.
import * as fs from 'fs';
import * as path from 'path';
import { canonicalPrefix } from './cidr';
import { HostCtx, ipJson } from './ip';
import { listMasquerade } from './expose';
import { CONTAINER_IFNAME, hostIfName, linkAddrs4, type LinkJson } from './links';
import { NETNS_RUN_DIR, netnsKeyOfStat } from './netns';
import { WEAVE_RT_PROTO } from './routes';

/** Host-side veth names attach makes: "vethwe" + 9 hex digits. */
export const HOST_VETH_RE = /^vethwe[0-9a-f]{9}$/;

export interface HostVeth {
  ifname: string;
  ifindex: number;
  /** destinations of our routes through it ("10.32.0.5/32") */
  routes: string[];
}

/** The host ends of weave container veths in ctx, with the routes of ours through each. */
export async function listHostVeths(ctx: HostCtx): Promise<HostVeth[]> {
  const links = await ipJson<Array<LinkJson & { linkinfo?: { info_kind?: string } }>>(ctx, ['-details', 'link', 'show']);
  const routes = await ipJson<Array<{ dst?: string; dev?: string }>>(ctx, ['route', 'show', 'proto', String(WEAVE_RT_PROTO)]);
  const out: HostVeth[] = [];
  for (const l of links) {
    if (!HOST_VETH_RE.test(l.ifname) || (l.linkinfo?.info_kind !== undefined && l.linkinfo.info_kind !== 'veth')) continue;
    const rs: string[] = [];
    for (const r of routes) {
      if (r.dev !== l.ifname || !r.dst) continue;
      const c = canonicalPrefix(r.dst.includes('/') ? r.dst : `${r.dst}/32`);
      if (c) rs.push(c);
    }
    out.push({ ifname: l.ifname, ifindex: l.ifindex, routes: rs.sort() });
  }
  return out.sort((a, b) => (a.ifname < b.ifname ? -1 : 1));
}

export interface ReachableNetns {
  /** "dev:ino" */
  key: string;
  /** a path that enters it: an `ip netns` file, another nsfs bind mount, or /proc/PID/ns/net */
  path: string;
  /** its `ip netns` name, if it has one */
  name?: string;
}

/**
 * Every network namespace this process can reach by a path, one entry per namespace, preferring an
 * `ip netns` name, then another bind mount, then a process's /proc/PID/ns/net. `skipKey`: our own.
 */
export function reachableNetns(skipKey?: string, procDir = '/proc'): ReachableNetns[] {
  const byKey = new Map<string, ReachableNetns>();
  const add = (p: string, name?: string): void => {
    let key: string;
    try {
      key = netnsKeyOfStat(fs.statSync(p));
    } catch {
      return; // gone while we looked, or not ours to see
    }
    if (key === skipKey || byKey.has(key)) return;
    byKey.set(key, name ? { key, path: p, name } : { key, path: p });
  };
  try {
    for (const n of fs.readdirSync(NETNS_RUN_DIR).sort()) add(path.join(NETNS_RUN_DIR, n), n);
  } catch {
    // no named namespaces
  }
  for (const m of nsfsMounts(procDir)) add(m);
  let pids: string[] = [];
  try {
    pids = fs.readdirSync(procDir).filter((p) => /^\d+$/.test(p));
  } catch {
    // no /proc: only the named ones
  }
  for (const pid of pids.sort((a, b) => Number(a) - Number(b))) add(path.join(procDir, pid, 'ns', 'net'));
  return [...byKey.values()];
}

/** Mount points of nsfs bind mounts (docker, CNI runtimes keep namespaces there). */
function nsfsMounts(procDir: string): string[] {
  let text: string;
  try {
    text = fs.readFileSync(path.join(procDir, 'self', 'mountinfo'), 'utf8');
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0 || !line.slice(sep + 3).startsWith('nsfs ')) continue;
    const mp = line.slice(0, sep).split(' ')[4];
    if (mp) out.push(mp.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}

export interface FoundContainer {
  ns: ReachableNetns;
  /** container-side interface name */
  ifname: string;
  mac: string;
  /** IPv4 addresses on it as "a.b.c.d/len" */
  addrs: string[];
}

/**
 * For each host veth, the namespace at its other end: the namespace whose key names the veth (attach
 * derives the name from the key) and whose ethwe is the veth's peer (its link index is the host end's
 * ifindex). Veths whose namespace is not reachable by any path are missing from the result.
 */
export async function findContainers(veths: HostVeth[], namespaces: ReachableNetns[]): Promise<Map<string, FoundContainer>> {
  const byIf = new Map<string, ReachableNetns>();
  for (const ns of namespaces) byIf.set(hostIfName(ns.key), ns);
  const out = new Map<string, FoundContainer>();
  for (const v of veths) {
    const ns = byIf.get(v.ifname);
    if (!ns) continue;
    const ctx: HostCtx = { netns: ns.name ?? ns.path };
    let link: (LinkJson & { link_index?: number }) | undefined;
    try {
      link = (await ipJson<Array<LinkJson & { link_index?: number }>>(ctx, ['link', 'show', 'dev', CONTAINER_IFNAME]))[0];
    } catch {
      continue; // no ethwe there
    }
    if (!link || (link.link_index !== undefined && link.link_index !== v.ifindex)) continue;
    out.set(v.ifname, { ns, ifname: CONTAINER_IFNAME, mac: link.address ?? '', addrs: await linkAddrs4(ctx, CONTAINER_IFNAME) });
  }
  return out;
}

/** Source networks our masquerade chain covers ("10.32.0.0/12"), read from its nft rules. */
export async function masqueradedNets(ctx: HostCtx): Promise<string[]> {
  const out: string[] = [];
  for (const rule of (await listMasquerade(ctx)) as Array<{ expr?: Array<Record<string, any>> }>) {
    for (const e of rule.expr ?? []) {
      const m = e.match;
      if (!m || m.op !== '==' || m.left?.payload?.field !== 'saddr') continue;
      const r = m.right;
      const c = typeof r === 'string' ? canonicalPrefix(r.includes('/') ? r : `${r}/32`) : r?.prefix ? canonicalPrefix(`${r.prefix.addr}/${r.prefix.len}`) : undefined;
      if (c) out.push(c);
    }
  }
  return [...new Set(out)].sort();
}
