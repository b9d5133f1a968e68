// The weave.ts image in the lab: scripts/build-image.js builds the OCI archive offline (cached in
// .cache/image by content), and a DaemonSet container of k8s/weave-daemonset.yaml is run from it in
// a lab host's containerd with `ctr run`, the way kubelet would run it: host network (containerd runs
// in the host's namespace, so --net-host is that namespace), privileged, the manifest's command and
// environment (downward API and Secret values filled in by the caller), and each hostPath volume
// bound to the host directory the caller maps it to.
import * as path from 'path';
import { run, type RunResult } from './exec';
import type { Containerd } from './containerd';
import type { KubeObject } from './manifest';

const ROOT = path.join(__dirname, '..', '..', '..');

export interface ImageInfo {
  image: string;
  archive: string;
  manifest: string;
  layerBytes: number;
  files: number;
  cached: boolean;
}

/** Builds (or finds in the cache) the image archive of the current build. */
export async function buildImage(): Promise<ImageInfo> {
  const r = await run([process.execPath, path.join(ROOT, 'scripts', 'build-image.js'), '--json'], { cwd: ROOT, timeoutMs: 300_000 });
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as ImageInfo;
}

export function ctr(c: Containerd, args: string[], opts: { allowFail?: boolean; timeoutMs?: number } = {}): Promise<RunResult> {
  return run(['ctr', '--address', c.socket, '--namespace', 'k8s.io', ...args], { timeoutMs: opts.timeoutMs ?? 120_000, allowFail: opts.allowFail });
}

export interface PodValues {
  /** spec.nodeName and other fieldRefs by path */
  fields: Record<string, string>;
  /** Secret values by `name/key`; an optional key left out here is left out of the environment */
  secrets?: Record<string, string>;
  /** host directory for each hostPath volume's path */
  hostPaths: Record<string, string>;
  /** the path inside for a hostPath (default: the mount's own path). The lab binds the data dir at
   *  its lab path inside too, so the socket the router names in the conflist is where the host's
   *  CNI shim looks, as /var/lib/weave is on a real node. */
  mountAt?: Record<string, string>;
  /** replaces the container's command (e.g. extra flags) */
  command?: string[];
  /** added to the environment (e.g. KUBERNETES_SERVICE_HOST) */
  env?: Record<string, string>;
  /** more bind mounts, read-only: container path -> host path (e.g. the service account's files) */
  readOnlyMounts?: Record<string, string>;
}

/** `ctr run` arguments for one container of the DaemonSet's pod template. */
export function ctrRunArgs(ds: KubeObject, containerName: string, v: PodValues, id: string): string[] {
  const spec = ds.spec.template.spec;
  const c = spec.containers.find((x: any) => x.name === containerName);
  if (!c) throw new Error(`no container ${containerName} in the DaemonSet`);
  const args = ['run', '-d'];
  if (spec.hostNetwork) args.push('--net-host');
  if (c.securityContext?.privileged) args.push('--privileged');
  for (const e of c.env ?? []) {
    let val: string | undefined = e.value;
    const ref = e.valueFrom;
    if (ref?.fieldRef) val = v.fields[ref.fieldRef.fieldPath];
    if (ref?.secretKeyRef) {
      val = v.secrets?.[`${ref.secretKeyRef.name}/${ref.secretKeyRef.key}`];
      if (val === undefined && !ref.secretKeyRef.optional) throw new Error(`secret ${ref.secretKeyRef.name}/${ref.secretKeyRef.key} is required`);
    }
    if (val === undefined && ref?.fieldRef) throw new Error(`no value for field ${ref.fieldRef.fieldPath}`);
    if (val !== undefined) args.push('--env', `${e.name}=${val}`);
  }
  for (const [k, val] of Object.entries(v.env ?? {})) args.push('--env', `${k}=${val}`);
  const vols = new Map<string, string>(spec.volumes.map((x: any) => [x.name, x.hostPath?.path]));
  for (const m of c.volumeMounts ?? []) {
    const hp = vols.get(m.name);
    if (!hp) throw new Error(`volume ${m.name} is not a hostPath`);
    const src = v.hostPaths[hp];
    if (!src) throw new Error(`no lab directory for hostPath ${hp}`);
    const opts = ['rbind', m.readOnly ? 'ro' : 'rw'];
    if (m.mountPropagation === 'HostToContainer') opts.push('rslave');
    args.push('--mount', `type=bind,src=${src},dst=${v.mountAt?.[hp] ?? m.mountPath},options=${opts.join(':')}`);
  }
  for (const [dst, src] of Object.entries(v.readOnlyMounts ?? {})) args.push('--mount', `type=bind,src=${src},dst=${dst},options=rbind:ro`);
  args.push(c.image, id, ...(v.command ?? c.command));
  return args;
}
