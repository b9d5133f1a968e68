// The router's /ui: a live page built from the one report model (api/parts/api.ts buildReport), the
// third view after `weave status` (text) and `weave report` (JSON). Read-only GETs on the API's TCP
// address (127.0.0.1:6784 by default) and its socket:
//   GET /ui           the page (HTML; its script and style come from this process, nothing from the network)
//   GET /ui/page.js   the page's script (ui/page/page.ts, compiled at build time)
//   GET /ui/data      {view, report}: the page's view model (ui/model.ts) and the report it came from
//   GET /ui/stream    server-sent events: 'snapshot' (the view) at once, then every TICK_MS a 'delta'
//                     with the view's top-level keys that changed for this client, and each 'event' of
//                     the event log as it happens
// One view is built per tick for all open pages (never per client), and only while a page is open.
// Building a view is also what pulls the other routers' link entries (ui/links.ts), at most every
// LINKS_PULL_MS: with no page open the links channel costs the mesh nothing. The first view after a
// page opens may lack remote lines' overlays; the answers come within a second or so and the stream's
// next delta carries them.
// Each stream's unsent bytes are bounded: a client that does not keep up is disconnected (its
// EventSource reconnects and starts again from a snapshot).
import * as fs from 'fs';
import * as path from 'path';
import type { Clock, TimerHandle } from '../lib/clock';
import { WeaveError, errMsg } from '../lib/errors';
import { componentLogger, type Logger } from '../lib/log';
import type { ApiRoute, Part, StreamSink } from '../lib/subsystem';
import type { Report } from '../api/views';
import type { EventRing, RouterEvent } from '../api/parts/events';
import type { PeerName } from '../mesh/peer';
import type { GossipChannel, Gossiper } from '../mesh/types';
import { LINKS_CHANNEL, LinksTable, type LinkInfo } from './links';
import { counterFrom } from '../lib/metrics';
import { buildView, encryptionOf, type TrafficSample, type UiView } from './model';
import { PAGE_HTML } from './page-html';

export const TICK_MS = 1000;
/** unsent bytes a stream may hold before its client is dropped */
export const MAX_STREAM_BUFFER = 1 << 20;
export const MAX_STREAMS = 32;
/** a comment line keeps idle streams (and proxies in between) alive */
const PING_MS = 15_000;
/**
 * How often a looked-at page pulls the other routers' link entries. A pull is an ask of ~30 bytes per
 * known peer, broadcast (3 KB to every router at 100 peers), and back to the asker alone the entry
 * (~45 bytes a link) of each router whose connections changed since its last pull: up to ~450 KB at
 * 100 peers while all of them form. Every 5 s keeps that under 100 KB/s on the asker and under 1 KB/s
 * on the others; a line's overlay on the page is then up to 5 s old (the rest of it, TICK_MS).
 */
export const LINKS_PULL_MS = 5000;

type Listener = (...args: any[]) => void;

export interface UiInputs {
  self: PeerName;
  /** the weave.ts version and protocol range this router gossips ("0.1.0 1..1") */
  software: string;
  mesh: {
    on(event: string, fn: Listener): unknown;
    off(event: string, fn: Listener): unknown;
    peerSummaries(): Array<{ name: string }>;
    connectionStatuses(): Array<{ peerName?: string; state: string; stalled?: string; overlay: string | null; encrypted: boolean; trusted?: boolean; mtu?: number; overlayReason?: string }>;
    newGossip(channel: string, g: Gossiper): GossipChannel;
  };
  report: () => Report;
  events: EventRing;
}

/** The page's script, compiled from ui/page/page.ts next to this file. */
function loadScript(): string {
  const file = path.join(__dirname, 'page', 'page.js');
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new WeaveError('EUI', `the /ui page's script ${file} is missing (npm run build makes it): ${errMsg(e)}`, {}, { cause: e });
  }
}

