// A pod of the network-policy lab: runs inside the pod's network namespace, serves TCP and UDP on the
// given ports (TCP: accept and close; UDP: echo) and probes other pods on request, many at once.
// Protocol on stdin/stdout, one JSON object per line:
//   in:  {"id":1,"ip":"10.32.0.5","proto":"TCP"|"UDP","port":80,"timeoutMs":1000}
//   out: {"id":1,"ok":true|false,"ms":3}      first line: {"ready":true}
// A probe is one new connection (TCP connect; UDP: a datagram resent every 200 ms until the echo
// comes back), so conntrack never carries an old decision into a new scenario.
import * as dgram from 'dgram';
import * as net from 'net';
import * as readline from 'readline';

interface Probe { id: number; ip: string; proto: 'TCP' | 'UDP'; port: number; timeoutMs: number }

function serve(ports: number[]): Promise<void> {
  const ready: Array<Promise<void>> = [];
  for (const port of ports) {
    const t = net.createServer((s) => { s.on('error', () => undefined); s.end(); });
    ready.push(new Promise((r) => t.listen(port, '0.0.0.0', () => r())));
    const u = dgram.createSocket('udp4');
    u.on('message', (msg, rinfo) => u.send(msg, rinfo.port, rinfo.address));
    ready.push(new Promise((r) => u.bind(port, '0.0.0.0', () => r())));
  }
  return Promise.all(ready).then(() => undefined);
}

function probeTcp(p: Probe): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: p.ip, port: p.port });
    const done = (ok: boolean) => { clearTimeout(t); s.destroy(); resolve(ok); };
    const t = setTimeout(() => done(false), p.timeoutMs);
    s.on('connect', () => done(true));
    s.on('error', () => done(false));
  });
}

function probeUdp(p: Probe): Promise<boolean> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const msg = Buffer.from(`probe ${p.id}`);
    let iv: NodeJS.Timeout | undefined;
    const done = (ok: boolean) => { clearTimeout(t); if (iv) clearInterval(iv); s.close(); resolve(ok); };
    const t = setTimeout(() => done(false), p.timeoutMs);
    s.on('message', (m) => { if (m.equals(msg)) done(true); });
    s.on('error', () => done(false));
    s.connect(p.port, p.ip, () => {
      const send = () => s.send(msg, () => undefined);
      send();
      iv = setInterval(send, 200);
    });
  });
}

async function main(): Promise<void> {
  const ports = process.argv.slice(2).map(Number).filter((n) => n > 0);
  await serve(ports.length ? ports : [80, 81]);
  process.stdout.write(JSON.stringify({ ready: true }) + '\n');
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const p = JSON.parse(line) as Probe;
    const t0 = Date.now();
    (p.proto === 'TCP' ? probeTcp(p) : probeUdp(p)).then((ok) => {
      process.stdout.write(JSON.stringify({ id: p.id, ok, ms: Date.now() - t0 }) + '\n');
    });
  });
  rl.on('close', () => process.exit(0));
}

if (require.main === module) void main();
