// "Established, data not flowing": the carrier's stall reason passes through the overlay switch, and
// the text views never show such a connection as plainly established.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import type { MeshConnection } from '../../mesh/types';
import type { ConnectionStatus } from '../../mesh/status';
import { OverlaySwitch, type SubHandle, type SubManager, type SubStatus } from '../../router/overlay-switch';
import { renderConnection, renderSummary, type Report } from '../../api/views';
import { features } from './fastdp-fakes';

class Fixed implements SubManager {
  cb: { established(): void; failed(r: string): void } | null = null;
  constructor(readonly st: SubStatus) {}
  attach(_c: MeshConnection, cb: { established(): void; failed(r: string): void }): SubHandle {
    this.cb = cb;
    return { onMessage() {}, close() {}, status: () => this.st };
  }
}

function conn(): MeshConnection {
  return {
    id: 'x', outbound: true, remoteAddr: '198.18.0.12:6783', localAddr: '198.18.0.11:1', encrypted: true, sessionKey: null, dataKey: null,
    local: features('02:00:00:00:00:01', ['sleeve']), remote: features('02:00:00:00:00:02', ['sleeve']),
    send() {}, close() {}, onMessage() {}, onClose() {},
  };
}

test('the switch passes the carrier\'s stall reason through', () => {
  const sl = new Fixed({ overlay: 'sleeve', encrypted: true, mtu: 1410, stalled: 'no route to its prefixes' });
  const sw = new OverlaySwitch({ overlays: [{ name: 'fastdp', manager: null, optional: true }, { name: 'sleeve', manager: sl }], clock: new FakeClock(), log: silentLogger() });
  const h = sw.attach(conn(), { established() {}, failed() {} });
  sl.cb!.established();
  assert.deepEqual(h.status(), { overlay: 'sleeve', encrypted: true, mtu: 1410, stalled: 'no route to its prefixes', reason: 'disabled by flag' });
});

test('views: a stalled connection shows as stalled with its reason, and is not counted as established', () => {
  const base: ConnectionStatus = { address: '198.18.0.12:6783', outbound: true, state: 'established', info: 'established over sleeve', peerName: '02:00:00:00:00:02', peerNickname: 'h2', overlay: 'sleeve', encrypted: true, mtu: 1410 };
  const stalled: ConnectionStatus = { ...base, info: 'data not flowing over sleeve: no route to its prefixes', stalled: 'no route to its prefixes' };
  assert.match(renderConnection(base), /^-> 198\.18\.0\.12:6783\s+established encrypted/);
  const line = renderConnection(stalled);
  assert.match(line, /^-> 198\.18\.0\.12:6783\s+stalled\s+encrypted\s+sleeve/);
  assert.match(line, /data not flowing over sleeve: no route to its prefixes/);
  assert.doesNotMatch(line, /\bestablished\b/);
  const report = {
    version: 'x',
    router: {
      name: '02:00:00:00:00:01', nickname: 'h1', uid: 'u', encryption: true, trustedSubnets: [], protocolMinVersion: 1, protocolMaxVersion: 1, peerDiscovery: true,
      listen: '0.0.0.0:6783', connLimit: 200, peers: [], connections: [base, { ...stalled, address: '198.18.0.13:6783' }], targets: [], routes: [],
      port: 6783, crypto: 'sodium', dataDir: '/tmp', pid: 1, startedAt: 0,
    },
  } as Report;
  assert.match(renderSummary(report), /Connections: 2 \(1 established, 1 stalled\)/);
});
