// The CNI spec as the router reads and writes it (cni/spec.ts): the environment per command,
// CNI_ARGS, the configuration's checks with the spec's error codes, and results and errors in every
// supported version.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CNI_ERR, CniError, LATEST_VERSION, SUPPORTED_VERSIONS, compareVersions, errorObject, formatResult, parseCniArgs,
  parseConf, parseEnv, versionInfo, versionOf, type Result,
} from '../../cni/spec';

function code(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof CniError, `expected a CniError, got ${String(e)}`);
    return e.cniCode;
  }
  assert.fail('expected a CniError');
}

const ADD_ENV = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c0ffee', CNI_NETNS: '/var/run/netns/p', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' };

test('parseCniArgs: Kubernetes keys, IgnoreUnknown, and unknown keys refused without it', () => {
  assert.deepEqual(parseCniArgs(''), { ignoreUnknown: false });
  assert.deepEqual(parseCniArgs('IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;Other=x'), {
    ignoreUnknown: true, podNamespace: 'team-a', podName: 'web-1', infraContainerId: 'abc', podUid: 'u-1',
  });
  assert.equal(parseCniArgs('IgnoreUnknown=true;X=1').ignoreUnknown, true);
  assert.equal(parseCniArgs('K8S_POD_NAME=a=b').podName, 'a=b', 'a value may contain =');
  assert.equal(code(() => parseCniArgs('K8S_POD_NAME=web;Other=x')), CNI_ERR.INVALID_ENV);
  assert.equal(code(() => parseCniArgs('IgnoreUnknown=0;Other=x')), CNI_ERR.INVALID_ENV);
  assert.equal(code(() => parseCniArgs('IgnoreUnknown=maybe')), CNI_ERR.INVALID_ENV);
  assert.equal(code(() => parseCniArgs('novalue')), CNI_ERR.INVALID_ENV);
  assert.equal(code(() => parseCniArgs('=x')), CNI_ERR.INVALID_ENV);
  assert.equal(code(() => parseCniArgs('K8S_POD_INFRA_CONTAINER_ID=bad id')), CNI_ERR.INVALID_ENV);
});

test('parseEnv: each command\'s required variables, and the spec\'s rules for IDs and interface names', () => {
  const e = parseEnv({ ...ADD_ENV, CNI_ARGS: 'K8S_POD_NAME=x' });
  assert.equal(e.command, 'ADD');
  assert.equal(e.args.podName, 'x');
  assert.equal(code(() => parseEnv({})), CNI_ERR.INVALID_ENV);
  assert.equal(code(() => parseEnv({ ...ADD_ENV, CNI_COMMAND: 'UP' })), CNI_ERR.INVALID_ENV);
  for (const k of ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'] as const) {
    const err = (() => { try { parseEnv({ ...ADD_ENV, [k]: '' }); } catch (x) { return x as CniError; } return undefined; })();
    assert.equal(err?.cniCode, CNI_ERR.INVALID_ENV, k);
    assert.match(err!.message, new RegExp(k), 'the message names the missing variable');
  }
  // DEL without a namespace (containerd's second DEL), GC and STATUS with only the path
  assert.equal(parseEnv({ ...ADD_ENV, CNI_COMMAND: 'DEL', CNI_NETNS: '' }).netns, '');
  assert.equal(parseEnv({ CNI_COMMAND: 'GC', CNI_PATH: '/x' }).command, 'GC');
  assert.equal(parseEnv({ CNI_COMMAND: 'STATUS', CNI_PATH: '/x' }).command, 'STATUS');
  assert.equal(parseEnv({ CNI_COMMAND: 'VERSION' }).command, 'VERSION');
  assert.equal(code(() => parseEnv({ ...ADD_ENV, CNI_CONTAINERID: 'has space' })), CNI_ERR.INVALID_ENV);
  assert.equal(code(() => parseEnv({ ...ADD_ENV, CNI_CONTAINERID: '-leading' })), CNI_ERR.INVALID_ENV);
  for (const ifname of ['a/b', 'a:b', 'sixteen-chars-xx', '.', '..', 'tab\tx']) assert.equal(code(() => parseEnv({ ...ADD_ENV, CNI_IFNAME: ifname })), CNI_ERR.INVALID_ENV, ifname);
  assert.equal(code(() => parseEnv({ ...ADD_ENV, CNI_NETNS: 'relative/path' })), CNI_ERR.INVALID_ENV);
});

