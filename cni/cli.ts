// `weave setup-cni`: installs the plugin and the conflist (cni/setup.ts). The conflist names the
// router's API only when it is not the default: --socket / --http-addr, or the router's own
// environment (WEAVE_DATA_DIR: its socket <dir>/weave.sock; WEAVE_HTTP_ADDR) when run beside it.
import * as path from 'path';
import type { Command } from 'commander';
import { DEFAULT_BIN_DIR, DEFAULT_CONF_DIR, setupCni } from './setup';

/** The socket file's name in a router's data dir (the API's unix socket). */
export const API_SOCKET_NAME = 'weave.sock';

export function addCniCommands(program: Command): void {
  program.command('setup-cni').description('install the CNI plugin (weave-net) and its conflist (weave-net + portmap) for containerd, CRI-O, podman, kubelet')
    .option('--bin-dir <dir>', 'where the runtime looks for CNI plugins', DEFAULT_BIN_DIR)
    .option('--conf-dir <dir>', 'where the runtime looks for CNI network configurations', DEFAULT_CONF_DIR)
    .option('--socket <path>', 'the router\'s API socket, if not the default (default: WEAVE_DATA_DIR/weave.sock when WEAVE_DATA_DIR is set)')
    .option('--http-addr <host:port>', 'the router\'s HTTP API, if not 127.0.0.1:6784 (default: WEAVE_HTTP_ADDR when set)')
    .action((o: { binDir: string; confDir: string; socket?: string; httpAddr?: string }) => {
      const dataDir = process.env.WEAVE_DATA_DIR;
      const r = setupCni({
        binDir: o.binDir,
        confDir: o.confDir,
        socket: o.socket ?? (dataDir ? path.join(dataDir, API_SOCKET_NAME) : undefined),
        api: o.httpAddr ?? (process.env.WEAVE_HTTP_ADDR || undefined),
      });
      for (const f of [r.plugin, r.conflist]) process.stdout.write(`${f.outcome === 'installed' ? 'installed' : 'unchanged'} ${f.path}\n`);
    });
}
