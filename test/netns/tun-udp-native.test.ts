// The TUN/UDP I/O contract (test/contract/tun-udp.contract.ts) against the project's addon.
import { silentLogger } from '../../lib/log';
import { loadTunIo } from '../../router/native';
import { describeTunUdp } from '../contract/tun-udp.contract';

describeTunUdp('native addon (native/tunio.c)', () => {
  const io = loadTunIo(silentLogger());
  if (!io) throw new Error('the native addon must load here (npm ci builds it: node scripts/build-native.js)');
  return { io, offloads: true };
});
