// A CRI client (runtime.v1) for the lab: what kubelet does to a pod's network, through containerd's
// CRI. The protocol's descriptor comes from the containerd binary itself (compiled in, gzipped), as
// no registry or proto file is available offline; it is cached beside the lab's other artefacts.
// @grpc/grpc-js and @grpc/proto-loader are devDependencies, loaded only here.
import * as fs from 'fs';
import * as path from 'path';
import * as zlib from 'zlib';
import { CACHE_DIR } from './images';

const CONTAINERD = '/usr/bin/containerd';

/** The varint-length-prefixed FileDescriptorSet wrapping one FileDescriptorProto. */
function descriptorSet(fd: Buffer): Buffer {
  const len: number[] = [];
  let n = fd.length;
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    len.push(b);
  } while (n);
  return Buffer.concat([Buffer.from([0x0a, ...len]), fd]);
}

/**
 * Finds the gzipped FileDescriptorProto of package runtime.v1 in the binary: a gzip member that
 * inflates to a descriptor whose field 1 is its file name and field 2 the package "runtime.v1".
 */
export function extractCriDescriptor(binary: Buffer): Buffer {
  const magic = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00]);
  for (let i = binary.indexOf(magic); i !== -1; i = binary.indexOf(magic, i + 1)) {
    let fd: Buffer;
    try {
      fd = zlib.gunzipSync(binary.subarray(i, i + 200_000), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    } catch {
      continue; // not a whole gzip member: keep looking
    }
    if (!fd.includes('RunPodSandboxRequest') || fd[0] !== 0x0a) continue;
    const p = 2 + fd[1];
    if (fd[p] !== 0x12 || fd.subarray(p + 2, p + 2 + fd[p + 1]).toString() !== 'runtime.v1') continue;
    return descriptorSet(fd);
  }
  throw new Error(`the CRI runtime.v1 descriptor is not in ${CONTAINERD}`);
}

function descriptorFile(): string {
  const st = fs.statSync(CONTAINERD);
  const out = path.join(CACHE_DIR, `runtime.v1-${st.size}-${Math.floor(st.mtimeMs)}.fds`);
  if (!fs.existsSync(out)) {
    fs.mkdirSync(CACHE_DIR, { recursive: true });
    const tmp = `${out}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, extractCriDescriptor(fs.readFileSync(CONTAINERD)));
    fs.renameSync(tmp, out);
  }
  return out;
}

export interface PodConfig {
  name: string;
  namespace: string;
  uid: string;
  logDir: string;
  portMappings?: Array<{ containerPort: number; hostPort: number; protocol?: 'TCP' | 'UDP' }>;
}

export interface PodStatus { id: string; state: string; ip: string; netns: string; /** the sandbox's (pause) process */ pid: number }

/** The calls kubelet makes for a pod's sandbox, over containerd's CRI socket. */
export class CriClient {
  private readonly rt: any;
  private readonly grpc: any;

  constructor(socket: string) {
    this.grpc = require('@grpc/grpc-js');
    const loader = require('@grpc/proto-loader');
    const def = loader.loadFileDescriptorSetFromBuffer(fs.readFileSync(descriptorFile()), { keepCase: true, longs: String, defaults: true, enums: String });
    const pkg = this.grpc.loadPackageDefinition(def);
    this.rt = new pkg.runtime.v1.RuntimeService(`unix://${socket}`, this.grpc.credentials.createInsecure());
  }

  private call<T = any>(method: string, req: unknown, timeoutMs = 120_000): Promise<T> {
    return new Promise((resolve, reject) => {
      this.rt[method](req, { deadline: Date.now() + timeoutMs }, (e: any, r: T) => (e ? reject(new Error(`CRI ${method}: ${e.details || e.message}`)) : resolve(r)));
    });
  }

  version(): Promise<{ runtime_name: string; runtime_version: string }> {
    return this.call('Version', { version: 'v1' }, 5_000);
  }

  /** RunPodSandbox as kubelet sends it: metadata (namespace/name become K8S_* CNI_ARGS), port mappings. */
  async runPodSandbox(c: PodConfig): Promise<string> {
    const config = {
      metadata: { name: c.name, uid: c.uid, namespace: c.namespace, attempt: 0 },
      hostname: c.name,
      log_directory: c.logDir,
      labels: [{ key: 'app', value: c.name }],
      annotations: [],
      port_mappings: (c.portMappings ?? []).map((m) => ({ protocol: m.protocol ?? 'TCP', container_port: m.containerPort, host_port: m.hostPort, host_ip: '' })),
      linux: { cgroup_parent: '', security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
    };
    const r = await this.call<{ pod_sandbox_id: string }>('RunPodSandbox', { config, runtime_handler: '' });
    return r.pod_sandbox_id;
  }

  async status(id: string): Promise<PodStatus> {
    const r = await this.call<any>('PodSandboxStatus', { pod_sandbox_id: id, verbose: true });
    // a map<string,string>, which proto-loader gives from a descriptor set as [{key, value}]
    const entries: Array<{ key: string; value: string }> = Array.isArray(r.info) ? r.info : Object.entries(r.info ?? {}).map(([key, value]) => ({ key, value: value as string }));
    const info = JSON.parse(entries.find((e) => e.key === 'info')?.value || '{}');
    const netns = info.runtimeSpec?.linux?.namespaces?.find((n: { type: string }) => n.type === 'network')?.path ?? '';
    return { id, state: r.status.state, ip: r.status.network?.ip ?? '', netns, pid: Number(info.pid ?? 0) };
  }

  async list(): Promise<string[]> {
    const r = await this.call<{ items: Array<{ id: string }> }>('ListPodSandbox', { filter: null });
    return r.items.map((x) => x.id);
  }

  stop(id: string): Promise<unknown> {
    return this.call('StopPodSandbox', { pod_sandbox_id: id });
  }

  remove(id: string): Promise<unknown> {
    return this.call('RemovePodSandbox', { pod_sandbox_id: id });
  }

  close(): void {
    this.rt.close();
  }
}
