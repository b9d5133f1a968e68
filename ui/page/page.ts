// The /ui page's script: plain DOM and SVG, no framework (compiled by tsc at build time with
// ui/page/tsconfig.json; served by the router as /ui/page.js). It opens one server-sent event stream
// (/ui/stream): a snapshot of the view, then deltas of the view's changed parts every second and the
// router's events as they happen; the browser's EventSource reconnects by itself when the router
// restarts. Every text that came from the network (nicknames, reasons, hostnames) is set with
// textContent, never parsed as HTML.
import type { UiEdge, UiEvent, UiFailing, UiIpam, UiPeer, UiView } from '../view';

const SVG = 'http://www.w3.org/2000/svg';
let view: UiView | null = null;
const seen = new Set<number>();

function $(id: string): HTMLElement {
  const e = document.getElementById(id);
  if (!e) throw new Error(`page element #${id} missing`);
  return e;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...kids: Array<Node | string>): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of kids) e.append(c);
  return e;
}

function svg(tag: string, attrs: Record<string, string | number> = {}, text?: string): SVGElement {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function rows(tableId: string, list: HTMLTableRowElement[], empty: string, cols: number): void {
  const body = $(tableId).querySelector('tbody')!;
  body.replaceChildren(...(list.length ? list : [el('tr', {}, el('td', { colspan: String(cols), class: 'muted' }, empty))]));
}

function td(text: string | number, cls = ''): HTMLTableCellElement {
  return el('td', cls ? { class: cls } : {}, String(text));
}

function label(p: { name: string; nickname?: string } | undefined, name: string): string {
  return p?.nickname ? `${p.nickname}` : name;
}

function rate(x: number | null, unit = ''): string {
  if (x === null) return '…';
  if (x >= 1e9) return `${(x / 1e9).toFixed(1)} G${unit}`;
  if (x >= 1e6) return `${(x / 1e6).toFixed(1)} M${unit}`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(1)} k${unit}`;
  return `${Math.round(x)}${unit ? ` ${unit}` : ''}`;
}

// ---- header ----------------------------------------------------------------------------------------

function renderHeader(v: UiView): void {
  $('title').textContent = `${v.self.nickname} (${v.self.name})`;
  document.title = `weave.ts: ${v.self.nickname}`;
  $('meta').textContent = `weave.ts ${v.self.version}, protocol ${v.self.protocol}, encryption ${v.self.encryption ? 'on' : 'off'}, updated ${new Date(v.time).toLocaleTimeString()}`;
}

// ---- topology --------------------------------------------------------------------------------------

function edgeClass(e: UiEdge): string {
  if (e.state === 'stalled' || e.silentMs) return 'stalled';
  if (!e.established && e.source !== 'local') return 'down';
  return e.overlay === 'fastdp' || e.overlay === 'sleeve' ? e.overlay : 'unknown';
}

function edgeText(e: UiEdge): string {
  if (e.source === 'topology') return e.established ? 'overlay known only to its ends' : 'not established';
  const parts = [e.overlay ?? 'no overlay yet', e.encryption];
  if (e.mtu) parts.push(`mtu ${e.mtu}`);
  if (e.state !== 'established') parts.push(e.state);
  return parts.join(' · ');
}

function renderTopology(v: UiView): void {
  const g = $('topology') as unknown as SVGSVGElement;
  const W = 640, H = 420, cx = W / 2, cy = 195;
  const peers = [...v.peers].sort((a, b) => (a.self ? -1 : b.self ? 1 : a.name < b.name ? -1 : 1));
  const r = peers.length <= 1 ? 0 : 150;
  const pos = new Map<string, { x: number; y: number }>();
  peers.forEach((p, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / peers.length;
    pos.set(p.name, { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) });
  });
  const kids: SVGElement[] = [];
  for (const e of v.edges) {
    const a = pos.get(e.a), b = pos.get(e.b);
    if (!a || !b) continue;
    const grp = svg('g', { class: `edge ${edgeClass(e)}`, 'data-a': e.a, 'data-b': e.b, 'data-overlay': e.overlay ?? '', 'data-encryption': e.encryption, 'data-state': e.state, 'data-reason': e.reason ?? '', 'data-mtu': e.mtu ?? '', 'data-silent': e.silentMs ?? '' });
    grp.append(svg('line', { x1: a.x, y1: a.y, x2: b.x, y2: b.y }));
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
    // labels sit off the line, on the side away from the centre
    const dx = mx - cx, dy = my - cy, d = Math.hypot(dx, dy) || 1;
    const lx = mx + (dx / d) * 14, ly = my + (dy / d) * 14;
    const anchor = Math.abs(dx) < 20 ? 'middle' : dx > 0 ? 'start' : 'end';
    grp.append(svg('text', { x: lx, y: ly, 'text-anchor': anchor, class: 'label' }, edgeText(e)));
    if (e.reason) grp.append(svg('text', { x: lx, y: ly + 14, 'text-anchor': anchor, class: 'reason' }, `not fastdp: ${e.reason}`));
    if (e.stalled) grp.append(svg('text', { x: lx, y: ly + 28, 'text-anchor': anchor, class: 'reason' }, `stalled: ${e.stalled}`));
    if (e.silentMs) grp.append(svg('text', { x: lx, y: ly + 42, 'text-anchor': anchor, class: 'reason' }, `nothing heard for ${Math.round(e.silentMs / 1000)} s`));
    const title = svg('title', {}, `${edgeText(e)}${e.reason ? `\nwhy not fastdp: ${e.reason}` : ''}${e.info ? `\n${e.info}` : ''}`);
    grp.append(title);
    kids.push(grp);
  }
  // failing connections of this router: a red dashed line to where they were meant to go
  const self = peers.find((p) => p.self);
  const sp = self ? pos.get(self.name) : undefined;
  v.failing.forEach((f, i) => {
    const target = f.peer ? pos.get(f.peer) : undefined;
    const gx = target ? target.x : 40 + i * 150, gy = target ? target.y : H - 30;
    const grp = svg('g', { class: 'failing', 'data-address': f.address, 'data-state': f.state });
    if (sp) grp.append(svg('line', { x1: sp.x, y1: sp.y, x2: gx, y2: gy }));
    if (!target) grp.append(svg('circle', { cx: gx, cy: gy, r: 10 }));
    grp.append(svg('text', { x: gx, y: gy + (target ? 44 : 26), 'text-anchor': 'middle' }, `${f.outbound ? '→' : '←'} ${f.address} ${f.state}${f.code ? ` ${f.code}` : ''}`));
    grp.append(svg('title', {}, f.info));
    kids.push(grp);
  });
  for (const p of peers) {
    const q = pos.get(p.name)!;
    const grp = svg('g', { class: `peer${p.self ? ' self' : ''}${p.reachable ? '' : ' unreachable'}`, 'data-peer': p.name, 'data-nickname': p.nickname });
    grp.append(svg('circle', { cx: q.x, cy: q.y, r: 26 }));
    grp.append(svg('text', { x: q.x, y: q.y + 4, 'text-anchor': 'middle', 'font-weight': 600 }, p.nickname || '?'));
    grp.append(svg('text', { x: q.x, y: q.y + 42, 'text-anchor': 'middle', class: 'muted' }, p.name));
    grp.append(svg('title', {}, `${p.nickname} ${p.name}\n${p.address}\n${p.software || 'version unknown'}`));
    kids.push(grp);
  }
  g.replaceChildren(...kids);
}

function renderPeers(v: UiView): void {
  rows('peers', v.peers.map((p: UiPeer) => {
    const tr = el('tr', { 'data-peer': p.name }, td(p.name, 'mono'), td(p.nickname), td(`${p.software || '?'} (record v${p.recordVersion})`), td(p.address, 'mono'), td(p.self ? 'this router' : p.reachable ? '' : 'unreachable', p.reachable ? 'muted' : 'bad'));
    return tr;
  }), 'no peers', 5);
  const nick = new Map(v.peers.map((p) => [p.name, p]));
  rows('connections', v.edges.map((e) => el('tr', { 'data-a': e.a, 'data-b': e.b },
    td(`${label(nick.get(e.a), e.a)} – ${label(nick.get(e.b), e.b)}`),
    td(e.source === 'topology' ? (e.established ? 'established' : 'pending') : e.state, e.state === 'established' ? '' : 'bad'),
    el('td', {}, el('span', { class: `tag ${e.overlay ?? 'unknown'}` }, e.overlay ?? (e.source === 'topology' ? 'unknown' : 'none'))),
    td(e.encryption), td(e.mtu ?? '', 'num'), td([e.reason ? `fastdp: ${e.reason}` : '', e.stalled ? `stalled: ${e.stalled}` : '', e.silentMs ? `nothing heard for ${Math.round(e.silentMs / 1000)} s` : ''].filter(Boolean).join('; '), 'warn'))), 'no connections', 6);
  const f = $('failing');
  f.replaceChildren(...(v.failing.length ? [el('h2', { style: 'margin-top:14px' }, 'Failing and refused'), el('table', {}, el('tbody', {}, ...v.failing.map((x: UiFailing) => el('tr', { class: 'bad' }, td(`${x.outbound ? '→' : '←'} ${x.address}`, 'mono'), td(x.state), td(x.code ?? ''), td(x.info))))) ] : []));
}

function renderTraffic(v: UiView): void {
  rows('traffic', v.traffic.map((t) => el('tr', { 'data-peer': t.peer, 'data-overlay': t.overlay ?? '' },
    td(t.nickname || t.peer), el('td', {}, el('span', { class: `tag ${t.overlay ?? 'none'}` }, t.overlay ?? 'none')),
    td(rate(t.txPps), 'num'), td(rate(t.rxPps), 'num'), td(rate(t.txBps, 'B'), 'num'), td(rate(t.rxBps, 'B'), 'num'),
    td(`${t.txPackets}`, 'num'), td(`${t.rxPackets}`, 'num'),
    td(t.drops.replay, t.drops.replay ? 'num bad' : 'num'), td(t.drops.auth, t.drops.auth ? 'num bad' : 'num'), td(t.drops.noRoute, t.drops.noRoute ? 'num bad' : 'num'), td(t.drops.tooBig, 'num'),
    td(t.counts, 'muted'))), 'no established connection', 13);
  $('traffic-note').textContent = `sleeve: every datagram to and from the peer (data, relays, heartbeats); fastdp: the kernel's VXLAN device counts all peers together, so its heartbeats are shown. Sleeve drops with no connection to blame: no route ${v.unattributedDrops.noRoute}, unknown destination ${v.unattributedDrops.unknownDest}.`;
}

