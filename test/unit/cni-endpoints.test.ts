// Pod records in the endpoints' state file (router/endpoints.ts validateState): the CNI fields
// (pod keys and names, IPAM ident, host MAC) survive a round trip; a damaged pod record is refused
// with the file's error, so the file is set aside instead of half-loaded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WeaveError } from '../../lib/errors';
import { validateState } from '../../router/endpoints';

const POD = {
  netns: '/var/run/netns/cni-1', path: '/var/run/netns/cni-1', key: '4:4026532300', ifname: 'eth0', hostIfname: 'vethwepl1234567',
  mac: '02:bb:00:00:00:02', hostMac: '02:aa:00:00:00:01', addrs: ['10.32.0.5/12'], ident: 'cni:weave:abc:eth0',
  pod: { network: 'weave', containerId: 'abc', namespace: 'team-a', name: 'web-1', infraContainerId: 'abc' },
};

test('validateState keeps a pod record\'s CNI fields', () => {
  const st = validateState({ version: 1, endpoints: [POD, { ...POD, key: '4:1', netns: 'c1', path: '/var/run/netns/c1', ifname: 'ethwe', hostIfname: 'vethwe123456789', ident: undefined, hostMac: undefined, pod: undefined }], exposed: [] });
  assert.deepEqual(st.endpoints[0], POD);
  assert.equal('pod' in st.endpoints[1], false, 'a weave attach record stays as it was');
});

test('validateState refuses a damaged pod record', () => {
  for (const bad of [{ ...POD, pod: { network: 'weave' } }, { ...POD, pod: { ...POD.pod, name: 7 } }, { ...POD, ident: 5 }, { ...POD, hostMac: null }]) {
    assert.throws(() => validateState({ version: 1, endpoints: [bad], exposed: [] }), (e: unknown) => e instanceof WeaveError && e.code === 'ESTATE', JSON.stringify(bad));
  }
});
