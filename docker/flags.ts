// The Docker subsystem's router flags, parsed once (in the CLI) into the typed config.
import type { Command } from 'commander';
import { UsageError } from '../lib/errors';

/** Where dockerd listens when DOCKER_HOST says nothing. */
export const DEFAULT_DOCKER_SOCKET = '/var/run/docker.sock';
/**
 * Where dockerd looks for legacy plugins' sockets (fixed in dockerd: /run/docker/plugins/NAME.sock);
 * the driver's name is the socket's file name without ".sock".
 */
export const DEFAULT_PLUGIN_SOCKET = '/run/docker/plugins/weave.sock';

export interface DockerConfig {
  /** serve the network and IPAM driver when a Docker daemon's socket is found (--no-docker-plugin: never) */
  plugin: boolean;
  /** the Docker Engine API's unix socket (--docker-socket, else DOCKER_HOST's unix:// path) */
  socket: string;
  /** the plugin's socket; its name without .sock is the driver's name */
  pluginSocket: string;
}

export function addDockerFlags(cmd: Command): void {
  cmd
    .option('--no-docker-plugin', 'do not serve the Docker network and IPAM driver (default: served while a Docker daemon\'s socket exists)')
    .option('--docker-socket <path>', `the Docker daemon's API socket (default: DOCKER_HOST's unix:// path, else ${DEFAULT_DOCKER_SOCKET})`)
    .option('--docker-plugin-socket <path>', `where the network and IPAM driver listens; dockerd finds it in /run/docker/plugins, and its file name is the driver's name (default ${DEFAULT_PLUGIN_SOCKET})`);
}

/** DOCKER_HOST's socket path when it names a unix socket; undefined when unset; UsageError for other schemes. */
export function dockerHostSocket(env: NodeJS.ProcessEnv): string | undefined {
  const h = env.DOCKER_HOST;
  if (!h) return undefined;
  if (h.startsWith('unix://') && h.length > 'unix://'.length) return h.slice('unix://'.length);
  throw new UsageError(`DOCKER_HOST "${h}" is not a unix socket (unix:///path): weave talks to Docker over its unix socket; set --docker-socket`);
}

/** The Docker API socket for the CLI and the router: an explicit path, DOCKER_HOST, or the default. */
export function dockerSocketFrom(flag: string | undefined, env: NodeJS.ProcessEnv): string {
  return flag || dockerHostSocket(env) || DEFAULT_DOCKER_SOCKET;
}

function checkSocketPath(p: string, what: string): string {
  if (!p.startsWith('/')) throw new UsageError(`${what} "${p}" must be an absolute path`);
  // sun_path holds 108 bytes with the terminating NUL
  if (Buffer.byteLength(p) > 107) throw new UsageError(`${what} "${p}" is longer than a unix socket path may be (107 bytes)`);
  return p;
}

export function parseDockerFlags(flags: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): DockerConfig {
  const plugin = flags.dockerPlugin !== false;
  const given = typeof flags.dockerSocket === 'string' ? flags.dockerSocket : undefined;
  // DOCKER_HOST matters only when the plugin is on and no socket is given
  const socket = checkSocketPath(plugin || given ? dockerSocketFrom(given, env) : given ?? DEFAULT_DOCKER_SOCKET, '--docker-socket');
  const pluginSocket = checkSocketPath(typeof flags.dockerPluginSocket === 'string' ? flags.dockerPluginSocket : DEFAULT_PLUGIN_SOCKET, '--docker-plugin-socket');
  if (!pluginSocket.endsWith('.sock')) throw new UsageError(`--docker-plugin-socket "${pluginSocket}" must end in .sock: dockerd finds plugins as NAME.sock`);
  return { plugin, socket, pluginSocket };
}

/** The driver's name Docker knows it by: the plugin socket's file name without ".sock". */
export function driverName(pluginSocket: string): string {
  return pluginSocket.slice(pluginSocket.lastIndexOf('/') + 1, -'.sock'.length);
}
