// Runs INSIDE the UML guest (test/vm/ipsec.test.ts boots it): kernel ESP on a hand-built VXLAN between
// two namespaces, with the SAs and policies installed by ipsec/xfrm.ts from keys derived by ipsec/keys.ts.
// Named *.guest.ts so the host's test runner never runs it directly: on the host kernel it cannot pass.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { run } from '../../lab/exec';
import { ipBatch } from '../../../host/ip';
import { MemoryLogger } from '../../../lib/log';
import { deriveEspKeys, newEspNonce, spiHex, EspKeys } from '../../../ipsec/keys';
import { XfrmManager, supportsEsp, parsePolicies, parseStates, DEFAULT_REQID } from '../../../ipsec/xfrm';

const PORT = 6784;
const sfx = randomBytes(3).toString('hex');
const A = { ns: `ka-${sfx}`, veth: `kva-${sfx}`, u: '198.18.2.1', o: '10.44.0.1', mac: '02:44:00:00:00:01' };
const B = { ns: `kb-${sfx}`, veth: `kvb-${sfx}`, u: '198.18.2.2', o: '10.44.0.2', mac: '02:44:00:00:00:02' };

// Progress with elapsed time on stderr: UML is slow on a busy host, and this tells where the time goes.
const T0 = Date.now();
function step(what: string): void {
  process.stderr.write(`guest +${((Date.now() - T0) / 1000).toFixed(1)}s ${what}\n`);
}

function inGuest(): void {
  assert.ok(process.env.WEAVE_IN_VM, 'this file runs inside the UML guest (test/vm/ipsec.test.ts), not on the host kernel');
}

async function ping(from: typeof A, to: typeof A, count = 3): Promise<boolean> {
  const r = await run(['ip', 'netns', 'exec', from.ns, 'ping', '-n', '-q', '-c', String(count), '-i', '0.2', '-W', '1', to.o], { allowFail: true, timeoutMs: 20_000 });
  return r.code === 0;
}

interface Capture { esp: string[]; plain: string[]; spis: Set<number>; raw: string }

/**
 * Captures ESP and UDP-to-VXLAN-port packets on B's underlay veth while `action` runs, then until at
 * least `expect` packets are printed (or 5 s pass: fewer is then for the caller's assertions to judge).
 */
