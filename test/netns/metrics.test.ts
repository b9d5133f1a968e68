// /metrics of a 3-router mesh with mixed overlays (h1-h2 trusted fastdp, h3 encrypted sleeve), read
// the way Prometheus does: a real parser, promtool's linter, and the rule promtool does not check
// that every sample of one metric stands in one group under its HELP and TYPE.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import parsePrometheus from 'parse-prometheus-text-format';
import { Host, withLab } from '../lab/lab';
import { run, waitFor } from '../lab/exec';

/** Each metric family's lines (HELP, TYPE, samples) are contiguous and samples follow their TYPE. */
export function checkGrouping(text: string): void {
  const seen = new Set<string>();
  let current = '';
  const familyOf = (name: string, types: Map<string, string>): string => {
    for (const suffix of ['_bucket', '_sum', '_count', '_created']) {
      const base = name.slice(0, -suffix.length);
      if (name.endsWith(suffix) && types.has(base)) return base;
    }
    return name;
  };
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
    const name = meta ? meta[2] : /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line)?.[1];
    assert.ok(name, `unparsable line: ${line}`);
    if (meta?.[1] === 'TYPE') types.set(name, meta[3]);
    const fam = meta ? name : familyOf(name, types);
    if (!meta) assert.ok(types.has(fam), `sample of ${fam} before its TYPE`);
    if (fam !== current) {
      assert.ok(!seen.has(fam), `samples of ${fam} are split into more than one group`);
      seen.add(fam);
      current = fam;
    }
  }
}

async function promtool(text: string): Promise<string> {
  const r = await run(['promtool', 'check', 'metrics'], { input: text, allowFail: true });
  assert.equal(r.code, 0, `promtool check metrics failed:\n${r.stdout}${r.stderr}`);
  return `${r.stdout}${r.stderr}`.trim();
}

async function connected(h: Host, n: number): Promise<void> {
  await waitFor(`${h.name} has ${n} established connections`, async () => {
    const rep = await h.report();
    return rep.router.connections.filter((c: any) => c.state === 'established' && c.overlay).length === n;
  }, { timeoutMs: 30_000, intervalMs: 250 });
}

test('metrics of a mixed-overlay mesh parse, group per metric, and pass promtool', async () => {
  await withLab(async (lab) => {
    const env = { WEAVE_PASSWORD: 'metrics test' };
    const [h1, h2, h3] = [await lab.addHost('h1'), await lab.addHost('h2'), await lab.addHost('h3')];
    const c1 = await lab.addContainer('c1');
    await h1.weave(['launch', '--nickname', 'h1', '--trusted-subnets', `${h2.ip}/32`, '--ipalloc-init', 'consensus=3'], { env });
    await h2.weave(['launch', '--nickname', 'h2', '--trusted-subnets', `${h1.ip}/32`, '--ipalloc-init', 'consensus=3', h1.ip], { env });
    await h3.weave(['launch', '--nickname', 'h3', '--ipalloc-init', 'consensus=3', h1.ip], { env });
    for (const h of [h1, h2, h3]) await connected(h, 2);
    await h1.weave(['attach', c1.ns, '-h', 'web']);
    for (const h of [h1, h2, h3]) {
      const text = await h.httpGet('/metrics');
      checkGrouping(text);
      assert.equal(await promtool(text), '', `promtool reports no problems for ${h.name}`);
      const fams = parsePrometheus(text);
      const byName = new Map(fams.map((f) => [f.name, f]));
      for (const f of fams) {
        assert.ok(f.help.length > 15, `${f.name} has a help text for operators`);
        if (f.type === 'COUNTER') assert.match(f.name, /_total$/, `counter ${f.name} ends in _total`);
      }
      const overlays = byName.get('weave_connection_overlay_info')!.metrics;
      assert.equal(overlays.length, 2, `${h.name}: one sample per established connection`);
      assert.equal(byName.get('weave_connection_mtu_bytes')!.metrics.length, 2);
      assert.equal(byName.get('weave_peers')!.metrics[0].value, '3');
      assert.ok(byName.has('weave_sleeve_dropped_total') && byName.has('weave_ipam_ring_seeded') && byName.has('weave_dns_entries'));
    }
    const h1fams = parsePrometheus(await h1.httpGet('/metrics'));
    const ov = h1fams.find((f) => f.name === 'weave_connection_overlay_info')!.metrics.map((m) => `${m.labels!.nickname}:${m.labels!.overlay}:${m.labels!.encryption}`).sort();
    assert.deepEqual(ov, ['h2:fastdp:trusted', 'h3:sleeve:encrypted'], 'mixed overlays on h1');
    const att = h1fams.find((f) => f.name === 'weave_endpoints_attached')!;
    assert.equal(att.metrics[0].value, '1');
  });
});

test('the grouping check catches interleaved samples (the hand-written exposition of old)', () => {
  const interleaved = [
    '# HELP weave_connection_overlay x', '# TYPE weave_connection_overlay gauge', 'weave_connection_overlay{peer="a"} 1',
    '# HELP weave_connection_mtu y', '# TYPE weave_connection_mtu gauge', 'weave_connection_mtu{peer="a"} 1400',
    'weave_connection_overlay{peer="b"} 1', 'weave_connection_mtu{peer="b"} 1400', '',
  ].join('\n');
  assert.throws(() => checkGrouping(interleaved), /weave_connection_overlay are split/);
  assert.throws(() => checkGrouping('weave_x 1\n'), /before its TYPE/);
});