// ---- IPAM ------------------------------------------------------------------------------------------

const COLORS = ['#0969da', '#1a7f37', '#8250df', '#bf8700', '#0a3069', '#953800', '#116329', '#6639ba'];

function renderIpam(ipam: UiIpam | null): void {
  const ring = $('ipam-ring') as unknown as SVGSVGElement;
  const legend = $('ipam-legend');
  if (!ipam) {
    ring.replaceChildren();
    legend.replaceChildren(el('span', { class: 'muted' }, 'IPAM is off on this router'));
    return;
  }
  const cx = 110, cy = 110, R = 90, r0 = 55;
  const slices = ipam.owners.map((o, i) => ({ ...o, color: o.reachable ? COLORS[i % COLORS.length] : '#cf222e' }));
  if (ipam.unowned > 0) slices.push({ peer: '', nickname: 'not yet owned', addresses: ipam.unowned, percent: (100 * ipam.unowned) / ipam.size, reachable: true, color: '#d0d7de' });
  const kids: SVGElement[] = [];
  let at = 0;
  for (const s of slices) {
    const frac = ipam.size ? s.addresses / ipam.size : 0;
    const a0 = 2 * Math.PI * at - Math.PI / 2, a1 = 2 * Math.PI * (at + frac) - Math.PI / 2;
    at += frac;
    const attrs = { class: 'slice', 'data-peer': s.peer, 'data-addresses': s.addresses, 'data-reachable': String(s.reachable), fill: s.color, stroke: '#fff', 'stroke-width': 1 };
    let shape: SVGElement;
    if (frac >= 0.9999) {
      shape = svg('path', { ...attrs, d: `M ${cx} ${cy - R} A ${R} ${R} 0 1 1 ${cx - 0.01} ${cy - R} L ${cx - 0.01} ${cy - r0} A ${r0} ${r0} 0 1 0 ${cx} ${cy - r0} Z` });
    } else {
      const big = frac > 0.5 ? 1 : 0;
      const p = (a: number, rad: number) => `${cx + rad * Math.cos(a)} ${cy + rad * Math.sin(a)}`;
      shape = svg('path', { ...attrs, d: `M ${p(a0, R)} A ${R} ${R} 0 ${big} 1 ${p(a1, R)} L ${p(a1, r0)} A ${r0} ${r0} 0 ${big} 0 ${p(a0, r0)} Z` });
    }
    shape.append(svg('title', {}, `${s.nickname || s.peer}: ${s.addresses} addresses (${s.percent.toFixed(1)}%)${s.reachable ? '' : ' unreachable'}`));
    kids.push(shape);
  }
  kids.push(svg('text', { x: cx, y: cy - 2, 'text-anchor': 'middle', 'font-weight': 600 }, ipam.range));
  kids.push(svg('text', { x: cx, y: cy + 14, 'text-anchor': 'middle', class: 'muted' }, ipam.state));
  ring.replaceChildren(...kids);
  legend.replaceChildren(el('table', {}, el('tbody', {}, ...slices.map((s) => el('tr', {},
    el('td', {}, el('span', { style: `display:inline-block;width:10px;height:10px;background:${s.color}` })),
    td(s.nickname || s.peer), td(s.addresses, 'num'), td(`${s.percent.toFixed(1)}%`, 'num'),
    el('td', s.reachable ? {} : { class: 'bad' }, ...(s.reachable ? [] : ['unreachable: ', el('span', { class: 'hint' }, (s as { hint?: string }).hint ?? '')])))))));
}