async function capture(expect: number, action: () => Promise<void>): Promise<Capture> {
  // immediate mode: without it tcpdump holds packets in a ring block and a stop loses the last ones
  const p = spawn('ip', ['netns', 'exec', B.ns, 'tcpdump', '--immediate-mode', '-l', '-n', '-i', B.veth, `esp or udp port ${PORT}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  p.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
  const exited = new Promise<void>((resolve) => p.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`tcpdump did not start within 20 s: ${err}`)), 20_000);
    p.stderr.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      if (/listening on/.test(err)) { clearTimeout(t); resolve(); }
    });
    p.once('close', (code) => { clearTimeout(t); reject(new Error(`tcpdump exited (${code}): ${err}`)); });
  });
  try {
    await action();
    const deadline = Date.now() + 5000;
    while (out.split('\n').filter((l) => l.trim() !== '').length < expect && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
  } finally {
    p.kill('SIGINT'); // tcpdump flushes what it has and prints its counts
    await exited;
  }
  const lines = out.split('\n').filter((l) => l.trim() !== '');
  const esp = lines.filter((l) => / ESP\(spi=0x[0-9a-f]+/.test(l));
  const plain = lines.filter((l) => new RegExp(`\\.${PORT}: `).test(l) && !/ESP\(/.test(l));
  const spis = new Set(esp.map((l) => parseInt(/spi=(0x[0-9a-f]+)/.exec(l)![1], 16)));
  return { esp, plain, spis, raw: out + err };
}

async function setupVxlan(): Promise<void> {
  await run(['ip', 'netns', 'add', A.ns]);
  await run(['ip', 'netns', 'add', B.ns]);
  await run(['ip', 'link', 'add', A.veth, 'netns', A.ns, 'type', 'veth', 'peer', 'name', B.veth, 'netns', B.ns]);
  for (const [me, peer] of [[A, B], [B, A]]) {
    // the part the router's host module will own: a VXLAN device without learning, FDB + neighbour by hand
    await ipBatch({ netns: me.ns }, [
      'link set lo up',
      `addr add ${me.u}/24 dev ${me.veth}`,
      `link set ${me.veth} up`,
      `link add vx42 type vxlan id 42 dstport ${PORT} local ${me.u} dev ${me.veth} nolearning`,
      `link set vx42 address ${me.mac} mtu 1350 up`,
      `addr add ${me.o}/24 dev vx42`,
      `neigh replace ${peer.o} lladdr ${peer.mac} dev vx42 nud permanent`,
    ]);
    await run(['bridge', '-n', me.ns, 'fdb', 'add', peer.mac, 'dev', 'vx42', 'dst', peer.u, 'self', 'permanent']);
  }
}

test('supportsEsp: ok in the guest kernel, and the probe leaves no state behind', async () => {
  inGuest();
  const ns = `kp-${sfx}`;
  await run(['ip', 'netns', 'add', ns]);
  try {
    assert.deepEqual(await supportsEsp({ netns: ns }), { ok: true });
    assert.equal((await run(['ip', '-n', ns, 'xfrm', 'state'])).stdout.trim(), '');
  } finally {
    await run(['ip', 'netns', 'del', ns], { allowFail: true });
  }
});

test('VXLAN between two namespaces is ESP on the wire with our SAs; rekey; removePeer fails closed; removeAll takes only ours', async () => {
  inGuest();
  try {
    step('setting up namespaces and VXLAN');
    await setupVxlan();
    step('VXLAN ready');
    const log = new MemoryLogger();
    const xa = new XfrmManager({ ctx: { netns: A.ns }, log, port: PORT });
    const xb = new XfrmManager({ ctx: { netns: B.ns }, log, port: PORT });

    // someone else's IPsec between the same addresses (another port, another reqid): must survive us
    await run(['ip', '-n', A.ns, 'xfrm', 'state', 'add', 'src', A.u, 'dst', B.u, 'proto', 'esp', 'spi', '0x4242', 'reqid', '42',
      'mode', 'transport', 'aead', 'rfc4106(gcm(aes))', '0x' + 'ab'.repeat(20), '128', 'sel', 'src', A.u, 'dst', B.u, 'proto', 'udp', 'dport', '4789']);
    await run(['ip', '-n', A.ns, 'xfrm', 'policy', 'add', 'src', `${A.u}/32`, 'dst', `${B.u}/32`, 'proto', 'udp', 'dport', '4789', 'dir', 'out',
      'tmpl', 'src', A.u, 'dst', B.u, 'proto', 'esp', 'reqid', '42', 'mode', 'transport']);

    // the handshake's session key and the two nonces the mesh exchanges; each side derives on its own
    const session = randomBytes(32);
    const install = async (na: Buffer, nb: Buffer): Promise<{ ka: EspKeys; kb: EspKeys }> => {
      const ka = deriveEspKeys(session, na, nb);
      const kb = deriveEspKeys(session, nb, na);
      assert.equal(ka.out.spi, kb.in.spi);
      assert.deepEqual(ka.out.keyBlob, kb.in.keyBlob);
      const ra = await xa.install({ local: A.u, remote: B.u, keys: ka });
      await xb.install({ local: B.u, remote: A.u, keys: kb });
      assert.ok(ra.added >= 2, JSON.stringify(ra));
      return { ka, kb };
    };

    step('installing SAs');
    const first = await install(newEspNonce(), newEspNonce());
    assert.deepEqual(await xa.install({ local: A.u, remote: B.u, keys: first.ka }), { added: 0, removed: 0, unchanged: 4 }, 'a second install changes nothing');
    const la = await xa.list();
    assert.deepEqual(la.states.map((s) => `${s.src}>${s.dst} ${spiHex(s.spi)} ${s.dport}`).sort(),
      [`${A.u}>${B.u} ${spiHex(first.ka.out.spi)} ${PORT}`, `${B.u}>${A.u} ${spiHex(first.ka.in.spi)} ${PORT}`].sort());
    assert.deepEqual(la.policies.map((p) => `${p.src}>${p.dst} ${p.dir} ${p.dport}`).sort(), [`${A.u}>${B.u} out ${PORT}`, `${B.u}>${A.u} in ${PORT}`]);

    step('capture 1 (ESP)');
    let c = await capture(6, async () => assert.ok(await ping(A, B), 'ping over VXLAN+ESP'));
    assert.ok(c.esp.length >= 6, `ESP both ways (3 requests, 3 replies):\n${c.raw}`);
    assert.equal(c.plain.length, 0, `no plain VXLAN on the wire:\n${c.raw}`);
    assert.deepEqual([...c.spis].sort(), [first.ka.out.spi, first.ka.in.spi].sort(), 'the wire carries our derived SPIs, both directions');

    // reconnect: new nonces -> new keys and SPIs; old states replaced, policies kept
    step('rekey');
    const second = await install(newEspNonce(), newEspNonce());
    const spis2 = (await xa.list()).states.map((s) => s.spi).sort();
    assert.deepEqual(spis2, [second.ka.out.spi, second.ka.in.spi].sort(), 'only the new SAs remain');
    c = await capture(6, async () => assert.ok(await ping(A, B), 'ping after rekey'));
    assert.ok(c.esp.length >= 6, c.raw);
    assert.equal(c.plain.length, 0, c.raw);
    assert.deepEqual([...c.spis].sort(), spis2);

    // A forgets the peer, B still insists on ESP from A: the plain VXLAN A now sends is dropped by B
    step('removePeer on A');
    assert.equal(await xa.removePeer(A.u, B.u), 4);
    assert.deepEqual(await xa.list(), { states: [], policies: [] });
    assert.equal(await ping(A, B, 2), false, 'B must not accept plain VXLAN while its inbound policy stands');

    // weave reset on B: everything of ours goes, nothing else; plain VXLAN flows again (the FDB is the
    // router's to remove, not ipsec's)
    step('removeAll on B');
    assert.equal(await xb.removeAll(), 4);
    assert.deepEqual(await xb.list(), { states: [], policies: [] });
    c = await capture(6, async () => assert.ok(await ping(A, B), 'ping over plain VXLAN after removeAll'));
    assert.equal(c.esp.length, 0, c.raw);
    assert.ok(c.plain.length >= 6, `plain VXLAN now visible (so the capture would have seen it before):\n${c.raw}`);

    step('checking foreign entries');
    const foreignStates = parseStates((await run(['ip', '-n', A.ns, 'xfrm', 'state'])).stdout);
    const foreignPols = parsePolicies((await run(['ip', '-n', A.ns, 'xfrm', 'policy'])).stdout);
    assert.deepEqual(foreignStates.map((s) => [s.spi, s.reqid]), [[0x4242, 42]], 'the foreign state is untouched');
    assert.deepEqual(foreignPols.map((p) => [p.dport, p.tmpl?.reqid]), [[4789, 42]], 'the foreign policy is untouched');
    assert.ok(!foreignStates.some((s) => s.reqid === DEFAULT_REQID));
    assert.equal(xa.stats().errors + xb.stats().errors, 0);
    step('done');
  } finally {
    await run(['ip', 'netns', 'del', A.ns], { allowFail: true });
    await run(['ip', 'netns', 'del', B.ns], { allowFail: true });
  }
});
