// lib/addr: the one IPv4 / prefix / host:port grammar. Property tests against a regex-based reference,
// round trips, leading zeros refused at every entry point that used to have its own parser, and
// random input that never throws anything but a UsageError.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  cidrOf,
  formatAddr,
  formatCidr,
  formatHostPort,
  maskOf,
  parseAddr,
  parseAddrInCidr,
  parseCidr,
  parseHostPort,
  parsePort,
  tryParseAddr,
  tryParseCidr,
  tryParseHostPort,
} from '../../lib/addr';
import { UsageError, WeaveError } from '../../lib/errors';
import { parseAddr as ipamParseAddr, parseCidr as ipamParseCidr } from '../../ipam/addr';
import { canonicalPrefix, parseCidr4 } from '../../host/cidr';
import { inSubnets, parseHostPort as configParseHostPort, parsePort as configParsePort, parseTrustedSubnets } from '../../api/config';
import { parseAddress } from '../../mesh/tcp-transport';
import { normalizeAddress, hostOf } from '../../mesh/codec';
import { VxlanReconciler, vtepIpFor } from '../../host/vxlan';
import { DnsStore } from '../../dns/records';
import { decodePrefixUpdate, PrefixTable } from '../../router/prefixes';
import { encodeMsg } from '../../mesh/codec';
import { FakeClock } from '../../lib/clock';
import { silentLogger } from '../../lib/log';

// ---- the reference: regexes a reader can check by eye ----------------------------------------------