test('parseConf: decode errors (6), versions (1), configuration errors (7), prevResult and valid-attachments', () => {
  const ok = { cniVersion: '1.0.0', name: 'weave', type: 'weave-net' };
  assert.deepEqual(parseConf(JSON.stringify(ok), 'ADD'), { cniVersion: '1.0.0', name: 'weave', type: 'weave-net' });
  assert.equal(code(() => parseConf('{"cniVersion":', 'ADD')), CNI_ERR.DECODE);
  assert.equal(code(() => parseConf('[1]', 'ADD')), CNI_ERR.DECODE);
  assert.equal(code(() => parseConf('null', 'ADD')), CNI_ERR.DECODE);
  assert.equal(code(() => parseConf(JSON.stringify({ ...ok, cniVersion: undefined }), 'ADD')), CNI_ERR.INVALID_CONFIG);
  for (const v of ['0.1.0', '0.2.0', '1.2.0', '2.0.0', 'latest']) assert.equal(code(() => parseConf(JSON.stringify({ ...ok, cniVersion: v }), 'ADD')), CNI_ERR.INCOMPATIBLE_VERSION, v);
  // commands newer than the configuration's version
  assert.equal(code(() => parseConf(JSON.stringify({ ...ok, cniVersion: '0.3.1' }), 'CHECK')), CNI_ERR.INCOMPATIBLE_VERSION);
  assert.equal(code(() => parseConf(JSON.stringify(ok), 'STATUS')), CNI_ERR.INCOMPATIBLE_VERSION);
  assert.equal(code(() => parseConf(JSON.stringify(ok), 'GC')), CNI_ERR.INCOMPATIBLE_VERSION);
  assert.equal(parseConf(JSON.stringify({ ...ok, cniVersion: '1.1.0' }), 'GC').validAttachments?.length, 0);
  for (const name of ['', '-x', 'a b', 7]) assert.equal(code(() => parseConf(JSON.stringify({ ...ok, name }), 'ADD')), CNI_ERR.INVALID_CONFIG, String(name));
  assert.equal(code(() => parseConf(JSON.stringify({ ...ok, type: '' }), 'ADD')), CNI_ERR.INVALID_CONFIG);
  assert.equal(code(() => parseConf(JSON.stringify({ ...ok, api: 5 }), 'ADD')), CNI_ERR.INVALID_CONFIG);
  const withPrev = parseConf(JSON.stringify({ ...ok, prevResult: { cniVersion: '0.4.0', ips: [{ version: '4', address: '10.32.0.5/12', interface: 1 }] } }), 'DEL');
  assert.deepEqual(withPrev.prevResult, { ips: ['10.32.0.5/12'] });
  assert.equal(code(() => parseConf(JSON.stringify({ ...ok, prevResult: { ips: [{ address: 'x' }] } }), 'DEL')), CNI_ERR.INVALID_CONFIG);
  const gc = parseConf(JSON.stringify({ ...ok, cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 'a', ifname: 'eth0' }] }), 'GC');
  assert.deepEqual(gc.validAttachments, [{ containerId: 'a', ifname: 'eth0' }]);
  assert.equal(code(() => parseConf(JSON.stringify({ ...ok, cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 'a' }] }), 'GC')), CNI_ERR.INVALID_CONFIG);
  assert.deepEqual(parseConf(JSON.stringify({ ...ok, dns: { nameservers: ['10.96.0.10'], search: ['svc'] } }), 'ADD').dns, { nameservers: ['10.96.0.10'], search: ['svc'] });
  assert.equal(code(() => parseConf(JSON.stringify({ ...ok, dns: { nameservers: [1] } }), 'ADD')), CNI_ERR.INVALID_CONFIG);
});

const RESULT: Result = {
  interfaces: [{ name: 'vethwepl0000001', mac: '02:00:00:00:00:01' }, { name: 'eth0', mac: '02:00:00:00:00:02', sandbox: '/var/run/netns/p' }],
  ips: [{ address: '10.32.0.5/12', gateway: '169.254.1.1', interface: 1 }],
  routes: [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }, { dst: '10.32.0.0/12' }],
  dns: {},
};

test('formatResult: the result in each supported version (0.x marks IPs with version 4; 1.x does not)', () => {
  for (const v of SUPPORTED_VERSIONS) {
    const r = formatResult(RESULT, v) as { cniVersion: string; ips: Array<Record<string, unknown>>; interfaces: unknown[]; routes: unknown[] };
    assert.equal(r.cniVersion, v);
    const ip = r.ips[0];
    if (compareVersions(v, '1.0.0') < 0) assert.equal(ip.version, '4', v);
    else assert.equal('version' in ip, false, v);
    assert.equal(ip.address, '10.32.0.5/12');
    assert.equal(ip.interface, 1);
    assert.deepEqual(r.interfaces, RESULT.interfaces);
    assert.deepEqual(r.routes, [{ dst: '0.0.0.0/0', gw: '169.254.1.1' }, { dst: '10.32.0.0/12' }]);
  }
});

test('errors, VERSION and the version an answer is written in', () => {
  assert.deepEqual(errorObject('0.4.0', 11, 'try again', ''), { cniVersion: '0.4.0', code: 11, msg: 'try again', details: '' });
  assert.deepEqual(errorObject('1.0.0', 7, 'bad', 'why'), { cniVersion: '1.0.0', code: 7, msg: 'bad', details: 'why' });
  assert.deepEqual(versionInfo(), { cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
  assert.equal(LATEST_VERSION, '1.1.0');
  assert.equal(versionOf('{"cniVersion":"0.3.1"}'), '0.3.1');
  assert.equal(versionOf('{"cniVersion":"9.9.9"}'), LATEST_VERSION);
  assert.equal(versionOf('not json'), LATEST_VERSION);
  assert.ok(compareVersions('0.3.1', '1.0.0') < 0 && compareVersions('1.1.0', '1.0.0') > 0 && compareVersions('0.4.0', '0.4.0') === 0);
});
