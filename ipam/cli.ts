// IPAM's CLI verbs (`weave rmpeer`, `weave prime`); `weave status ipam` is a view (ipam/views.ts).
import type { Command } from 'commander';
import { WeaveError } from '../lib/errors';
import type { ApiClientLike } from '../lib/subsystem';

export function addIpamCommands(program: Command, client: (opts: { httpAddr?: string }) => ApiClientLike): void {
  program.command('rmpeer').description('take over the address space of a peer that is gone for good (prints how many addresses)')
    .argument('<peer>', 'peer name or nickname')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (peer: string, o: { httpAddr?: string }) => {
      const r = await client(o).request<{ addresses: number }>('POST', '/rmpeer', { peer });
      process.stdout.write(`${r.addresses} IPs taken over from ${peer}\n`);
    });
  program.command('prime').description('wait until the IPAM ring exists (consensus reached)')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (o: { httpAddr?: string }) => {
      // each request waits up to 30 s; keep asking so prime blocks as long as it takes
      for (;;) {
        try {
          await client(o).request('POST', '/prime', { timeoutMs: 25_000 }, { timeoutMs: 35_000 });
          return;
        } catch (e) {
          if (!(e instanceof WeaveError && e.code === 'ETIMEDOUT')) throw e;
          process.stderr.write(`weave prime: ${e.message}; still waiting\n`);
        }
      }
    });
}

