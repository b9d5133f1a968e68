// Fuzz targets: what each gossip channel's receiver does with a message, not just its decoder: the
// same inputs as the decoder targets (targets-mesh.ts), fed to the real gossiper (weaveDNS's store,
// the prefix table, the links table (asks and answers), the IPAM allocator with its ring, Paxos and held records), which
// must refuse with ProtocolError (the mesh closes that connection) or take it without throwing
// anything else. The gossiper is rebuilt now and then so state from earlier cases stays bounded.
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { ProtocolError } from '../../lib/errors';
import type { Gossiper } from '../../mesh/types';
import { DnsStore } from '../../dns/records';
import { PrefixTable } from '../../router/prefixes';
import { LinksTable } from '../../ui/links';
import { Allocator } from '../../ipam/allocator';
import { MemoryStore } from '../../ipam/store';
import { FakeIpamNet } from '../fakes/ipam-gossip';
import { mulberry32 } from '../fakes/rng';
import { int } from './mutate';
import type { Target } from './engine';
import { targetNamed } from './targets';

const P1 = '02:00:00:00:00:01';
const P2 = '02:00:00:00:00:02';
const REBUILD = 5000;

function gossiperTarget(name: string, like: string, make: () => Gossiper, unicast = false): Target {
  let g: Gossiper | undefined;
  let n = 0;
  return {
    name,
    seeds: () => targetNamed(like).seeds(),
    structured: (r) => targetNamed(like).structured!(r),
    run(b, r) {
      if (!g || n++ % REBUILD === 0) g = make();
      const how = int(r, unicast ? 3 : 2);
      if (how === 0) g.onGossip(b);
      else if (how === 1) g.onGossipBroadcast(P2, b);
      else g.onGossipUnicast(P2, b);
    },
    expected: (e) => e instanceof ProtocolError,
  };
}

const clock = new FakeClock();

export const GOSSIPER_TARGETS: Target[] = [
  gossiperTarget('gossiper-dns', 'gossip-dns', () => new DnsStore({ self: P1, clock, log: silentLogger() })),
  gossiperTarget('gossiper-prefixes', 'gossip-prefixes', () => new PrefixTable(P1, clock, silentLogger())),
  gossiperTarget('gossiper-links', 'gossip-links', () => new LinksTable(P1, clock, silentLogger()), true),
  gossiperTarget('gossiper-ipam', 'gossip-ipam', () => {
    const net = new FakeIpamNet(clock, mulberry32(1));
    const { channel, knownPeers } = net.add(P1);
    net.add(P2);
    const a = new Allocator({ ourName: P1, ourNickname: 'a', range: '10.32.0.0/12', init: { mode: 'seed', peers: [P1, P2] }, clock, log: silentLogger(), channel, knownPeers, store: new MemoryStore(), requestTimeoutMs: 300 });
    net.setGossiper(P1, a);
    return a;
  }, true),
];
