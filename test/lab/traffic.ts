// Traffic helpers for netns tests: reachability polls, iperf3 runs, underlay captures, raw UDP.
import * as fs from 'fs';
import * as path from 'path';
import { spawn } from 'child_process';
import type { Container, Lab } from './lab';
import { run, waitFor } from './exec';

/** A remote address is reachable once the owning router's announcement arrived: poll with single pings. */
export async function pingable(c: Container, addr: string, timeoutMs = 20_000): Promise<void> {
  await waitFor(`${c.name} to ping ${addr}`, async () => (await c.exec(['ping', '-c', '1', '-W', '1', addr], { allowFail: true })).code === 0, { timeoutMs, intervalMs: 200 });
}

export async function iperf(client: Container, server: Container, serverAddr: string, args: string[] = []): Promise<any> {
  const port = String(5201 + Math.floor(Math.random() * 1000));
  const srv = server.exec(['iperf3', '-s', '-1', '-p', port], { allowFail: true, timeoutMs: 60_000 });
  await waitFor('iperf3 server', async () => (await run(['ip', 'netns', 'exec', server.ns, 'ss', '-ltn'], { allowFail: true })).stdout.includes(`:${port}`), { timeoutMs: 5000, intervalMs: 50 });
  const r = await client.exec(['iperf3', '-c', serverAddr, '-p', port, '-t', '2', '-J', ...args], { timeoutMs: 60_000 });
  await srv;
  return JSON.parse(r.stdout);
}

/** Captures sleeve traffic on the underlay bridge while fn runs; returns the raw pcap bytes. */
export async function capture(lab: Lab, fn: () => Promise<void>, filter = 'udp port 6783', opts: { allowEmpty?: boolean } = {}): Promise<Buffer> {
  const file = path.join(lab.tmp, `cap-${Date.now()}.pcap`);
  const td = spawn('ip', ['netns', 'exec', lab.underlay, 'tcpdump', '-i', 'br0', '--immediate-mode', '-U', '-s', '0', '-w', file, ...filter.split(' ')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  td.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const exited = new Promise<void>((r) => td.on('exit', () => r()));
  try {
    // tcpdump says "listening on" once the capture is attached: only then can nothing be missed
    await waitFor('tcpdump to listen', () => err.includes('listening on'), { timeoutMs: 15_000, intervalMs: 20 });
    await fn();
    await new Promise((r) => setTimeout(r, 300));
  } finally {
    td.kill('SIGINT');
    await exited;
  }
  const bytes = fs.readFileSync(file);
  if (bytes.length <= 24 && !opts.allowEmpty) throw new Error(`tcpdump captured nothing: ${err.trim()}`);
  return bytes;
}

/** Sends UDP datagrams (hex payloads) from inside a namespace. */
export async function sendUdp(ns: string, addr: string, port: number, payloadsHex: string[]): Promise<void> {
  const script = `const s=require('dgram').createSocket('udp4');const p=${JSON.stringify(payloadsHex)};let i=0;const next=()=>{if(i>=p.length){s.close();return;}s.send(Buffer.from(p[i++],'hex'),${port},'${addr}',next)};next();`;
  await run(['ip', 'netns', 'exec', ns, process.execPath, '-e', script]);
}

export interface CapturedPacket { src: string; dst: string; proto: number; sport: number; dport: number; payload: Buffer }

/** IPv4 packets of a pcap (Ethernet link type); ports and payload are set for UDP. */
export function ipv4Packets(pcap: Buffer): CapturedPacket[] {
  const out: CapturedPacket[] = [];
  let off = 24;
  while (off + 16 <= pcap.length) {
    const incl = pcap.readUInt32LE(off + 8);
    const pkt = pcap.subarray(off + 16, off + 16 + incl);
    off += 16 + incl;
    if (pkt.length < 34 || pkt.readUInt16BE(12) !== 0x0800) continue;
    const ihl = (pkt[14] & 0x0f) * 4;
    const proto = pkt[14 + 9];
    const ip = (o: number) => [...pkt.subarray(o, o + 4)].join('.');
    const udp = proto === 17 && pkt.length >= 14 + ihl + 8;
    out.push({
      src: ip(14 + 12), dst: ip(14 + 16), proto,
      sport: udp ? pkt.readUInt16BE(14 + ihl) : 0,
      dport: udp ? pkt.readUInt16BE(14 + ihl + 2) : 0,
      payload: Buffer.from(pkt.subarray(14 + ihl + (udp ? 8 : 0))),
    });
  }
  return out;
}

/** UDP payloads of the IPv4/UDP packets to dstIp in a pcap. */
export function udpPayloads(pcap: Buffer, dstIp: string): Buffer[] {
  return ipv4Packets(pcap).filter((p) => p.proto === 17 && p.dst === dstIp).map((p) => p.payload);
}
