// The CNI route: the shim (cni/shim/weave-net.c) posts its environment and stdin; the reply is plain
// text, "<exit status>\n<what to print>", so the shim needs no JSON parser for it. Every failure the
// runtime should see is inside that text (a spec error object, exit 1); only a body that is not the
// shim's shape is refused with HTTP 400.
import type { ApiRoute } from '../lib/subsystem';
import { parseCniRequest, type CniHandler } from './handler';

export const CNI_PATH = '/cni';

export function cniRoutes(handler: CniHandler, observe: (command: string, seconds: number) => void): ApiRoute[] {
  return [{
    method: 'POST', path: CNI_PATH, text: true, handler: async ({ body }) => {
      const { env, stdin } = parseCniRequest(body);
      const t0 = process.hrtime.bigint();
      const r = await handler.handle(env, stdin);
      observe(r.command, Number(process.hrtime.bigint() - t0) / 1e9);
      return `${r.exit}\n${r.out}`;
    },
  }];
}