/** SSE framing: one event, its JSON on one data line. */
export function sseEvent(name: string, data: unknown): string {
  return `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
}

interface Client {
  sink: StreamSink;
  /** what this client has of each top-level key of the view (JSON) */
  sent: Map<string, string>;
}

/** The keys of a view a stream sends as deltas ('events' go one by one as 'event'). */
const DELTA_KEYS: Array<keyof UiView> = ['time', 'self', 'peers', 'edges', 'failing', 'traffic', 'unattributedDrops', 'ipam', 'containers', 'dns'];

export class UiStreams {
  private readonly clients = new Set<Client>();
  private timer: TimerHandle | undefined;
  private lastPing = 0;
  dropped = 0;

  constructor(private readonly build: () => UiView, private readonly clock: Clock, private readonly log: Logger, private readonly tickMs = TICK_MS) {}

  get size(): number {
    return this.clients.size;
  }

  open(sink: StreamSink): void {
    if (this.clients.size >= MAX_STREAMS) {
      sink.write(sseEvent('refused', { error: `too many open pages (${MAX_STREAMS})` }));
      sink.end();
      return;
    }
    const c: Client = { sink, sent: new Map() };
    this.clients.add(c);
    sink.onClose(() => {
      this.clients.delete(c);
      if (this.clients.size === 0) this.stopTimer();
    });
    const view = this.build();
    // the client retries after 2 s when the stream breaks (router restart, slow client dropped)
    this.send(c, `retry: 2000\n${sseEvent('snapshot', view)}`);
    for (const k of DELTA_KEYS) c.sent.set(k, JSON.stringify(view[k]));
    if (!this.timer) this.timer = this.clock.setTimeout(() => this.tick(), this.tickMs);
  }

  /** An event of the log, to every open page at once. */
  event(e: RouterEvent): void {
    if (this.clients.size === 0) return;
    const text = sseEvent('event', e);
    for (const c of this.clients) this.send(c, text);
  }

  tick(): void {
    this.timer = undefined;
    if (this.clients.size === 0) return;
    let view: UiView;
    try {
      view = this.build();
    } catch (e) {
      this.log.error({ err: errMsg(e) }, 'building the /ui view failed');
      this.timer = this.clock.setTimeout(() => this.tick(), this.tickMs);
      return;
    }
    const json = new Map(DELTA_KEYS.map((k) => [k, JSON.stringify(view[k])]));
    const now = this.clock.now();
    const ping = now - this.lastPing >= PING_MS;
    if (ping) this.lastPing = now;
    for (const c of this.clients) {
      const changes: string[] = [];
      for (const [k, v] of json) {
        if (k === 'time' || c.sent.get(k) === v) continue;
        changes.push(`${JSON.stringify(k)}:${v}`);
        c.sent.set(k, v);
      }
      if (changes.length) this.send(c, `event: delta\ndata: {"time":${json.get('time')},"changes":{${changes.join(',')}}}\n\n`);
      else if (ping) this.send(c, ': ping\n\n');
    }
    this.timer = this.clock.setTimeout(() => this.tick(), this.tickMs);
  }

  private send(c: Client, text: string): void {
    if (c.sink.buffered > MAX_STREAM_BUFFER) {
      this.dropped++;
      this.log.info({ buffered: c.sink.buffered }, '/ui stream client does not keep up; disconnecting it (it reconnects with a fresh snapshot)');
      this.clients.delete(c);
      c.sink.end();
      return;
    }
    c.sink.write(text);
  }

  close(): void {
    this.stopTimer();
    for (const c of [...this.clients]) c.sink.end();
    this.clients.clear();
  }

  private stopTimer(): void {
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }
}

export interface UiPart extends Part {
  readonly links: LinksTable;
  readonly streams: UiStreams;
  view(r?: Report): UiView;
}

/** What this router tells an asking router about its connections (link gossip). */
export function localLinks(conns: ReturnType<UiInputs['mesh']['connectionStatuses']>): LinkInfo[] {
  const out: LinkInfo[] = [];
  for (const c of conns) {
    if (!c.peerName || (c.state !== 'established' && c.state !== 'pending')) continue;
    out.push({
      peer: c.peerName, state: c.stalled ? 'stalled' : c.state, overlay: c.overlay, encryption: encryptionOf(c),
      ...(c.mtu ? { mtu: c.mtu } : {}), ...(c.overlayReason ? { reason: c.overlayReason } : {}),
    });
  }
  return out;
}

/** Builds the /ui part: its routes, the link gossip channel (before the mesh starts), our own link entry and the stream ticker. */
export function buildUi(i: UiInputs, root: Logger, clock: Clock): UiPart {
  const log = componentLogger(root, 'ui');
  const script = loadScript();
  const links = new LinksTable(i.self, clock, log);
  links.setChannel(i.mesh.newGossip(LINKS_CHANNEL, links));

  let prev: TrafficSample | undefined;
  let lastPull = -Infinity;
  const pull = (now: number): void => {
    if (now - lastPull < LINKS_PULL_MS) return;
    lastPull = now;
    links.ask();
  };
  // our own entry, computed when an ask is answered or a view built (not on every connection event)
  links.setSource(() => ({ software: i.software, links: localLinks(i.mesh.connectionStatuses()) }));
  // every view is for a page (/ui/data, a stream's snapshot and ticks): building one pulls
  const view = (r: Report = i.report()): UiView => {
    const now = clock.now();
    pull(now);
    links.refreshLocal();
    const { view: v, sample } = buildView(r, links.all(), i.events.list(), now, prev);
    // rates over at least half a tick: /ui/data asked often must not shrink the interval to nothing
    if (!prev || now - prev.time >= TICK_MS / 2) prev = sample;
    return v;
  };
  const streams = new UiStreams(() => view(), clock, log);
  const offEvents = i.events.subscribe((e) => streams.event(e));

  const onPeers = (): void => {
    links.retain(new Set(i.mesh.peerSummaries().map((p) => p.name)));
  };
  i.mesh.on('peersChanged', onPeers);

  const routes: ApiRoute[] = [
    { method: 'GET', path: '/ui', contentType: 'text/html; charset=utf-8', handler: () => PAGE_HTML },
    { method: 'GET', path: '/ui/page.js', contentType: 'text/javascript; charset=utf-8', handler: () => script },
    // one report for both: the page's numbers are the report's
    { method: 'GET', path: '/ui/data', handler: () => { const report = i.report(); return { view: view(report), report }; } },
    { method: 'GET', path: '/ui/stream', handler: () => undefined, stream: (_req, sink) => streams.open(sink) },
  ];
  return {
    name: 'ui',
    links,
    streams,
    view,
    apiRoutes: () => routes,
    metrics: (reg) => {
      const s = links.stats;
      counterFrom(reg, 'weave_ui_link_messages_total', 'Link gossip (the /ui page\'s lines) by event: asks sent by our page, answers sent, asks not answered (too soon after the last), malformed messages dropped, updates taken, and our own failures to ask or to compute our entry.',
        () => [
          { labels: { event: 'ask_sent' }, value: s.asksSent },
          { labels: { event: 'answer_sent' }, value: s.answersSent },
          { labels: { event: 'ask_throttled' }, value: s.asksThrottled },
          { labels: { event: 'malformed' }, value: s.malformed },
          { labels: { event: 'update_applied' }, value: s.updatesApplied },
          { labels: { event: 'failure' }, value: s.failures },
        ], ['event']);
    },
    stop: () => {
      offEvents();
      i.mesh.off('peersChanged', onPeers);
      streams.close();
    },
  };
}
