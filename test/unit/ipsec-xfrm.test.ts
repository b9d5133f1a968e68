// ipsec/xfrm.ts on this kernel (VXLAN and xfrm policies, but no ESP/GCM): parsing of ip-xfrm text,
// supportsEsp says no with the kernel's reason, a failed install leaves nothing and leaks no key, and
// removeAll/removePeer take exactly our policies. The ESP half runs in the UML guest (test/vm).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { run } from '../lab/exec';
import { MemoryLogger } from '../../lib/log';
import { UsageError } from '../../lib/errors';
import { deriveEspKeys, newEspNonce } from '../../ipsec/keys';
import { parsePolicies, parseStates, supportsEsp, XfrmError, XfrmManager, DEFAULT_REQID } from '../../ipsec/xfrm';

const STATES = `src 198.18.0.2 dst 198.18.0.1
	proto esp spi 0x00001001 reqid 5 mode transport
	replay-window 32 
	aead rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 128
	anti-replay context: seq 0x0, oseq 0x0, bitmap 0x00000000
	sel src 198.18.0.2/32 dst 198.18.0.1/32 proto udp dport 6784 
src 198.18.0.1 dst 198.18.0.2
	proto esp spi 0x00001000 reqid 2004221953 mode transport
	replay-window 0 flag esn
	aead rfc4106(gcm(aes)) 0xaabbccddeeff00112233445566778899aabbccdd 128
	anti-replay esn context:
	 seq-hi 0x0, seq 0x0, oseq-hi 0x0, oseq 0x0
	 replay_window 256, bitmap-length 8
	 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 
	sel src 198.18.0.1/32 dst 198.18.0.2/32 proto udp dport 6784 
`;

const POLICIES = `src 198.18.0.1/32 dst 198.18.0.2/32 proto udp dport 6784 
	dir out priority 0 ptype main 
	tmpl src 198.18.0.1 dst 198.18.0.2
		proto esp reqid 2004221953 mode transport
src 10.0.0.0/8 dst 10.1.0.0/16 
	dir fwd priority 10 ptype main 
src 0.0.0.0/0 dst 0.0.0.0/0 
	socket in priority 0 ptype main 
`;

test('parses ip xfrm state text (plain and ESN states)', () => {
  const s = parseStates(STATES);
  assert.equal(s.length, 2);
  assert.deepEqual(s[0], {
    src: '198.18.0.2', dst: '198.18.0.1', esn: false, proto: 'esp', spi: 0x1001, reqid: 5, mode: 'transport',
    aead: { alg: 'rfc4106(gcm(aes))', keyHex: '0x0102030405060708090a0b0c0d0e0f1011121314', icvBits: 128 },
    sel: { src: '198.18.0.2', dst: '198.18.0.1', proto: 'udp', dport: 6784 },
  });
  assert.equal(s[1].esn, true);
  assert.equal(s[1].reqid, 2004221953);
  assert.deepEqual(parseStates(''), []);
});

test('parses ip xfrm policy text; socket policies are skipped', () => {
  const p = parsePolicies(POLICIES);
  assert.equal(p.length, 2);
  assert.deepEqual(p[0], {
    src: '198.18.0.1', dst: '198.18.0.2', proto: 'udp', dport: 6784, dir: 'out',
    tmpl: { src: '198.18.0.1', dst: '198.18.0.2', proto: 'esp', reqid: 2004221953, mode: 'transport' },
  });
  assert.deepEqual(p[1], { src: '10.0.0.0/8', dst: '10.1.0.0/16', proto: undefined, dport: undefined, dir: 'fwd' });
});

test('on this kernel: supportsEsp false with the reason; failed install leaves nothing, leaks no key; removeAll takes only ours', async () => {
  const ns = `h7-xfrm-${randomBytes(3).toString('hex')}`;
  await run(['ip', 'netns', 'add', ns]);
  try {
    const ctx = { netns: ns };
    const log = new MemoryLogger();
    const sup = await supportsEsp(ctx, log);
    assert.equal(sup.ok, false);
    assert.match(sup.reason ?? '', /^kernel lacks ESP \(ip xfrm state add .*proto esp.*rfc4106\(gcm\(aes\)\).* failed: .+\)$/);
    assert.doesNotMatch(sup.reason ?? '', /0x[0-9a-f]{40}/, 'the probe key is not in the reason');
    assert.equal((await run(['ip', '-n', ns, 'xfrm', 'state'])).stdout.trim(), '');

    const xm = new XfrmManager({ ctx, log, port: 6784 });
    const keys = deriveEspKeys(randomBytes(32), newEspNonce(), newEspNonce());
    const key = keys.out.keyBlob.toString('hex');
    await assert.rejects(xm.install({ local: '198.18.0.1', remote: '198.18.0.2', keys }), (e: unknown) => {
      assert.ok(e instanceof XfrmError, String(e));
      assert.ok(!JSON.stringify({ m: e.message, c: e.context }).includes(key), 'no key material in the error');
      return true;
    });
    assert.ok(!JSON.stringify(log.records).includes(key), 'no key material in the log');
    assert.deepEqual(await xm.list(), { states: [], policies: [] }, 'a failed batch applies nothing');
    assert.equal(xm.stats().errors, 1);

    // policies do exist on this kernel: two of ours (as install would make them) and two foreign ones
    const pol = (src: string, dst: string, dir: string, reqid: number, port = 6784) => run(['ip', '-n', ns, 'xfrm', 'policy', 'add',
      'src', `${src}/32`, 'dst', `${dst}/32`, 'proto', 'udp', 'dport', String(port), 'dir', dir,
      'tmpl', 'src', src, 'dst', dst, 'proto', 'esp', 'reqid', String(reqid), 'mode', 'transport']);
    await pol('198.18.0.1', '198.18.0.2', 'out', DEFAULT_REQID);
    await pol('198.18.0.2', '198.18.0.1', 'in', DEFAULT_REQID);
    await pol('198.18.0.1', '198.18.0.3', 'out', DEFAULT_REQID);
    await pol('198.18.0.1', '198.18.0.2', 'out', 42, 4789);
    await pol('198.18.0.9', '198.18.0.1', 'in', 43);
    const l = await xm.list();
    assert.equal(l.states.length, 0);
    assert.deepEqual(l.policies.map((p) => `${p.src}>${p.dst}:${p.dir}:${p.dport}`).sort(),
      ['198.18.0.1>198.18.0.2:out:6784', '198.18.0.1>198.18.0.3:out:6784', '198.18.0.2>198.18.0.1:in:6784']);

    assert.equal(await xm.removePeer('198.18.0.1', '198.18.0.2'), 2);
    assert.deepEqual((await xm.list()).policies.map((p) => p.dst), ['198.18.0.3']);
    assert.equal(await xm.removeAll(), 1);
    assert.equal(await xm.removeAll(), 0, 'idempotent');
    const left = parsePolicies((await run(['ip', '-n', ns, 'xfrm', 'policy'])).stdout);
    assert.deepEqual(left.map((p) => p.tmpl?.reqid).sort(), [42, 43], 'foreign policies untouched');

    await assert.rejects(xm.removePeer('198.18.0.1', 'fe80::1'), UsageError);
    await assert.rejects(xm.install({ local: '198.18.0.1', remote: '198.18.0.1', keys }), UsageError);
  } finally {
    await run(['ip', 'netns', 'del', ns], { allowFail: true });
  }
});
