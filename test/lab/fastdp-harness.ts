// One side of a fastdp lab pair, run inside a host namespace (`ip netns exec NS node fastdp-harness.js
// '<json config>'`). It builds exactly the pieces the daemon will: a lazy VxlanReconciler (the device and
// its guard) + RouteReconciler (kernel state), NativeHeartbeatIo (DF UDP on the VTEP address) opened
// through DeviceHeartbeatIo once the device exists, FastDp, an OverlaySwitch with FastDp
// and a stand-in sleeve (always established: the real sleeve needs the TUN and is tested elsewhere), and
// FastDpRoutes for one prefix behind each side. The mesh connection is a plain TCP socket carrying
// length-prefixed frames (u32 length, u8 type, payload): first the features as JSON, then Msg.Overlay.
// It prints one JSON line per status change and every 200 ms; SIGTERM tears the kernel state down.
import * as net from 'net';
import { realClock } from '../../lib/clock';
import { rootLogger } from '../../lib/log';
import { Msg, type Features, type MeshConnection } from '../../mesh/types';
import { RouteReconciler } from '../../host/routes';
import { VxlanReconciler, vtepIpFor, vtepMacFor, DEFAULT_VNI, VXLAN_OVERHEAD } from '../../host/vxlan';
import { DeviceHeartbeatIo, FastDp, NativeHeartbeatIo } from '../../router/fastdp';
import { OverlaySwitch, FastDpRoutes, type SubManager } from '../../router/overlay-switch';
import { loadTunIo } from '../../router/native';
import { supportsEsp } from '../../ipsec/xfrm';

export interface HarnessConfig {
  role: 'listen' | 'dial';
  name: string;
  underlay: string;
  peerUnderlay: string;
  ctlPort: number;
  /** a /32 on lo standing for the containers behind this host */
  prefix: string;
  peerName: string;
  peerPrefix: string;
  underlayMtu?: number;
  climbBackMs?: number;
  noFastdp?: boolean;
  /** session key (hex) to pretend a password is set */
  sessionKey?: string;
}

