// Text views of the one report model (weave status ...). `weave report` prints the same object as JSON.
import type { MeshStatus, ConnectionStatus } from '../mesh/status';
import { describeRotation } from './password';

export interface RouterReport extends MeshStatus {
  port: number;
  crypto: string;
  dataDir: string;
  pid: number;
  startedAt: number;
}

export interface Report {
  version: string;
  router: RouterReport;
  /** per-subsystem sections added as they exist (sleeve, endpoints, ipam, dns, fastdp) */
  [section: string]: unknown;
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}

function label(k: string, v: string | number): string {
  return `${' '.repeat(Math.max(0, 15 - k.length))}${k}: ${v}`;
}

export function renderSummary(r: Report): string {
  const m = r.router;
  const est = m.connections.filter((c) => c.state === 'established' && !c.stalled).length;
  const peerConns = m.peers.reduce((n, p) => n + p.connections.filter((c) => c.established).length, 0);
  const lines = [
    label('Version', `${r.version} (weave.ts)`),
    '',
    label('Service', 'router'),
    label('Protocol', `weave ${m.protocolMinVersion}..${m.protocolMaxVersion}`),
    '',
    label('Name', `${m.name}(${m.nickname})`),
    label('Encryption', m.encryption ? 'enabled' : 'disabled'),
    ...(m.passwordRotation && m.passwordRotation.state === 'rotating' ? [label('Password', describeRotation(m.passwordRotation))] : []),
    label('PeerDiscovery', m.peerDiscovery ? 'enabled' : 'disabled'),
    label('Targets', m.targets.length),
    label('Connections', `${m.connections.length} (${est} established${stateCounts(m.connections)})`),
    label('Peers', `${m.peers.length} (with ${peerConns} established connections)`),
    label('TrustedSubnets', m.trustedSubnets.length ? m.trustedSubnets.join(',') : 'none'),
  ];
  for (const [k, v] of Object.entries(r)) {
    if (k === 'version' || k === 'router' || !v || typeof v !== 'object') continue;
    const s = (v as { summary?: Record<string, string | number> }).summary;
    if (!s) continue;
    lines.push('', label('Service', k));
    for (const [sk, sv] of Object.entries(s)) lines.push(label(sk, sv));
  }
  return lines.join('\n') + '\n';
}

/** The state a person sees: an established connection whose data does not flow is 'stalled'. */
function shownState(c: ConnectionStatus): string {
  return c.state === 'established' && c.stalled ? 'stalled' : c.state;
}

function stateCounts(cs: ConnectionStatus[]): string {
  const counts = new Map<string, number>();
  for (const c of cs) if (shownState(c) !== 'established') counts.set(shownState(c), (counts.get(shownState(c)) ?? 0) + 1);
  return [...counts].map(([s, n]) => `, ${n} ${s}`).join('');
}

export function renderConnection(c: ConnectionStatus, now = Date.now()): string {
  const dir = c.outbound ? '->' : '<-';
  const parts = [`${dir} ${pad(c.address, 21)}`, pad(shownState(c), 11)];
  if (c.state === 'established' || c.state === 'pending') {
    parts.push(c.encrypted ? 'encrypted  ' : c.trusted ? 'trusted    ' : 'unencrypted');
    parts.push(pad(c.overlay ?? 'none', 6));
  }
  if (c.peerName) parts.push(`${c.peerName}(${c.peerNickname ?? ''})`);
  if (c.mtu) parts.push(`mtu=${c.mtu}`);
  const info: string[] = [];
  if (c.info) info.push(c.info);
  if (c.overlayReason) info.push(`fastdp: ${c.overlayReason}`);
  if (c.nextRetry && c.state !== 'established') info.push(`retry in ${Math.max(0, Math.round((c.nextRetry - now) / 1000))}s`);
  if (info.length) parts.push(info.join(', '));
  return parts.join(' ').trimEnd();
}

export function renderConnections(r: Report): string {
  return r.router.connections.map((c) => renderConnection(c)).join('\n') + (r.router.connections.length ? '\n' : '');
}

export function renderPeers(r: Report): string {
  const out: string[] = [];
  for (const p of r.router.peers) {
    out.push(`${p.name}(${p.nickname})${p.reachable ? '' : ' unreachable!'}`);
    for (const c of p.connections) {
      out.push(`   ${c.outbound ? '->' : '<-'} ${pad(c.address, 21)} ${c.name}(${c.nickname}) ${c.established ? 'established' : 'pending'}`);
    }
  }
  return out.join('\n') + (out.length ? '\n' : '');
}

export function renderTargets(r: Report): string {
  return r.router.targets.map((t) => `${t}\n`).join('');
}
