// Kernel state for weaveDNS: the DNS address on the host and the route to it inside containers.
//
// Containers reach their own host's DNS server at one fixed address (169.254.53.53 by default). The
// host carries it as a /32 on the expose bridge "weave", labelled "weave:dns" so expose/hide (which
// manage exactly their own addresses there) leave it alone; a container routes it on-link via ethwe
// and the host answers ARP for it (a local address, arp_ignore=0), as for the rest of the overlay.
import * as fs from 'fs';
import * as path from 'path';
import { EXPOSE_LINK, ensureExposeLinkLines, exposeLinkAddrs } from './expose';
import { HostCtx, HostError, ipBatch, ipJson } from './ip';

export const DNS_ADDR_LABEL = `${EXPOSE_LINK}:dns`;
/** Marks resolv.conf files we wrote, so we never overwrite or delete one somebody else made. */
export const RESOLV_MARKER = '# written by weave attach (weaveDNS)';
export const NETNS_ETC_DIR = '/etc/netns';

/** Whether `ip` is configured on any link of ctx's namespace other than our labelled DNS address. */
export async function addressElsewhere(ctx: HostCtx, ip: string): Promise<string | undefined> {
  const rows = await ipJson<Array<{ ifname: string; addr_info?: Array<{ family: string; local: string; label?: string }> }>>(ctx, ['addr', 'show']);
  for (const r of rows) {
    for (const a of r.addr_info ?? []) {
      if (a.family === 'inet' && a.local === ip && a.label !== DNS_ADDR_LABEL) return r.ifname;
    }
  }
  return undefined;
}

/**
 * Makes `ip` (or nothing, when null) the DNS address on the expose bridge, creating the bridge when
 * needed and deleting it when nothing at all is left on it. Idempotent.
 */
export async function syncDnsAddr(ctx: HostCtx, ip: string | null, mtu: number): Promise<void> {
  const cur = await exposeLinkAddrs(ctx);
  const ours = cur.foreign.filter((f) => f.label === DNS_ADDR_LABEL).map((f) => f.cidr);
  const want = ip === null ? [] : [`${ip}/32`];
  const del = ours.filter((c) => !want.includes(c));
  const add = want.filter((c) => !ours.includes(c));
  if (!del.length && !add.length) return;
  const lines: string[] = [];
  if (add.length) lines.push(...(await ensureExposeLinkLines(ctx, mtu)));
  for (const c of del) lines.push(`addr del ${c} dev ${EXPOSE_LINK}`);
  for (const c of add) lines.push(`addr add ${c} dev ${EXPOSE_LINK} noprefixroute label ${DNS_ADDR_LABEL}`);
  const left = cur.own.length + cur.foreign.length - del.length + add.length;
  if (left === 0 && (cur.own.length || cur.foreign.length)) lines.push(`link del ${EXPOSE_LINK}`);
  await ipBatch(ctx, lines);
}

/** Routes the DNS address on-link through the container's interface (replace: idempotent). */
export async function ensureContainerDnsRoute(ctx: HostCtx, ifname: string, ip: string): Promise<void> {
  await ipBatch(ctx, [`route replace ${ip}/32 dev ${ifname} scope link`]).catch((e: unknown) => {
    if (e instanceof HostError) throw new HostError(`cannot route the DNS address ${ip} via ${ifname} in the container: ${e.stderr}`, { command: e.command, stderr: e.stderr });
    throw e;
  });
}

/** The resolv.conf a container gets: our server, the weave domain as search, unqualified names tried there first. */
export function containerResolvConf(nameserver: string, domain: string): string {
  const search = domain.replace(/\.$/, '');
  return `${RESOLV_MARKER}\nnameserver ${nameserver}\nsearch ${search}\noptions ndots:1\n`;
}

/**
 * Writes /etc/netns/NAME/resolv.conf (what `ip netns exec NAME` bind-mounts over /etc/resolv.conf).
 * Returns false, writing nothing, when a file we did not write is already there.
 */
export function writeNetnsResolvConf(netnsName: string, text: string, etcDir = NETNS_ETC_DIR): boolean {
  const dir = path.join(etcDir, netnsName);
  const file = path.join(dir, 'resolv.conf');
  try {
    if (!fs.readFileSync(file, 'utf8').startsWith(RESOLV_MARKER)) return false;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  fs.mkdirSync(dir, { recursive: true });
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
  return true;
}

/** Removes the file if we wrote it (and its directory when that leaves it empty). True when removed. */
export function removeNetnsResolvConf(netnsName: string, etcDir = NETNS_ETC_DIR): boolean {
  const dir = path.join(etcDir, netnsName);
  const file = path.join(dir, 'resolv.conf');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
  if (!text.startsWith(RESOLV_MARKER)) return false;
  fs.rmSync(file, { force: true });
  try {
    fs.rmdirSync(dir);
  } catch (e) {
    // not empty: the user keeps other files there, so the directory stays
    if ((e as NodeJS.ErrnoException).code !== 'ENOTEMPTY' && (e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  return true;
}
