// weaveDNS's CLI verbs; `weave status dns` is a view (dns/views.ts).
import type { Command } from 'commander';
import { UsageError, WeaveError } from '../lib/errors';
import type { ApiClientLike, CliHelpers } from '../lib/subsystem';
import { isIPv4 } from 'net';

export function addDnsCommands(program: Command, client: (opts: { httpAddr?: string }) => ApiClientLike, cli?: CliHelpers): void {
  program.command('dns-add').description('add weaveDNS records: IP... -h FQDN, or [IP...] CONTAINER [-h FQDN] (a container\'s overlay addresses, under its name)')
    .helpOption('--help', 'display help for command')
    .argument('<args...>', 'IPv4 addresses, then optionally a container: a Docker container name or ID, a namespace name (ip netns), path or PID')
    .option('-h, --hostname <fqdn>', 'the name (without a dot: in the weaveDNS domain); default for a Docker container: its name')
    .option('--http-addr <host:port>', 'HTTP API address')
    .action(async (args: string[], o: { hostname?: string; httpAddr?: string }) => {
      const last = args[args.length - 1];
      let addrs = args;
      let name = o.hostname;
      if (!isIPv4(last)) {
        if (!cli) throw new UsageError(`"${last}" is not an IPv4 address`);
        const c = await cli.containerAddresses(last, client(o));
        addrs = args.slice(0, -1);
        if (addrs.length === 0) addrs = c.addrs;
        name ??= c.container?.name;
        if (!name) throw new UsageError(`${last} is not a Docker container, so it has no name to use: give -h FQDN`);
      } else if (!name) {
        throw new UsageError('give the name with -h FQDN');
      }
      const r = await client(o).request<{ name: string; addresses: string[] }>('POST', '/dns/add', { addrs, name });
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
