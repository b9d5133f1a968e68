// The router's face: one report model built from every part's section (`weave report`, `weave
// status`), one prom-client registry holding every part's metrics (`/metrics`), and the HTTP API
// serving every part's routes plus the lifecycle ones (stop, reset).
import * as fs from 'fs';
import * as path from 'path';
import { Registry } from 'prom-client';
import { WeaveError } from '../../lib/errors';
import { componentLogger, type Logger } from '../../lib/log';
import { counterFrom } from '../../lib/metrics';
import type { Part } from '../../lib/subsystem';
import { stateSection } from '../../lib/state-file';
import { ApiServer, apiSocketPath } from '../http';
import type { RouterConfig } from '../config';
import type { Report, RouterReport } from '../views';

export const VERSION: string = (() => {
  try {
    return JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')).version;
  } catch {
    return 'unknown'; // run from an unusual layout: the report says so rather than failing
  }
})();

/** `weave report`: the version, the router section, then each part's section in start order. */
export function buildReport(parts: readonly Part[]): Report {
  const sections: Record<string, unknown> = {};
  let router: RouterReport | undefined;
  for (const p of parts) {
    if (!p.report) continue;
    const key = p.section ?? p.name;
    if (key === 'router') router = p.report() as RouterReport;
    else sections[key] = p.report();
  }
  if (!router) throw new WeaveError('EINTERNAL', 'the router has no mesh part to report');
  // what was found damaged in the data dir and recovered from where, by any part
  sections.state = stateSection(parts.flatMap((p) => p.recovery?.() ?? []));
  return { version: VERSION, router, ...sections };
}

/** One registry per router (several routers may share a process in tests): every part's metrics. */
export function buildRegistry(parts: readonly Part[], api: ApiServer): Registry {
  const reg = new Registry();
  for (const p of parts) p.metrics?.(reg);
  counterFrom(reg, 'weave_api_requests_total', 'Requests served by the router\'s HTTP API.', () => api.requests);
  counterFrom(reg, 'weave_api_errors_total', 'HTTP API requests answered with an error status.', () => api.errors);
  return reg;
}

export interface Lifecycle {
  stop(reason: string): Promise<void>;
  /** leave the mesh cleanly (containers detached, IPAM space handed over), then stop */
  reset(): Promise<void>;
}

/** Serves every part's routes; `parts` is read at each request, so it may grow until start-up ends. */
export async function serveApi(cfg: RouterConfig, parts: readonly Part[], life: Lifecycle, root: Logger): Promise<Part> {
  const log = componentLogger(root, 'api');
  const api = new ApiServer(log);
  const registry = buildRegistry(parts, api);
  api.add('GET', '/status', () => buildReport(parts));
  api.add('GET', '/report', () => buildReport(parts));
  api.add('GET', '/metrics', () => registry.metrics(), { text: true });
  for (const p of parts) for (const r of p.apiRoutes?.() ?? []) api.add(r.method, r.path, r.handler, { text: r.text, contentType: r.contentType, stream: r.stream });
  api.add('POST', '/stop', () => {
    setImmediate(() => void life.stop('stop requested through the API'));
    return { stopping: true };
  });
  api.add('POST', '/reset', async () => {
    await life.reset();
    setImmediate(() => void life.stop('reset requested through the API'));
    return { stopping: true };
  });
  try {
    // the socket first: `weave launch` and every mutating call use it
    await api.listenUnix(apiSocketPath(cfg.dataDir));
    await api.listen(cfg.httpAddr.host, cfg.httpAddr.port);
  } catch (e) {
    await api.close();
    throw e;
  }
  return { name: 'api', stop: () => api.close() };
}
