// The transport contract (test/contract/transport.contract.ts) against TcpTransport over loopback.
import * as net from 'net';
import { realClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';
import { loadCrypto } from '../../mesh/crypto';
import { TcpTransport } from '../../mesh/tcp-transport';
import { waitFor } from '../lab/exec';
import { contractFeatures, describeTransport, type TransportEnd, type TransportFactory } from '../contract/transport.contract';

const sodium = loadCrypto('sodium', silentLogger());
/** small enough that the contract's burst passes it; the default (64 MiB) would only cost time */
const SEND_QUEUE = 1 << 20;

describeTransport('TcpTransport over loopback', (): TransportFactory => {
  const made: TcpTransport[] = [];
  return {
    async make({ password, listen }) {
      const t = new TcpTransport({ host: '127.0.0.1', port: 0, password: password === null ? null : Buffer.from(password), crypto: sodium, clock: realClock, log: silentLogger(), maxSendQueueBytes: SEND_QUEUE });
      made.push(t);
      const features = contractFeatures();
      t.setLocalFeatures(features);
      const end: TransportEnd = { t, features, addr: '', accepted: [], refused: [] };
      if (listen) {
        await t.listen((c) => end.accepted.push(c), (addr, f) => end.refused.push({ addr, f }));
        end.addr = `127.0.0.1:${t.address().port}`;
      }
      return end;
    },
    async deadAddress() {
      // a port that was free a moment ago and that nobody listens on now
      const s = net.createServer();
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
      const port = (s.address() as net.AddressInfo).port;
      await new Promise<void>((r) => s.close(() => r()));
      return `127.0.0.1:${port}`;
    },
    until: (pred, what) => waitFor(what, pred, { timeoutMs: 10_000, intervalMs: 5 }).then(() => undefined),
    settle: (p) => p,
    wait: (ms) => new Promise((r) => setTimeout(r, ms)),
    sendQueueLimitBytes: SEND_QUEUE,
    async cleanup() {
      for (const t of made) await t.close();
    },
  };
});
