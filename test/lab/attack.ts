// Hostile traffic for lab tests, built byte by byte in TypeScript (what ../shared/reference/attacks/
// vxinj.py does): a VXLAN frame from a non-peer carrying a spoofed inner IPv4/UDP packet, and a UDP
// listener inside a namespace that reports what reached it.
import { spawn, ChildProcess } from 'child_process';
import { waitFor } from './exec';

function ipv4Bytes(ip: string): Buffer {
  return Buffer.from(ip.split('.').map(Number));
}

function checksum(b: Buffer): number {
  let s = 0;
  for (let i = 0; i + 1 < b.length; i += 2) s += b.readUInt16BE(i);
  if (b.length & 1) s += b[b.length - 1] << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

export interface VxlanFrameSpec {
  vni: number;
  /** inner Ethernet destination: the receiving VXLAN device's MAC (host/vxlan.ts vtepMacFor(peer name)) */
  dstMac: string;
  srcMac?: string;
  srcIp: string;
  dstIp: string;
  sport?: number;
  dport: number;
  payload: Buffer;
}

/** VXLAN header + inner Ethernet + IPv4 + UDP (checksum 0: none, allowed over IPv4). Send it to UDP 6784. */
export function vxlanFrame(f: VxlanFrameSpec): Buffer {
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(f.sport ?? 40000, 0);
  udp.writeUInt16BE(f.dport, 2);
  udp.writeUInt16BE(8 + f.payload.length, 4);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + 8 + f.payload.length, 2);
  ip.writeUInt16BE(1, 4);
  ip[8] = 64;
  ip[9] = 17;
  ipv4Bytes(f.srcIp).copy(ip, 12);
  ipv4Bytes(f.dstIp).copy(ip, 16);
  ip.writeUInt16BE(checksum(ip), 10);
  const mac = (m: string) => Buffer.from(m.replace(/:/g, ''), 'hex');
  const eth = Buffer.concat([mac(f.dstMac), mac(f.srcMac ?? '02:00:00:c0:ff:ee'), Buffer.from([0x08, 0x00])]);
  const vx = Buffer.alloc(8);
  vx[0] = 0x08; // I flag: the VNI is valid
  vx.writeUInt32BE(f.vni << 8, 4);
  return Buffer.concat([vx, eth, ip, udp, f.payload]);
}

export interface UdpListener {
  /** datagrams received so far: "srcIp payload" */
  lines(): string[];
  stop(): Promise<void>;
}

/** A UDP listener on 0.0.0.0:port inside namespace ns (a process we start and stop by its pid). */
export async function udpListener(ns: string, port: number): Promise<UdpListener> {
  const script = `const s=require('dgram').createSocket('udp4');s.on('message',(m,r)=>process.stdout.write(r.address+' '+m.toString('latin1')+'\\n'));s.bind(${port},'0.0.0.0',()=>process.stdout.write('listening\\n'));`;
  const child: ChildProcess = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  const exited = new Promise<void>((r) => child.once('close', () => r()));
  await waitFor(`UDP listener on ${port} in ${ns}`, () => out.includes('listening\n'), { timeoutMs: 10_000, intervalMs: 20 });
  return {
    lines: () => out.split('\n').filter((l) => l && l !== 'listening'),
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
