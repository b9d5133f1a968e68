// A router whose DNS records file is damaged gets its records back from its peers even when every peer
// had dropped them (it had left the mesh): peers hold a departed origin's records, unresolvable, and
// hand them to it when it returns; it takes them, announces them again, and says so in recovery().
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import type { GossipChannel, GossipData } from '../../mesh/types';
import { DnsStore, FileDnsPersistence } from '../../dns/records';
import { readStateFile } from '../../lib/state-file';

const A = '02:00:00:00:00:0a';
const B = '02:00:00:00:00:0b';

class Channel implements GossipChannel {
  readonly name = 'dns';
  unicasts: Array<{ dst: string; msg: Uint8Array }> = [];
  broadcasts: GossipData[] = [];
  reachable = true;
  gossipUnicast(dst: string, msg: Uint8Array): boolean {
    if (!this.reachable) return false;
    this.unicasts.push({ dst, msg });
    return true;
  }
  gossipBroadcast(update: GossipData): void { this.broadcasts.push(update); }
  gossip(): void {}
}

function gossipTo(x: DnsStore, y: DnsStore): void {
  for (const msg of x.gossip()?.encode() ?? []) y.onGossip(msg);
}

test('a damaged records file: moved aside, named in recovery(); the peer that held our records hands them back and we announce them again', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'weave-dns-recovery-'));
  try {
    const clock = new FakeClock();
    const file = path.join(dir, 'dns.msgpack');
    const b1 = new DnsStore({ self: B, clock, log: silentLogger(), persistence: new FileDnsPersistence(file) });
    b1.add('web.weave.local', '10.32.0.1', 'c1');
    b1.add('gone.weave.local', '10.32.0.2', 'c2');
    b1.remove({ name: 'gone.weave.local' });
    const saved = readStateFile(file, 'dns-records');
    assert.ok(saved.status === 'ok' && saved.owner === B, 'saved as a checked state file with its owner');
    const a = new DnsStore({ self: A, clock, log: silentLogger() });
    const ch = new Channel();
    a.attach(ch);
    gossipTo(b1, a);
    a.updatePeers([A, B]);
    assert.deepEqual(a.lookup('web.weave.local'), ['10.32.0.1']);
    // b leaves: its names stop resolving on a, which holds them for b's return
    a.updatePeers([A]);
    assert.deepEqual(a.lookup('web.weave.local'), []);

    // b's file is damaged while it is down
    const bytes = fs.readFileSync(file);
    bytes[bytes.length - 2] ^= 0x10;
    fs.writeFileSync(file, bytes);
    let relearnedHook = 0;
    const b2 = new DnsStore({ self: B, clock, log: silentLogger(), persistence: new FileDnsPersistence(file), onOwnRelearned: () => { relearnedHook++; } });
    const bch = new Channel();
    b2.attach(bch);
    assert.deepEqual(b2.lookup('web.weave.local'), []);
    assert.ok(fs.readdirSync(dir).some((f) => f.startsWith('dns.msgpack.damaged-')), 'the damaged file is kept aside');
    const [r0] = b2.recovery();
    assert.equal(r0.file, 'dns.msgpack');
    assert.equal(r0.problem, 'checksum mismatch (bytes changed on disk)');
    assert.match(r0.action, /moved aside to dns\.msgpack\.damaged-.*; waiting for peers to hand our records back/);

    // b is back: a hands it its records (not resolvable on a until b announces them)
    ch.reachable = false;
    a.updatePeers([A, B]);
    assert.equal(ch.unicasts.length, 0, 'no route yet');
    ch.reachable = true;
    clock.advance(60_000);
    a.gc();
    assert.equal(ch.unicasts.length, 1, 'handed back on the next GC tick');
    assert.equal(ch.unicasts[0].dst, B);
    assert.equal(a.counters.handedBack, 2, 'the live record and the tombstone');
    assert.deepEqual(a.lookup('web.weave.local'), [], 'a does not resurrect them itself');
    for (const u of ch.unicasts) b2.onGossipUnicast(A, u.msg);
    assert.deepEqual(b2.lookup('web.weave.local'), ['10.32.0.1']);
    assert.ok(b2.all().some((e) => e.name === 'gone.weave.local.' && e.tombstone), 'the removal is remembered too');
    assert.equal(b2.counters.relearned, 2);
    assert.equal(relearnedHook, 1, 'the owner is told, to drop records of containers gone meanwhile');
    assert.equal(bch.broadcasts.length, 1, 'announced again to everyone');
    for (const m of bch.broadcasts[0].encode()) a.onGossipBroadcast(B, m);
    assert.deepEqual(a.lookup('web.weave.local'), ['10.32.0.1'], 'resolves mesh-wide again');
    const [r] = b2.recovery();
    assert.match(r.action, /2 own records re-learned and announced again/);
    assert.match(r.from!, new RegExp(`peers' gossip \\(records with us as origin, from ${A}\\)`));
    const again = readStateFile(file, 'dns-records');
    assert.ok(again.status === 'ok', 'written back intact');
    // handed back once: a second return sends nothing
    a.updatePeers([A]);
    gossipTo(b2, a);
    a.updatePeers([A, B]);
    assert.equal(ch.unicasts.length, 2, 'b left again with its records, and got them offered again');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('records held for a departed peer expire; a quick restart (peers still have them) re-learns without a hand-back broadcast', () => {
  const clock = new FakeClock();
  const a = new DnsStore({ self: A, clock, log: silentLogger(), departedKeepMs: 120_000 });
  const ch = new Channel();
  a.attach(ch);
  const b = new DnsStore({ self: B, clock, log: silentLogger() });
  b.add('x.weave.local', '10.32.0.5');
  gossipTo(b, a);
  a.updatePeers([A, B]);
  a.updatePeers([A]);
  clock.advance(120_000);
  a.gc();
  a.updatePeers([A, B]);
  assert.equal(ch.unicasts.length, 0, 'expired: nothing to hand back');

  // b restarts while a still has its records live
  const a2 = new DnsStore({ self: A, clock, log: silentLogger() });
  gossipTo(b, a2);
  const b2 = new DnsStore({ self: B, clock, log: silentLogger() });
  const bch = new Channel();
  b2.attach(bch);
  gossipTo(a2, b2);
  assert.deepEqual(b2.lookup('x.weave.local'), ['10.32.0.5']);
  assert.equal(bch.broadcasts.length, 0);
  const [r] = b2.recovery();
  assert.equal(r.problem, 'held none of our records (missing or lost)');
  assert.match(r.action, /1 own records re-learned/);
});
