// How the router's node process runs, in one place for every way it is started: `weave launch`
// spawns it with these (weave.ts), the image carries them in its environment (image/Dockerfile's
// ENV and scripts/build-image.js's config, both checked against these by
// test/unit/runtime.test.ts), so `weave router --kube` in the DaemonSet gets them too. What each
// saves is measured in the README's "Router memory".

/**
 * Node flags of the router. V8 flags are per process: the sleeve workers' isolates get them too.
 * Only flags NODE_OPTIONS accepts, so the image can set them for `weave router`.
 */
export const ROUTER_NODE_FLAGS: readonly string[] = [
  // 1 MB semi-spaces instead of growing to 16 MB: the router allocates nothing per packet and
  // little per second, so scavenges stay rare, and the default lets V8 keep ~12 MB it never needs
  '--max-semi-space-size=1',
  // one V8 background thread instead of four, shared by the main isolate and the sleeve workers:
  // there is little to compile or mark concurrently once started, and each thread costs a stack, a
  // malloc arena and its share of V8's per-thread allocation buffers
  '--v8-pool-size=1',
];

/** Environment of the router process (read when the process starts its thread pools: it cannot be set later). */
export const ROUTER_ENV: Readonly<Record<string, string>> = {
  // libuv's pool runs the router's few async fs and DNS calls, never packets (the sleeve workers
  // poll their fds themselves): two threads instead of four
  UV_THREADPOOL_SIZE: '2',
};

/** the flag's name: `--max-semi-space-size=1` -> `--max-semi-space-size` */
const flagName = (f: string): string => f.split('=')[0];

/**
 * The router's node flags that neither node's own argv nor NODE_OPTIONS already give (a flag the
 * caller chose wins).
 */
export function routerNodeFlags(execArgv: readonly string[], nodeOptions: string | undefined): string[] {
  const given = [...execArgv, ...(nodeOptions ?? '').split(/\s+/)].map(flagName);
  return ROUTER_NODE_FLAGS.filter((f) => !given.includes(flagName(f)));
}

/** The router's environment: env with ROUTER_ENV's variables where env does not set them. */
export function routerEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...ROUTER_ENV, ...env };
}

/** The image's environment for `weave router`: the flags through NODE_OPTIONS, and ROUTER_ENV. */
export function routerImageEnv(): Record<string, string> {
  return { NODE_OPTIONS: ROUTER_NODE_FLAGS.join(' '), ...ROUTER_ENV };
}
