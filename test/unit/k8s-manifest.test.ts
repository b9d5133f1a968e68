// The DaemonSet manifest (k8s/weave-daemonset.yaml): every object passes its Kubernetes schema
// (kubernetes-models 4.x, offline), broken variants do not, and the properties a node's network
// depends on hold: least-privilege RBAC, the DaemonSet's host access, tolerations, priority, rolling
// update, downward-API node name, optional password Secret, host paths and the probes' endpoints.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadManifest, validateObject, type KubeObject } from '../lab/manifest';

const objs = loadManifest();
const find = (kind: string): KubeObject => {
  const o = objs.filter((x) => x.kind === kind);
  assert.equal(o.length, 1, `one ${kind}`);
  return o[0];
};
const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x));

test('every object of the manifest passes its schema; broken copies do not', () => {
  assert.deepEqual(objs.map((o) => o.kind).sort(), ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap', 'DaemonSet', 'Role', 'RoleBinding', 'ServiceAccount']);
  for (const o of objs) validateObject(o);
  const ds = find('DaemonSet');
  const broken: Array<[string, (d: any) => void]> = [
    ['hostNetwork not a boolean', (d) => { d.spec.template.spec.hostNetwork = 'yes'; }],
    ['no selector', (d) => { delete d.spec.selector; }],
    ['a container without a name', (d) => { delete d.spec.template.spec.containers[0].name; }],
    ['a probe port not a number or name', (d) => { d.spec.template.spec.containers[0].readinessProbe.httpGet.port = { p: 1 }; }],
  ];
  for (const [what, spoil] of broken) {
    const d = clone(ds);
    spoil(d);
    assert.throws(() => validateObject(d), /DaemonSet weave-net: /, what);
  }
  assert.throws(() => validateObject({ ...clone(ds), apiVersion: 'apps/v9' }), /no schema/);
});

test('RBAC: read-only cluster-wide, and only the weave-net ConfigMap written, with no create', () => {
  const cr = find('ClusterRole');
  const reads = ['get', 'list', 'watch'];
  assert.deepEqual(cr.rules, [
    { apiGroups: [''], resources: ['nodes', 'pods', 'namespaces'], verbs: reads },
    { apiGroups: ['networking.k8s.io'], resources: ['networkpolicies'], verbs: reads },
  ]);
  const role = find('Role');
  assert.equal(role.metadata.namespace, 'kube-system');
  assert.equal(role.rules.length, 1);
  const [r] = role.rules;
  assert.deepEqual([r.apiGroups, r.resources, r.resourceNames], [[''], ['configmaps'], ['weave-net']]);
  assert.ok(r.verbs.includes('get') && r.verbs.includes('update'));
  for (const v of ['create', 'delete', 'deletecollection', 'patch', '*']) assert.ok(!r.verbs.includes(v), `no ${v}`);
  for (const rule of [...cr.rules, ...role.rules]) {
    for (const k of ['apiGroups', 'resources', 'verbs']) assert.ok(!rule[k].includes('*'), `no wildcard in ${k}`);
  }
  const cm = find('ConfigMap');
  assert.deepEqual([cm.metadata.namespace, cm.metadata.name, cm.data], ['kube-system', 'weave-net', undefined], 'shipped without data: apply never resets the routers\' list');
  const sa = find('ServiceAccount');
  for (const [b, role] of [[find('ClusterRoleBinding'), cr], [find('RoleBinding'), find('Role')]] as const) {
    assert.deepEqual(b.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: role.kind, name: role.metadata.name });
    assert.deepEqual(b.subjects, [{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: sa.metadata.namespace }]);
  }
});

test('the DaemonSet: host network and PIDs, every taint tolerated, node-critical, rolling, one router per node', () => {
  const ds = find('DaemonSet');
  const spec = ds.spec.template.spec;
  assert.equal(ds.metadata.namespace, 'kube-system');
  for (const [k, v] of Object.entries(ds.spec.selector.matchLabels)) assert.equal(ds.spec.template.metadata.labels[k], v, 'the selector matches the pods');
  assert.equal(spec.serviceAccountName, find('ServiceAccount').metadata.name);
  assert.equal(spec.hostNetwork, true);
  assert.equal(spec.hostPID, true);
  assert.equal(spec.dnsPolicy, 'ClusterFirstWithHostNet');
  assert.equal(spec.priorityClassName, 'system-node-critical');
  assert.ok(spec.tolerations.some((t: any) => t.operator === 'Exists' && t.key === undefined && t.effect === undefined), 'a toleration without key or effect tolerates every taint');
  assert.equal(ds.spec.updateStrategy.type, 'RollingUpdate');
  assert.equal(ds.spec.updateStrategy.rollingUpdate.maxUnavailable, 1);
  assert.deepEqual(spec.containers.map((c: any) => [c.name, c.command]), [['weave', ['weave', 'router', '--kube']], ['weave-npc', ['weave', 'npc']]]);
  assert.equal(new Set(spec.containers.map((c: any) => c.image)).size, 1, 'both containers run the same image');
});

