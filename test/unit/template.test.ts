// weave report -f: the Go-template subset over the report JSON (api/template.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseTemplate, renderTemplate } from '../../api/template';
import { UsageError } from '../../lib/errors';

const report = {
  version: '0.1.0',
  router: {
    name: 'aa:bb:cc:dd:ee:01', nickname: 'h1', targets: ['198.18.0.12:6783', '198.18.0.13:6783'],
    peers: [{ name: 'aa:bb:cc:dd:ee:01', nickname: 'h1' }, { name: 'aa:bb:cc:dd:ee:02', nickname: 'h2' }],
    connections: [
      { peerNickname: 'h2', overlay: 'fastdp', mtu: 1450 },
      { peerNickname: 'h3', overlay: 'sleeve', mtu: 1440, overlayReason: 'kernel lacks ESP' },
    ],
  },
  dns: { domain: 'weave.local.', entries: [] },
  ipam: { status: { range: '10.32.0.0/12' } },
};

test('field paths match JSON keys in any case (Weave Net\'s {{.Router.Name}}, {{.DNS.Domain}})', () => {
  assert.equal(renderTemplate('{{.Router.Name}}', report), 'aa:bb:cc:dd:ee:01');
  assert.equal(renderTemplate('{{.DNS.Domain}} {{.IPAM.Status.Range}}', report), 'weave.local. 10.32.0.0/12');
  assert.equal(renderTemplate('{{.router.nickname}} v{{$.Version}}', report), 'h1 v0.1.0');
  assert.equal(renderTemplate('{{.Router.Peers.1.Nickname}}', report), 'h2');
});

test('range, if/else, len, json, join; an optional field absent in one element gives no value', () => {
  const t = '{{range .Router.Connections}}{{.PeerNickname}}={{.Overlay}}{{if .OverlayReason}} ({{.OverlayReason}}){{else}} best{{end}};{{end}}';
  assert.equal(renderTemplate(t, report), 'h2=fastdp best;h3=sleeve (kernel lacks ESP);');
  assert.equal(renderTemplate('{{len .Router.Peers}} {{len .DNS.Entries}}', report), '2 0');
  assert.equal(renderTemplate('{{range .DNS.Entries}}x{{else}}none{{end}}', report), 'none');
  assert.equal(renderTemplate('{{json .Router.Targets}}', report), '["198.18.0.12:6783","198.18.0.13:6783"]');
  assert.equal(renderTemplate('{{join .Router.Targets ","}}', report), '198.18.0.12:6783,198.18.0.13:6783');
  assert.equal(renderTemplate('{{range .Router.Peers}}{{$.Router.Nickname}}>{{.Nickname}} {{end}}', report), 'h1>h1 h1>h2 ');
  assert.equal(renderTemplate('{{.Router.Connections.0}}', report), '{"peerNickname":"h2","overlay":"fastdp","mtu":1450}');
  assert.equal(renderTemplate('a\n  {{- .Router.Nickname -}}  \nb', report), 'ah1b');
});

test('mistakes are usage errors that say where and what exists', () => {
  assert.throws(() => renderTemplate('{{.Router.Nmae}}', report), (e: unknown) => e instanceof UsageError && /no field "Nmae" in \.Router/.test(e.message) && /nickname/.test(e.message));
  assert.throws(() => parseTemplate('{{range .Router.Peers}}x'), /has no \{\{end\}\}/);
  assert.throws(() => parseTemplate('{{end}}'), /closes nothing/);
  assert.throws(() => parseTemplate('{{.Router.Name'), /not closed/);
  assert.throws(() => parseTemplate('{{printf "%s" .X}}'), /expected a field path/);
  assert.throws(() => parseTemplate('{{Router}}'), /not a field path/);
  assert.throws(() => renderTemplate('{{len .Router.Name.X}}', report), UsageError);
});