async function main(): Promise<void> {
  const cfg = JSON.parse(process.argv[2]) as HarnessConfig;
  const log = rootLogger({ level: 'warn', destination: 2 });
  const ctx = {};
  const routes = new RouteReconciler({ ctx, log, clock: realClock });
  const mtu = (cfg.underlayMtu ?? 1500) - VXLAN_OVERHEAD;
  const vtep = vtepIpFor(cfg.name);
  const vx = new VxlanReconciler({ ctx, log, clock: realClock, routes, lazy: true, config: { name: 'weave-vx', vni: DEFAULT_VNI, port: 6784, local: cfg.underlay, mtu, mac: vtepMacFor(cfg.name), address: vtep } });
  await vx.reconcile();
  vx.start(1000);
  routes.start(1000);
  const io = loadTunIo(log);
  if (!io) throw new Error('native addon missing');
  const esp = await supportsEsp(ctx, log);
  let fd: FastDp | null = null;
  if (!cfg.noFastdp) {
    fd = new FastDp({ name: cfg.name, clock: realClock, log, host: vx, io: new DeviceHeartbeatIo(() => new NativeHeartbeatIo(io, vtep, 6785, 9000), vx, log), underlay: cfg.underlay, mac: vtepMacFor(cfg.name), vtep, mtu, esp, heartbeatMs: 500, deadMs: 2000 });
  }
  const sleeve: SubManager = {
    attach(_c, cb) {
      setImmediate(() => cb.established());
      return { onMessage() {}, close() {}, status: () => ({ overlay: 'sleeve', encrypted: _c.encrypted, mtu: 1410 }) };
    },
  };
  const sw = new OverlaySwitch({ overlays: [{ name: 'fastdp', manager: fd, optional: true }, { name: 'sleeve', manager: sleeve }], clock: realClock, log, climbBackMs: cfg.climbBackMs ?? 3000 });
  const table = new Map([[cfg.name, { prefixes: [cfg.prefix] }], [cfg.peerName, { prefixes: [cfg.peerPrefix] }]]);
  const fr = new FastDpRoutes({
    name: cfg.name, log,
    routes: { unicastNextHop: (d) => (d === cfg.peerName ? d : undefined), on() {}, off() {} },
    prefixes: { all: () => table, local: () => [cfg.prefix], onChange: () => () => undefined },
    carrier: sw, vtepOf: (p) => fd?.remoteVtep(p), sink: routes,
  });

  const local: Features = { name: cfg.name, nickname: cfg.name, uid: 'h', connId: 'lab', overlays: sw.advertised(), overlayParams: fd ? { fastdp: fd.overlayParams() } : {}, trusted: false, listenPort: cfg.ctlPort };
  const sock = await new Promise<net.Socket>((resolve, reject) => {
    if (cfg.role === 'listen') {
      const srv = net.createServer((s) => { srv.close(); resolve(s); });
      srv.on('error', reject);
      srv.listen(cfg.ctlPort, cfg.underlay, () => process.stdout.write(JSON.stringify({ listening: true }) + '\n'));
    } else {
      const s = net.connect(cfg.ctlPort, cfg.peerUnderlay, () => resolve(s));
      s.on('error', reject);
    }
  });
  sock.setNoDelay(true);
  const sendFrame = (type: number, payload: Uint8Array) => {
    const h = Buffer.alloc(5);
    h.writeUInt32BE(payload.length + 1, 0);
    h[4] = type;
    sock.write(Buffer.concat([h, payload]));
  };
  sendFrame(0, Buffer.from(JSON.stringify(local)));
  let handle: ReturnType<OverlaySwitch['attach']> | null = null;
  let buf = Buffer.alloc(0);
  let lastLine = '';
  const report = (force: boolean) => {
    const st = handle ? handle.status() : null;
    const line = JSON.stringify({ carrier: sw.carrier(cfg.peerName), status: st, vtep, routes: fr.desired().map((r) => `${r.dst} via ${r.via}`) });
    if (force || line !== lastLine) process.stdout.write(line + '\n');
    lastLine = line;
  };
  sw.onChange(() => report(true));
  const timer = setInterval(() => report(true), 200);
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const len = buf.readUInt32BE(0);
      const type = buf[4];
      const payload = buf.subarray(5, 4 + len);
      buf = buf.subarray(4 + len);
      if (type === 0) {
        const remote = JSON.parse(payload.toString()) as Features;
        const key = cfg.sessionKey ? Buffer.from(cfg.sessionKey, 'hex') : null;
        const conn: MeshConnection = {
          id: 'lab', outbound: cfg.role === 'dial', remoteAddr: `${cfg.peerUnderlay}:${cfg.ctlPort}`, localAddr: `${cfg.underlay}:0`, encrypted: key !== null, sessionKey: key, dataKey: key,
          local, remote, send: sendFrame, close: (r) => { process.stderr.write(`connection closed: ${r}\n`); sock.destroy(); }, onMessage() {}, onClose() {},
        };
        handle = sw.attach(conn, { established: () => report(true), failed: (r) => process.stdout.write(JSON.stringify({ failed: r }) + '\n') });
      } else if (type === Msg.Overlay && handle) {
        handle.onMessage(payload);
      }
    }
  });
  const shutdown = async () => {
    clearInterval(timer);
    handle?.close();
    fr.close();
    fd?.close();
    routes.stop();
    await vx.destroy();
    process.exit(0);
  };
  process.on('SIGTERM', () => { shutdown().catch((e) => { process.stderr.write(String(e) + '\n'); process.exit(1); }); });
  sock.on('close', () => process.stderr.write('control connection closed\n'));
}

main().catch((e) => {
  process.stderr.write(`harness failed: ${(e as Error).stack}\n`);
  process.exit(1);
});