test('the router container: env from the downward API and an optional Secret, privileged, host paths, probes on its API', () => {
  const spec = find('DaemonSet').spec.template.spec;
  const weave = spec.containers[0];
  const env = Object.fromEntries(weave.env.map((e: any) => [e.name, e]));
  assert.deepEqual(env.NODE_NAME.valueFrom, { fieldRef: { apiVersion: 'v1', fieldPath: 'spec.nodeName' } });
  assert.deepEqual(env.WEAVE_PASSWORD.valueFrom, { secretKeyRef: { name: 'weave-passwd', key: 'weave-passwd', optional: true } });
  assert.equal(env.WEAVE_DATA_DIR.value, '/var/lib/weave');
  assert.equal(weave.securityContext.privileged, true);
  const vols = Object.fromEntries(spec.volumes.map((v: any) => [v.name, v.hostPath?.path]));
  const mounts = Object.fromEntries(weave.volumeMounts.map((m: any) => [vols[m.name], m]));
  for (const p of ['/var/lib/weave', '/opt/cni/bin', '/etc/cni/net.d', '/run/netns', '/lib/modules']) {
    assert.ok(mounts[p], `host ${p} is mounted`);
    assert.equal(mounts[p].mountPath, p, `${p} at the same path inside (the conflist names host paths)`);
  }
  assert.equal(mounts['/lib/modules'].readOnly, true);
  assert.equal(mounts['/var/lib/weave'].readOnly, undefined);
  assert.equal(mounts['/run/netns'].mountPropagation, 'HostToContainer');
  for (const v of spec.volumes) assert.ok(v.hostPath, `${v.name} is a host path`);
  assert.deepEqual(weave.readinessProbe.httpGet, { host: '127.0.0.1', port: 6784, path: '/ready' });
  assert.deepEqual(weave.livenessProbe.httpGet, { host: '127.0.0.1', port: 6784, path: '/healthz' });
  assert.ok(weave.livenessProbe.initialDelaySeconds >= 10 && weave.livenessProbe.failureThreshold >= 3, 'a slow start is not killed');
  const npc = spec.containers[1];
  assert.equal(npc.securityContext.privileged, false);
  assert.deepEqual(npc.securityContext.capabilities, { add: ['NET_ADMIN'] });
  assert.deepEqual(npc.env.find((e: any) => e.name === 'NODE_NAME').valueFrom, env.NODE_NAME.valueFrom);
  assert.equal(npc.volumeMounts, undefined, 'the policy controller mounts nothing of the host');
});

test('rbacAllows decides as the authorizer would for the manifest\'s service account', async () => {
  const { rbacAllows } = await import('../lab/manifest');
  const ok = (verb: string, p: string) => rbacAllows(objs, { verb, method: 'GET', path: p });
  assert.ok(ok('list', '/api/v1/nodes'));
  assert.ok(ok('watch', '/api/v1/nodes?watch=true&resourceVersion=5'));
  assert.ok(ok('get', '/api/v1/namespaces/team-a/pods/web'));
  assert.ok(ok('watch', '/apis/networking.k8s.io/v1/networkpolicies?watch=1'));
  assert.ok(ok('get', '/api/v1/namespaces/kube-system/configmaps/weave-net'));
  assert.ok(ok('update', '/api/v1/namespaces/kube-system/configmaps/weave-net'));
  assert.ok(ok('watch', '/api/v1/namespaces/kube-system/configmaps?watch=true&fieldSelector=metadata.name%3Dweave-net'));
  assert.ok(!ok('create', '/api/v1/namespaces/kube-system/configmaps'), 'no create');
  assert.ok(!ok('get', '/api/v1/namespaces/kube-system/configmaps/other'));
  assert.ok(!ok('get', '/api/v1/namespaces/default/configmaps/weave-net'), 'only in kube-system');
  assert.ok(!ok('list', '/api/v1/namespaces/kube-system/configmaps'), 'no list of every ConfigMap');
  assert.ok(!ok('update', '/api/v1/nodes/n1'));
  assert.ok(!ok('patch', '/api/v1/nodes/n1/status'));
  assert.ok(!ok('get', '/api/v1/namespaces/kube-system/secrets/weave-passwd'));
  assert.ok(!ok('list', '/apis/apps/v1/daemonsets'));
  assert.ok(ok('discovery', '/api'));
});
