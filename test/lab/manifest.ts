// The DaemonSet manifest users apply (k8s/weave-daemonset.yaml), read from the source tree (tsc does
// not copy YAML into dist/), parsed with the `yaml` package and validated offline against the
// Kubernetes OpenAPI schemas that `kubernetes-models` 4.x compiles into validators.
import * as fs from 'fs';
import * as path from 'path';
import { parseAllDocuments } from 'yaml';

export const MANIFEST = path.join(__dirname, '..', '..', '..', 'k8s', 'weave-daemonset.yaml');

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [k: string]: any;
}

/** Every document of a multi-document YAML text; a YAML error names the document. */
export function parseManifest(text: string): KubeObject[] {
  return parseAllDocuments(text).map((d, i) => {
    if (d.errors.length) throw new Error(`document ${i + 1}: ${d.errors[0].message}`);
    return d.toJS() as KubeObject;
  }).filter((o) => o !== null);
}

export function loadManifest(file = MANIFEST): KubeObject[] {
  return parseManifest(fs.readFileSync(file, 'utf8'));
}

/** The kubernetes-models module of an apiVersion/kind: `v1` -> v1/Kind, `apps/v1` -> apps/v1/Kind. */
function modelPath(o: KubeObject): string {
  if (!/^([a-z0-9.-]+\/)?v[0-9a-z]+$/.test(o.apiVersion ?? '') || !/^[A-Z][A-Za-z]+$/.test(o.kind ?? '')) {
    throw new Error(`${o.kind ?? '?'} ${o.metadata?.name ?? '?'}: bad apiVersion/kind ${o.apiVersion}/${o.kind}`);
  }
  return `kubernetes-models/${o.apiVersion}/${o.kind}`;
}

/** Validates one object against its schema; throws naming the object and the schema's complaint. */
export function validateObject(o: KubeObject): void {
  let Model: new (data: unknown) => { validate(): void };
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    Model = require(modelPath(o))[o.kind];
  } catch (e) {
    throw new Error(`${o.kind} ${o.metadata?.name}: no schema for ${o.apiVersion}/${o.kind}`, { cause: e });
  }
  try {
    new Model(o).validate();
  } catch (e) {
    throw new Error(`${o.kind} ${o.metadata?.name}: ${(e as Error).message}`, { cause: e });
  }
}

export interface ApiRequest { verb: string; method: string; path: string }

/** The RBAC rules the manifest's ServiceAccount is bound to (ClusterRoles everywhere, Roles in their namespace). */
function rulesOf(objs: KubeObject[], sa: { name: string; namespace: string }): Array<{ ns?: string; rule: any }> {
  const out: Array<{ ns?: string; rule: any }> = [];
  for (const b of objs.filter((o) => o.kind === 'ClusterRoleBinding' || o.kind === 'RoleBinding')) {
    if (!b.subjects?.some((s: any) => s.kind === 'ServiceAccount' && s.name === sa.name && s.namespace === sa.namespace)) continue;
    const role = objs.find((o) => o.kind === b.roleRef.kind && o.metadata.name === b.roleRef.name && (o.kind === 'ClusterRole' || o.metadata.namespace === b.metadata.namespace));
    for (const rule of role?.rules ?? []) out.push({ ns: b.kind === 'RoleBinding' ? b.metadata.namespace : undefined, rule });
  }
  return out;
}

/**
 * Whether the manifest's RBAC lets its ServiceAccount make this request (as the API server's
 * authorizer decides: group, resource, namespace, verb, and resourceNames for requests that name an
 * object, list and watch included when a fieldSelector names it). Discovery is every user's.
 */
export function rbacAllows(objs: KubeObject[], req: ApiRequest): boolean {
  if (req.verb === 'discovery') return true;
  const u = new URL(req.path, 'http://x');
  const m = /^\/(?:api\/v1|apis\/([a-z0-9.-]+)\/v1)(?:\/namespaces\/([^/]+))?\/([a-z]+)(?:\/([^/]+))?(?:\/([a-z]+))?$/.exec(u.pathname);
  if (!m) return false;
  const [, group = '', ns, resource, nameInPath, sub] = m;
  const name = nameInPath ?? /^metadata\.name=(.+)$/.exec(u.searchParams.get('fieldSelector') ?? '')?.[1];
  const res = sub ? `${resource}/${sub}` : resource;
  const sa = objs.find((o) => o.kind === 'ServiceAccount')!;
  return rulesOf(objs, { name: sa.metadata.name, namespace: sa.metadata.namespace! }).some(({ ns: scope, rule }) =>
    (scope === undefined || scope === ns)
    && rule.apiGroups.includes(group)
    && rule.resources.includes(res)
    && rule.verbs.includes(req.verb)
    && (!rule.resourceNames || (name !== undefined && rule.resourceNames.includes(name))));
}
