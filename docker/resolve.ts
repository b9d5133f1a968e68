// Containers by name (the CLI's attach, detach, ps and dns-add): one resolver from what a user types
// to the network namespace the router takes. An absolute path or a PID is a namespace as it is; a
// name registered with `ip netns` is that namespace; anything else is asked of Docker (a container
// name or ID prefix), whose running container's PID gives /proc/PID/ns/net. Nothing here changes
// anything.
import * as fs from 'fs';
import { UsageError, WeaveError } from '../lib/errors';
import type { ContainerRef } from '../lib/subsystem';
import { NETNS_RUN_DIR, netnsKeyOfStat, parseNetnsArg } from '../host/netns';
import { DockerEngine, type ContainerJson } from './engine';

export interface ResolvedTarget {
  /** the NETNS argument for the router: the argument itself, or /proc/PID/ns/net of a container */
  netns: string;
  /** the Docker container it names, when it was one */
  container?: ContainerRef;
}

/** Docker's name without its leading "/". */
export function containerName(c: Pick<ContainerJson, 'Name' | 'Id'>): string {
  return typeof c.Name === 'string' && c.Name ? c.Name.replace(/^\//, '') : c.Id.slice(0, 12);
}

/** What a running container's namespace is, or a UsageError saying why it has none. */
export function containerNetns(c: ContainerJson, arg: string): ResolvedTarget {
  const name = containerName(c);
  const pid = c.State?.Pid ?? 0;
  if (!c.State?.Running || !Number.isInteger(pid) || pid <= 0) {
    throw new UsageError(`container ${name} is not running (${c.State?.Status ?? 'no state'}): its network namespace exists only while it runs; start it first`, { container: arg });
  }
  return { netns: `/proc/${pid}/ns/net`, container: { id: c.Id, name } };
}

/**
 * A container argument as a NETNS argument. `netnsExists` is a seam for tests (default: the `ip
 * netns` directory). Docker is asked only for arguments that are no path, PID or `ip netns` name.
 */
export async function resolveTarget(arg: string, engine: DockerEngine, netnsExists: (name: string) => boolean = (n) => fs.existsSync(`${NETNS_RUN_DIR}/${n}`)): Promise<ResolvedTarget> {
  const a = arg.trim();
  if (a.startsWith('/') || /^\d+$/.test(a)) {
    parseNetnsArg(a); // its syntax errors, as attach has always given them
    return { netns: a };
  }
  if (/^[A-Za-z0-9_.-]+$/.test(a) && a !== '.' && a !== '..' && netnsExists(a)) return { netns: a };
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(a)) {
    throw new UsageError(`"${arg}" is neither a Docker container name or ID, a namespace name (ip netns), an absolute path nor a PID`, { arg });
  }
  let c: ContainerJson;
  try {
    c = await engine.container(a);
  } catch (e) {
    if (e instanceof WeaveError && e.code === 'ENOTFOUND') {
      throw new UsageError(`no Docker container and no network namespace (ip netns) named "${a}": check the name with docker ps or ip netns list`, { arg }, { cause: e });
    }
    if (e instanceof WeaveError && e.code === 'EDOCKER') {
      throw new UsageError(`"${a}" is not a network namespace (ip netns), and Docker cannot be asked for a container of that name: ${e.message}`, { arg }, { cause: e });
    }
    throw e;
  }
  return containerNetns(c, a);
}

/**
 * The running Docker containers by the key of their network namespace ("dev:ino", as the router's
 * records have it): `weave ps` names what was attached by PID or path. Empty when Docker is not
 * running; containers that stop meanwhile are skipped.
 */
export async function containersByNetnsKey(engine: DockerEngine): Promise<Map<string, ContainerRef>> {
  const out = new Map<string, ContainerRef>();
  let ids: string[];
  try {
    ids = await engine.runningIds();
  } catch (e) {
    if (e instanceof WeaveError && e.code === 'EDOCKER') return out;
    throw e;
  }
  for (const id of ids) {
    try {
      const t = containerNetns(await engine.container(id), id);
      out.set(netnsKeyOfStat(fs.statSync(t.netns)), t.container!);
    } catch {
      // stopped or removed since the list: nothing to name
    }
  }
  return out;
}
