// The TUN/UDP I/O contract (test/contract/tun-udp.contract.ts) against the koffi fallback.
import { silentLogger } from '../../lib/log';
import { loadFallbackIo } from '../../router/fallback-io';
import { describeTunUdp } from '../contract/tun-udp.contract';

describeTunUdp('koffi fallback (router/fallback-io.ts)', () => ({ io: loadFallbackIo(silentLogger()), offloads: false }));