function renderContainers(v: UiView): void {
  rows('containers', v.containers.map((c) => el('tr', { 'data-key': c.key }, td(c.pod ? `${c.pod} (${c.name})` : c.name, 'mono'), td(c.addresses.join(' '), 'mono'), td(c.mac ?? '', 'mono'), td(c.hostname ?? ''))), 'no container attached', 4);
  const nick = new Map(v.peers.map((p) => [p.name, p.nickname]));
  rows('dns', v.dns.map((d) => el('tr', {}, td(d.hostname), td(d.address, 'mono'), td(nick.get(d.origin) || d.originNickname || d.origin), td(d.container, 'mono'))), 'no records', 4);
}

function renderEvents(list: UiEvent[]): void {
  const newest = [...list].sort((a, b) => b.seq - a.seq).slice(0, 300);
  const body = $('events').querySelector('tbody')!;
  body.replaceChildren(...(newest.length ? newest.map((e) => el('tr', { 'data-kind': e.kind }, td(new Date(e.time).toLocaleTimeString(), 'time'), td(e.kind, e.kind.includes('down') || e.kind.includes('leave') || e.kind.includes('unreachable') ? 'bad' : ''), td(e.text))) : [el('tr', {}, el('td', { colspan: '3', class: 'muted' }, 'nothing happened yet'))]));
}

