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