const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])';
const ADDR_RE = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);
const CIDR_RE = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}/(3[0-2]|[12][0-9]|[0-9])$`);

function refAddr(s: string): number | undefined {
  const m = ADDR_RE.exec(s);
  return m ? ((Number(m[1]) * 256 + Number(m[2])) * 256 + Number(m[3])) * 256 + Number(m[4]) : undefined;
}

function refCidr(s: string): { addr: number; len: number } | undefined {
  const m = CIDR_RE.exec(s);
  if (!m) return undefined;
  return { addr: ((Number(m[1]) * 256 + Number(m[2])) * 256 + Number(m[3])) * 256 + Number(m[4]), len: Number(m[5]) };
}

// ---- generators: valid quads, near misses and junk ---------------------------------------------------

const u32 = fc.integer({ min: 0, max: 0xffffffff });
const octetText = fc.oneof(
  fc.integer({ min: 0, max: 255 }).map(String),
  fc.integer({ min: 0, max: 255 }).map((n) => `0${n}`), // leading zero
  fc.integer({ min: 256, max: 99999 }).map(String), // out of range
  fc.constantFrom('', ' 1', '1 ', 'x', '-1', '+1', '1e2', '0x1', '00', '٣'), // empty, spaces, signs, non-ASCII digits
);
const quadish = fc.oneof(
  u32.map(formatAddr),
  fc.array(octetText, { minLength: 1, maxLength: 6 }).map((p) => p.join('.')),
  fc.stringOf(fc.constantFrom('0', '1', '2', '5', '9', '.', '/', ':', ' ', 'a', '[', ']'), { maxLength: 24 }),
);
const lenText = fc.oneof(fc.integer({ min: 0, max: 40 }).map(String), fc.constantFrom('', '08', '00', 'x', '-1', '3 2', '1.5'));
const cidrish = fc.oneof(fc.tuple(quadish, lenText).map(([a, l]) => `${a}/${l}`), quadish);
const anyString = fc.oneof(fc.string(), fc.fullUnicodeString(), quadish, cidrish);

// ---- addresses ------------------------------------------------------------------------------------

test('addresses: format(parse(x)) and parse(format(n)) round trip', () => {
  fc.assert(fc.property(u32, (n) => parseAddr(formatAddr(n)) === n));
  fc.assert(fc.property(quadish, (s) => {
    const n = tryParseAddr(s);
    if (n !== undefined) assert.equal(formatAddr(n), s, 'the one accepted spelling is the formatted one');
  }), { numRuns: 2000 });
  assert.equal(formatAddr(0), '0.0.0.0');
  assert.equal(formatAddr(0xffffffff), '255.255.255.255');
});

test('addresses: the parser agrees with the regex reference; parse throws UsageError exactly when it refuses', () => {
  fc.assert(fc.property(quadish, (s) => {
    const want = refAddr(s);
    assert.equal(tryParseAddr(s), want, s);
    if (want === undefined) assert.throws(() => parseAddr(s), UsageError, s);
    else assert.equal(parseAddr(s), want);
  }), { numRuns: 5000 });
});

test('addresses: leading zeros, out-of-range octets and empty parts are refused with a message saying so', () => {
  for (const [s, why] of [
    ['010.1.1.1', /"010" has a leading zero \(write 10/],
    ['1.2.3.04', /"04" has a leading zero/],
    ['1.2.3.00', /"00" has a leading zero \(write 0/],
    ['1.2.3.256', /256 is greater than 255/],
    ['1.2.3.1000', /1000 is greater than 255/],
    ['1..3.4', /empty part between dots/],
    ['1.2.3.', /empty part between dots/],
    ['1.2.3', /four dotted numbers/],
    ['1.2.3.4.5', /four dotted numbers/],
    ['1.2.x.4', /"x" is not a number 0-255/],
    [' 1.2.3.4', /spaces around it/],
    ['', /empty/],
    ['fe80::1', /is IPv6; only IPv4/],
    ['1.2.3.4:80', /":" \(no port here\)/],
  ] as const) {
    assert.throws(() => parseAddr(s), (e: unknown) => e instanceof UsageError && why.test(e.message) && e.message.includes(`"${s}"`), s);
  }
});

test('leading zeros are refused at every entry point that had its own IPv4 parser', async () => {
  // ipam/addr accepted "010" (as 10); host/, router/forwarding, dns and vxlan each had their own rules
  assert.throws(() => ipamParseAddr('010.32.0.1'), UsageError);
  assert.throws(() => ipamParseCidr('10.032.0.0/12'), UsageError);
  assert.throws(() => parseCidr4('10.32.0.05/12'), UsageError);
  assert.equal(canonicalPrefix('10.32.0.07'), undefined);
  assert.equal(tryParseCidr('10.32.0.07/32', { allowBare: true, allowHostBits: true }), undefined);
  assert.throws(() => decodePrefixUpdate(encodeMsg({ v: 1, entries: [{ o: '02:00:00:00:00:0a', ver: 1, p: ['10.32.01.0/24'] }] })), { code: 'EPROTO' });
  assert.throws(() => new PrefixTable('02:00:00:00:00:0a', new FakeClock(1), silentLogger()).setLocal(['10.32.01.0/24']), UsageError);
  assert.equal(inSubnets(parseTrustedSubnets('10.0.0.0/8'), '010.1.1.1'), false);
  assert.throws(() => parseTrustedSubnets('010.0.0.0/8'), UsageError);
  assert.throws(() => configParseHostPort('010.0.0.1:80', 1, 'peer address'), UsageError);
  assert.throws(() => parseAddress('10.0.0.01'), UsageError);
  const store = new DnsStore({ self: '02:00:00:00:00:0a', clock: new FakeClock(1), log: silentLogger() });
  assert.throws(() => store.add('web', '10.32.0.01'), UsageError);
  assert.throws(() => vtepIpFor('02:00:00:00:00:01', '169.254.00.0/16'), WeaveError);
  const vx = { name: 'weave-vx', vni: 1, port: 6784, local: '198.18.0.01', mtu: 1450, mac: '02:00:00:00:00:01', address: '169.254.1.1' };
  assert.throws(() => new VxlanReconciler({ ctx: {}, log: silentLogger(), clock: new FakeClock(1), config: vx }), /VXLAN local "198\.18\.0\.01" is not an IPv4 address/);
});

// ---- prefixes -------------------------------------------------------------------------------------

test('prefixes: the parser agrees with the regex reference, host bits per option', () => {
  fc.assert(fc.property(cidrish, (s) => {
    const ref = refCidr(s);
    const bare = refAddr(s);
    const aligned = ref !== undefined && (ref.addr & maskOf(ref.len)) >>> 0 === ref.addr;
    const strict = tryParseCidr(s);
    const loose = tryParseCidr(s, { allowHostBits: true, allowBare: true });
    assert.deepEqual(strict, aligned ? cidrOf(ref!.addr, ref!.len) : undefined, s);
    const wantLoose = ref ? cidrOf(ref.addr, ref.len) : bare !== undefined ? cidrOf(bare, 32) : undefined;
    assert.deepEqual(loose, wantLoose, s);
    if (strict === undefined) assert.throws(() => parseCidr(s), UsageError, s);
    if (ref) assert.deepEqual(parseAddrInCidr(s), { addr: ref.addr, cidr: cidrOf(ref.addr, ref.len) });
    else assert.throws(() => parseAddrInCidr(s), UsageError, s);
  }), { numRuns: 5000 });
});

test('prefixes: format(parse(x)) round trip; ranges are half-open up to 2^32', () => {
  fc.assert(fc.property(u32, fc.integer({ min: 0, max: 32 }), (a, len) => {
    const c = cidrOf(a, len);
    assert.deepEqual(parseCidr(formatCidr(c)), c);
    assert.equal(c.end - c.start, 2 ** (32 - len));
    assert.equal(c.start % 2 ** (32 - len), 0);
  }));
  assert.deepEqual(parseCidr('0.0.0.0/0'), { start: 0, end: 2 ** 32, prefixLen: 0 });
  assert.throws(() => parseCidr('10.32.1.0/12'), /host bits set; did you mean 10\.32\.0\.0\/12\?/);
  assert.throws(() => parseCidr('10.32.0.0/33'), /prefix length 33 is greater than 32/);
  assert.throws(() => parseCidr('10.32.0.0/08'), /no leading zero/);
  assert.throws(() => parseCidr('10.32.0.0'), /prefix length is missing/);
  assert.throws(() => parseCidr('10.32.0.0/'), /prefix length after "\/" is missing/);
  assert.throws(() => parseCidr('fd00::/8'), /is IPv6; only IPv4/);
  assert.throws(() => parseCidr('10.32.0.1/12', { what: '--ipalloc-range' }), /^UsageError: invalid --ipalloc-range "10\.32\.0\.1\/12"/);
});

// ---- host:port -------------------------------------------------------------------------------------

test('host:port: forms, defaults, ports 1-65535 and IPv6 in brackets', () => {
  const ok: Array<[string, { host: string; port: number }]> = [
    ['10.0.0.1:7000', { host: '10.0.0.1', port: 7000 }],
    ['10.0.0.1', { host: '10.0.0.1', port: 6783 }],
    ['peer.example', { host: 'peer.example', port: 6783 }],
    ['peer-2.example:1', { host: 'peer-2.example', port: 1 }],
    ['[::1]:99', { host: '::1', port: 99 }],
    ['[fe80::1]', { host: 'fe80::1', port: 6783 }],
    ['::1', { host: '::1', port: 6783 }],
    ['host:65535', { host: 'host', port: 65535 }],
  ];
  for (const [s, want] of ok) {
    assert.deepEqual(parseHostPort(s, 6783), want, s);
    assert.deepEqual(tryParseHostPort(s, 6783), want, s);
    assert.equal(tryParseHostPort(formatHostPort(want.host, want.port), 1)?.port, want.port);
  }
  for (const [s, why] of [
    ['h:0', /port "0" is not a number 1-65535/],
    ['h:65536', /port "65536"/],
    ['h:x', /port "x"/],
    ['h:', /port ""/],
    [':80', /the host is empty/],
    ['[::1', /without its "\]"/],
    ['[::1]x', /after "\]"/],
    ['[nope]:80', /"nope" is not an IPv6 address/],
    ['1:2:3', /not an IPv6 address/],
    ['010.0.0.1:80', /"010" has a leading zero/],
    ['10.0.0.256', /256 is greater than 255/],
    ['a b:80', /is not an IPv4 address or a DNS name/],
    ['not a host:99999', /port "99999" is not a number 1-65535/], // the port is checked first (test/netns/mesh.test.ts)
    ['', /empty/],
  ] as const) {
    assert.throws(() => parseHostPort(s, 6783, { what: 'peer address' }), (e: unknown) => e instanceof UsageError && /invalid peer address/.test(e.message) && why.test(e.message), s);
    assert.equal(tryParseHostPort(s, 6783), undefined, s);
  }
  assert.deepEqual(parseHostPort(':7000', 6784, { allowEmptyHost: true }), { host: '', port: 7000 });
  assert.equal(parsePort('6783'), 6783);
  for (const bad of ['0', '65536', '', ' 80', '8o', '1e3', -1, 1.5]) assert.throws(() => parsePort(bad), UsageError, String(bad));
});

test('host:port: the old parsers now agree (api/config allowed port 0 and a missing host; tcp-transport threw a plain WeaveError)', () => {
  // one answer for the CLI (api/config, weave.ts), the transport's dial and the mesh's target list
  for (const s of ['h:0', ':80', 'h:99999']) {
    assert.throws(() => configParseHostPort(s, 6783, 'peer address'), UsageError, s);
    assert.throws(() => parseAddress(s), UsageError, s); // a UsageError: HTTP 400 / exit 2, not 500 / 1
  }
  assert.throws(() => configParsePort('0', '--port'), UsageError);
  assert.deepEqual(configParseHostPort('[::1]:6784', 1, '--http-addr'), { host: '::1', port: 6784 });
  assert.equal(normalizeAddress(' 10.0.0.1 ', 6783), '10.0.0.1:6783');
  assert.equal(normalizeAddress('::1', 6783), '[::1]:6783');
  assert.equal(normalizeAddress('[::1]:7', 6783), '[::1]:7');
  assert.equal(normalizeAddress('h:0', 6783), 'h:0', 'refused targets stay as written (dialling them reports why)');
  assert.equal(hostOf('[::1]:6783'), '[::1]');
  assert.equal(hostOf('10.0.0.1:6783'), '10.0.0.1');
});

// ---- nothing but UsageError, whatever comes in -----------------------------------------------------

test('random input: try* never throw, parse* throw only UsageError', () => {
  const throwsOnlyUsage = (f: () => unknown): void => {
    try {
      f();
    } catch (e) {
      assert.ok(e instanceof UsageError, `threw ${String(e)}`);
    }
  };
  fc.assert(fc.property(anyString, (s) => {
    tryParseAddr(s);
    tryParseCidr(s, { allowBare: true });
    tryParseHostPort(s, 1);
    throwsOnlyUsage(() => parseAddr(s));
    throwsOnlyUsage(() => parseCidr(s));
    throwsOnlyUsage(() => parseCidr(s, { allowHostBits: true, allowBare: true }));
    throwsOnlyUsage(() => parseAddrInCidr(s));
    throwsOnlyUsage(() => parseHostPort(s, 6783));
    throwsOnlyUsage(() => parsePort(s));
  }), { numRuns: 5000 });
  fc.assert(fc.property(fc.anything(), (x) => {
    if (typeof x !== 'string') assert.equal(tryParseAddr(x), undefined);
    tryParseCidr(x);
    tryParseHostPort(x, 1);
    throwsOnlyUsage(() => parseAddr(x as string));
    throwsOnlyUsage(() => parseCidr(x as string));
    throwsOnlyUsage(() => parseHostPort(x as string, 1));
  }), { numRuns: 1000 });
});