function renderAll(v: UiView): void {
  renderHeader(v);
  renderTopology(v);
  renderPeers(v);
  renderTraffic(v);
  renderIpam(v.ipam);
  renderContainers(v);
  renderEvents(v.events);
  document.body.dataset.updated = String(v.time);
}

// ---- the stream ------------------------------------------------------------------------------------

function connect(): void {
  const live = $('live');
  const es = new EventSource('/ui/stream');
  es.onopen = () => { live.textContent = 'live'; live.className = 'on'; };
  es.onerror = () => { live.textContent = 'reconnecting'; live.className = 'off'; };
  es.addEventListener('snapshot', (m) => {
    view = JSON.parse((m as MessageEvent).data) as UiView;
    seen.clear();
    for (const e of view.events) seen.add(e.seq);
    renderAll(view);
  });
  es.addEventListener('delta', (m) => {
    if (!view) return;
    const d = JSON.parse((m as MessageEvent).data) as { time: number; changes: Partial<UiView> };
    view = { ...view, ...d.changes, time: d.time };
    renderAll(view);
  });
  es.addEventListener('event', (m) => {
    if (!view) return;
    const e = JSON.parse((m as MessageEvent).data) as UiEvent;
    if (seen.has(e.seq)) return;
    seen.add(e.seq);
    view.events = [...view.events, e].slice(-500);
    renderEvents(view.events);
  });
  es.addEventListener('refused', (m) => {
    live.textContent = JSON.parse((m as MessageEvent).data).error;
    live.className = 'off';
    es.close();
  });
}

connect();
