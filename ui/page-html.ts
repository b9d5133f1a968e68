// The /ui page's document and style. Everything the page needs comes from the router: this HTML, its
// script (/ui/page.js) and its data; no font, library or image from the network, so it works offline
// and behind an SSH tunnel or `kubectl port-forward`.
export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>weave.ts router</title>
<link rel="icon" href="data:,">
<style>
  :root { --fg: #1d2733; --muted: #6b7785; --line: #d5dbe2; --bg: #f6f8fa; --card: #fff;
          --fastdp: #1a7f37; --sleeve: #0969da; --unknown: #8c959f; --bad: #cf222e; --warn: #bc4c00; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
  header { display: flex; gap: 16px; align-items: baseline; padding: 12px 20px; background: #24292f; color: #fff; flex-wrap: wrap; }
  header h1 { font-size: 18px; margin: 0; }
  header .meta { color: #c9d1d9; font-size: 13px; }
  #live { margin-left: auto; font-size: 13px; padding: 2px 8px; border-radius: 10px; background: #57606a; }
  #live.on { background: var(--fastdp); }
  #live.off { background: var(--bad); }
  main { display: grid; grid-template-columns: minmax(420px, 1.2fr) minmax(360px, 1fr); gap: 16px; padding: 16px 20px; }
  section { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px; min-width: 0; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; }
  th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid var(--line); vertical-align: top; }
  th { color: var(--muted); font-weight: 600; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
  .bad { color: var(--bad); font-weight: 600; }
  .warn { color: var(--warn); }
  .muted { color: var(--muted); }
  .tag { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; color: #fff; }
  .tag.fastdp { background: var(--fastdp); } .tag.sleeve { background: var(--sleeve); } .tag.unknown, .tag.none { background: var(--unknown); }
  svg text { font: 12px system-ui, sans-serif; fill: var(--fg); }
  svg .edge line { stroke-width: 3; }
  svg .edge.fastdp line { stroke: var(--fastdp); stroke-width: 5; }
  svg .edge.sleeve line { stroke: var(--sleeve); }
  svg .edge.unknown line { stroke: var(--unknown); stroke-dasharray: 6 4; }
  svg .edge.down line, svg .edge.stalled line, svg .failing line { stroke: var(--bad); stroke-dasharray: 4 4; }
  svg .edge .label { font-size: 11px; }
  svg .edge .reason { fill: var(--warn); font-size: 11px; }
  svg .peer circle { fill: #fff; stroke: #24292f; stroke-width: 2; }
  svg .peer.self circle { fill: #ddf4ff; stroke: var(--sleeve); stroke-width: 3; }
  svg .peer.unreachable circle { stroke: var(--bad); stroke-dasharray: 3 3; }
  svg .failing circle { fill: #ffebe9; stroke: var(--bad); }
  svg .failing text { fill: var(--bad); }
  #events { max-height: 320px; overflow: auto; }
  #events td.time { white-space: nowrap; color: var(--muted); }
  .legend { font-size: 12px; color: var(--muted); margin-top: 4px; }
  .legend span { margin-right: 12px; }
  #ipam-picture { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
  .hint { font-family: ui-monospace, monospace; background: #fff8c5; padding: 0 4px; border-radius: 3px; }
</style>
</head>
<body>
<header>
  <h1 id="title">weave.ts router</h1>
  <span class="meta" id="meta"></span>
  <span id="live">connecting</span>
</header>
<main>
  <section id="topology-card">
    <h2>Topology</h2>
    <svg id="topology" viewBox="0 0 640 420" width="100%" role="img" aria-label="peers and connections"></svg>
    <div class="legend"><span style="color:var(--fastdp)">━ fastdp</span><span style="color:var(--sleeve)">━ sleeve</span><span style="color:var(--unknown)">╌ overlay unknown</span><span style="color:var(--bad)">╌ failing / not established</span></div>
  </section>
  <section>
    <h2>Peers</h2>
    <table id="peers"><thead><tr><th>name</th><th>nickname</th><th>version</th><th>address</th><th></th></tr></thead><tbody></tbody></table>
    <h2 style="margin-top:14px">Connections</h2>
    <table id="connections"><thead><tr><th>between</th><th>state</th><th>overlay</th><th>encryption</th><th class="num">MTU</th><th>why not the best overlay</th></tr></thead><tbody></tbody></table>
    <div id="failing"></div>
  </section>
  <section class="wide">
    <h2>Traffic of this router's connections</h2>
    <table id="traffic"><thead><tr><th>peer</th><th>overlay</th><th class="num">tx pkt/s</th><th class="num">rx pkt/s</th><th class="num">tx B/s</th><th class="num">rx B/s</th><th class="num">tx total</th><th class="num">rx total</th><th class="num">replay</th><th class="num">auth failure</th><th class="num">no route</th><th class="num">too big</th><th>counted</th></tr></thead><tbody></tbody></table>
    <div class="legend" id="traffic-note"></div>
  </section>
  <section>
    <h2>IPAM: who owns the range</h2>
    <div id="ipam-picture"><svg id="ipam-ring" viewBox="0 0 220 220" width="220" height="220" role="img" aria-label="address ring"></svg><div id="ipam-legend"></div></div>
  </section>
  <section>
    <h2>Containers on this host</h2>
    <table id="containers"><thead><tr><th>namespace</th><th>addresses</th><th>MAC</th><th>DNS name</th></tr></thead><tbody></tbody></table>
    <h2 style="margin-top:14px">DNS records</h2>
    <table id="dns"><thead><tr><th>name</th><th>address</th><th>peer</th><th>container</th></tr></thead><tbody></tbody></table>
  </section>
  <section class="wide">
    <h2>Events</h2>
    <div id="events"><table><thead><tr><th>time</th><th>what</th><th>event</th></tr></thead><tbody></tbody></table></div>
  </section>
</main>
<script type="module" src="/ui/page.js"></script>
</body>
</html>
`;
