// The typed field readers every API handler uses, and the peer grammar `launch`/`connect` check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../../lib/errors';
import {
  asBody, bool, checkAddr, checkAddrArg, checkAddrMaybeLen, checkCidr, checkPeer, num, optStr, param, peerList, str, strList,
} from '../../lib/validate';
import { checkNetns } from '../../api/parts/endpoints';

test('asBody: an object, or {} when absent; null, lists, strings, numbers are refused', () => {
  assert.deepEqual(asBody(undefined), {});
  assert.deepEqual(asBody({ a: 1 }), { a: 1 });
  for (const v of [null, [], [1], 'x', 3, true]) assert.throws(() => asBody(v), UsageError, JSON.stringify(v));
});

test('str / optStr / param: non-empty strings, no control characters, bounded length', () => {
  assert.equal(str({ a: 'x' }, 'a'), 'x');
  for (const b of [{}, { a: null }, { a: '' }, { a: 1 }, { a: {} }, { a: ['x'] }, { a: 'x\u0000y' }, { a: 'x'.repeat(2000) }]) {
    assert.throws(() => str(b, 'a'), (e: unknown) => e instanceof UsageError && e.message.startsWith('"a"'), JSON.stringify(b));
  }
  assert.throws(() => str({ a: 'abcd' }, 'a', { max: 3 }), /at most 3/);
  assert.equal(optStr({}, 'a'), undefined);
  assert.equal(optStr({ a: '' }, 'a'), undefined);
  assert.equal(optStr({ a: null }, 'a'), undefined);
  assert.throws(() => optStr({ a: 5 }, 'a'), /"a" must be a string, not a number/);
  assert.equal(param(new URLSearchParams('name=web'), 'name'), 'web');
  for (const q of ['', 'name=', 'name=%00', `name=${'a'.repeat(2000)}`]) assert.throws(() => param(new URLSearchParams(q), 'name'), UsageError, q);
});

test('strList: absent -> [] (or 400 when required), every item a checked string, bounded', () => {
  assert.deepEqual(strList({}, 'l'), []);
  assert.deepEqual(strList({ l: null }, 'l'), []);
  assert.throws(() => strList({}, 'l', { required: true }), /"l" is missing/);
  assert.deepEqual(strList({ l: ['a', 'b'] }, 'l'), ['a', 'b']);
  assert.throws(() => strList({ l: 'a' }, 'l'), /"l" must be a list of strings, not a string/);
  assert.throws(() => strList({ l: {} }, 'l'), /not an object/);
  assert.throws(() => strList({ l: ['a', 1] }, 'l'), /"l\[1\]" must be a string/);
  assert.throws(() => strList({ l: [''] }, 'l'), /"l\[0\]" must not be empty/);
  assert.throws(() => strList({ l: new Array(2000).fill('a') }, 'l'), /at most 1024/);
  assert.throws(() => strList({ l: ['x'] }, 'l', { item: checkAddr }), /"l\[0\]": invalid IPv4 address "x"/);
});

test('bool and num: exact types, ranges, defaults', () => {
  assert.equal(bool({}, 'b'), false);
  assert.equal(bool({}, 'b', true), true);
  assert.equal(bool({ b: true }, 'b'), true);
  for (const v of ['true', 1, 0, {}, []]) assert.throws(() => bool({ b: v }, 'b'), /"b" must be true or false/);
  const r = { min: 0, max: 300_000, dflt: 30_000 };
  assert.equal(num({}, 'n', r), 30_000);
  assert.equal(num({ n: 25_000 }, 'n', r), 25_000);
  assert.throws(() => num({}, 'n', { min: 0, max: 1 }), /"n" is missing/);
  for (const v of [-1, 1e308, 300_001, 'x', '5', Infinity, NaN, {}]) assert.throws(() => num({ n: v }, 'n', r), UsageError, String(v));
  assert.throws(() => num({ n: 1.5 }, 'n', { ...r, integer: true }), /whole number/);
});

test('address formats: bare address, network CIDR, address in its subnet, attach arguments, NETNS', () => {
  assert.equal(checkAddr('10.32.0.5', 'a'), '10.32.0.5');
  for (const s of ['10.32.0.5/12', '-1', '4294967296', '10.32.0', '999.1.1.1', ' 10.32.0.5']) assert.throws(() => checkAddr(s, 'a'), UsageError, s);
  assert.equal(checkCidr('10.32.0.0/12', 's'), '10.32.0.0/12');
  for (const s of ['10.32.0.0/99', '10.40.0.0/-3', '10.32.0.1/12', '10.32.0.0']) assert.throws(() => checkCidr(s, 's'), UsageError, s);
  assert.equal(checkAddrMaybeLen('10.32.0.5', 'a'), '10.32.0.5');
  assert.equal(checkAddrMaybeLen('10.32.0.5/12', 'a'), '10.32.0.5/12');
  for (const s of ['10.32.0.5/33', '10.32.0.5/']) assert.throws(() => checkAddrMaybeLen(s, 'a'), UsageError, s);
  for (const s of ['net:default', 'net:10.32.0.0/16', '10.32.0.5/12']) assert.equal(checkAddrArg(s, 'c'), s);
  for (const s of ['10.99.0.1/99', '999.1.1.1/12', '10.32.0.1/-1', '10.32.0.1/4294967296', 'net:10.32.0.1/16', 'net:', 'net:x', '10.32.0.5']) {
    assert.throws(() => checkAddrArg(s, 'c'), UsageError, s);
  }
  for (const s of ['c1', '/proc/1/ns/net', '1234']) assert.equal(checkNetns(s, 'n'), s);
  for (const s of ['../../etc/passwd', '..', 'a b']) assert.throws(() => checkNetns(s, 'n'), UsageError, s);
});

test('peers: IPv4 or DNS name, optional port 1-65535; 300.1.1.1, -1, h:-5, a:99999999 refused with what to fix', () => {
  for (const s of ['198.18.0.11', '198.18.0.11:6783', 'h1', 'host-2.example.com:7000', 'h', '[::1]:6783', 'a.b.']) assert.equal(checkPeer(s), s);
  const bad: Array<[string, RegExp]> = [
    ['300.1.1.1', /300 is greater than 255/], ['-1', /IPv4 address or a DNS name/], ['h:-5', /port "-5" is not a number 1-65535/], ['a:99999999', /port "99999999" is not a number 1-65535/],
    ['h:0', /not a number 1-65535/], ['1.2.3', /four dotted numbers/], [':6783', /host is empty/], ['', /empty/], ['h:', /HOST\[:PORT\]/],
    ['bad_name', /DNS name/], ['-x.com', /DNS name/], ['x-.com', /DNS name/], ['a..b', /DNS name/], ['[nonsense]:1', /not an IPv6 address/],
    [`${'a'.repeat(64)}.com`, /DNS name/], ['h h', /DNS name/],
  ];
  for (const [s, re] of bad) assert.throws(() => checkPeer(s), (e: unknown) => e instanceof UsageError && re.test(e.message) && e.message.startsWith(`invalid peer "${s}"`), s);
  assert.deepEqual(peerList({ peers: ['h1', '198.18.0.12:6783'] }, 'peers'), ['h1', '198.18.0.12:6783']);
  assert.throws(() => peerList({ peers: ['-1'] }, 'peers'), /invalid peer "-1" in "peers\[0\]"/);
  assert.throws(() => peerList({}, 'peers', { required: true }), /"peers" is missing/);
});
