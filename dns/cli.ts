// weaveDNS's CLI verbs; `weave status dns` is a view (dns/views.ts).
import type { Command } from 'commander';
import { WeaveError } from '../lib/errors';
import type { ApiClientLike } from '../lib/subsystem';

export function addDnsCommands(program: Command, client: (opts: { httpAddr?: string }) => ApiClientLike): void {
  program.command('dns-add').description('add weaveDNS records: IP... -h FQDN')
    .helpOption('--help', 'display help for command')
    .argument('<addrs...>', 'IPv4 addresses')
    .requiredOption('-h, --hostname <fqdn>', 'the name (without a dot: in the weaveDNS domain)')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (addrs: string[], o: { hostname: string; httpAddr?: string }) => {
      const r = await client(o).request<{ name: string; addresses: string[] }>('POST', '/dns/add', { addrs, name: o.hostname });
      process.stdout.write(`${r.name} ${r.addresses.join(' ')}\n`);
    });
  program.command('dns-remove').description('remove weaveDNS records of this peer: IP... [-h FQDN], or -h FQDN')
    .helpOption('--help', 'display help for command')
    .argument('[addrs...]', 'IPv4 addresses')
    .option('-h, --hostname <fqdn>', 'only records of this name')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (addrs: string[], o: { hostname?: string; httpAddr?: string }) => {
      const r = await client(o).request<{ removed: number }>('POST', '/dns/remove', { addrs, name: o.hostname });
      if (r.removed === 0) throw new WeaveError('ENOTFOUND', 'no matching weaveDNS record of this peer');
    });
  program.command('dns-lookup').description('the addresses weaveDNS holds for a name')
    .argument('<name>', 'a name (without a dot: in the weaveDNS domain)')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (name: string, o: { httpAddr?: string }) => {
      const r = await client(o).request<{ addresses: string[] }>('GET', `/dns/lookup?name=${encodeURIComponent(name)}`);
      for (const a of r.addresses) process.stdout.write(`${a}\n`);
    });
}
