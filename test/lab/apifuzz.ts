// The malformed HTTP requests of ../shared/reference/attacks/apifuzz.py (the reliability issue's API
// battery), and a raw-socket client that tells a well-formed answer from a reset or a hang. Shared by
// the unit test (ApiServer with the IPAM and DNS routes) and the netns test (a whole router, over TCP
// and over its unix socket).
import * as net from 'net';

export type Target = { host: string; port: number } | { path: string };

export interface RawAnswer {
  /** the HTTP status, or undefined when no well-formed status line came back */
  status?: number;
  /** what came back (head and the start of the body) */
  text: string;
  reset: boolean;
  timedOut: boolean;
}

const A = (n: number, s: string): string => s.repeat(n);

/** [method, path, body] as in apifuzz.py, in its order. */
export const FUZZ_CASES: Array<[string, string, string | undefined]> = [
  ['GET', '/nope', undefined], ['DELETE', '/status', undefined], ['PATCH', '/report', undefined], ['PUT', '/connect', '{}'], ['OPTIONS', '/', undefined],
  ['POST', '/connect', '{'], ['POST', '/connect', 'null'], ['POST', '/connect', '[]'], ['POST', '/connect', '"str"'], ['POST', '/connect', '{"peers":"x"}'],
  ['POST', '/connect', '{"peers":[1,2]}'], ['POST', '/connect', '{"peers":[""]}'], ['POST', '/connect', '{"peers":["a:99999999"]}'], ['POST', '/connect', '{"peers":["-1"]}'],
  ['POST', '/connect', '{"peers":["198.19.230.3:-5"]}'], ['POST', '/forget', '{"peers":["nonexistent:1"]}'], ['POST', '/forget', '{"peers":{}}'],
  ['POST', '/expose', 'null'], ['POST', '/hide', 'null'], ['POST', '/attach', 'null'], ['POST', '/detach', 'null'], ['POST', '/detach', '{"netns":"lab-doesnotexist"}'],
  ['POST', '/attach', '{"netns":"lab-doesnotexist"}'], ['POST', '/attach', '{"netns":"/proc/999999/ns/net"}'], ['POST', '/attach', '{"netns":"99999999"}'],
  ['POST', '/attach', '{"netns":"-1"}'], ['POST', '/attach', '{"netns":"../../etc/passwd"}'], ['POST', '/attach', '{"netns":"/etc/passwd"}'], ['POST', '/attach', '{"netns":123}'],
  ['POST', '/attach', '{"netns":"lab-c2","cidrs":["10.99.0.1/99"]}'], ['POST', '/attach', '{"netns":"lab-c2","cidrs":["999.1.1.1/12"]}'],
  ['POST', '/attach', '{"netns":"lab-c2","cidrs":["10.32.0.1/-1"]}'], ['POST', '/attach', '{"netns":"lab-c2","cidrs":["10.32.0.1/4294967296"]}'], ['POST', '/attach', '{"netns":"lab-c2","cidrs":"net:default"}'],
  ['POST', '/attach', '{"netns":"lab-c2","name":{"a":1}}'],
  ['POST', '/ipam/allocate', '{"ident":123}'], ['POST', '/ipam/allocate', '{"ident":"fz1","subnet":"10.32.0.0/99"}'], ['POST', '/ipam/allocate', '{"ident":"fz1","subnet":"0.0.0.0/0"}'],
  ['POST', '/ipam/allocate', '{"ident":"fz1","subnet":"10.40.0.0/-3"}'], ['POST', '/ipam/claim', '{"ident":"fz2","addr":"-1"}'], ['POST', '/ipam/claim', '{"ident":"fz2","addr":"4294967296"}'],
  ['POST', '/ipam/claim', '{"ident":"fz2","addr":"10.32.0.5/99"}'], ['POST', '/ipam/free', '{"ident":"nonexistent"}'], ['POST', '/ipam/free', '{"ident":"x","addr":12}'],
  ['POST', '/prime', '{"timeoutMs":-1}'], ['POST', '/prime', '{"timeoutMs":1e308}'], ['POST', '/prime', '{"timeoutMs":"x"}'],
  ['POST', '/rmpeer', '{"peer":"nonexistent"}'], ['POST', '/rmpeer', '{"peer":""}'], ['POST', '/rmpeer', '{"peer":12}'],
  ['POST', '/dns/add', `{"addrs":["10.32.0.9"],"name":"${A(300, 'a')}"}`], ['POST', '/dns/add', `{"addrs":["10.32.0.9"],"name":"${A(30, 'abcdefghij.')}"}`],
  ['POST', '/dns/add', '{"addrs":["999.0.0.1"],"name":"x"}'], ['POST', '/dns/add', '{"addrs":["10.32.0.9"],"name":"bad name\\u0000.weave.local"}'],
  ['POST', '/dns/add', '{"addrs":["10.32.0.9"],"name":"..weave.local"}'], ['POST', '/dns/add', '{"addrs":"10.32.0.9","name":"x"}'], ['POST', '/dns/add', '{"addrs":[-1],"name":"x"}'],
  ['POST', '/dns/remove', '{"name":123}'], ['GET', '/dns/lookup?name=', undefined], ['GET', '/dns/lookup?name=%00', undefined], ['GET', `/dns/lookup?name=${A(10000, 'a')}`, undefined],
  ['POST', '/connect', A(200000, '[') + A(200000, ']')],
];

/** Cases apifuzz.py sends after the battery: bodies of 10 MB. */
export const BIG_CASES: Array<[string, string, Buffer]> = [
  ['POST', '/connect', Buffer.concat([Buffer.from('{"peers":["'), Buffer.alloc(10 << 20, 'a'), Buffer.from('"]}')])],
  ['POST', '/dns/add', Buffer.concat([Buffer.from('{"addrs":["10.32.0.9"],"name":"'), Buffer.alloc(10 << 20, 'x'), Buffer.from('"}')])],
];

/** A request as apifuzz.py builds it: Connection: close, the body's length declared. */
export function fuzzRequest(method: string, path: string, body?: string | Buffer): Buffer {
  const b = body === undefined ? Buffer.alloc(0) : Buffer.isBuffer(body) ? body : Buffer.from(body);
  return Buffer.concat([
    Buffer.from(`${method} ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${b.length}\r\n\r\n`),
    b,
  ]);
}

/**
 * Sends raw bytes, reads until the declared body is complete or the server closes. A reset (or a
 * write refused because the server closed early) and a silence of timeoutMs are reported, not thrown.
 */
export function rawRequest(target: Target, bytes: Buffer, timeoutMs = 10_000): Promise<RawAnswer> {
  return new Promise((resolve) => {
    const s = 'path' in target ? net.connect(target.path) : net.connect(target.port, target.host);
    let got = Buffer.alloc(0);
    let reset = false;
    let timedOut = false;
    let settled = false;
    const finish = (): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      const text = got.toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3}) [^\r\n]*\r\n/.exec(text);
      resolve({ status: m ? Number(m[1]) : undefined, text: text.slice(0, 600), reset, timedOut });
    };
    const timer = setTimeout(() => { timedOut = true; finish(); }, timeoutMs);
    s.on('data', (c: Buffer) => {
      got = Buffer.concat([got, c]);
      const i = got.indexOf('\r\n\r\n');
      if (i < 0) return;
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(got.subarray(0, i).toString('latin1'));
      if (m && got.length - (i + 4) >= Number(m[1])) finish();
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ECONNRESET' || e.code === 'EPIPE') reset = true;
      finish();
    });
    s.on('close', finish);
    s.write(bytes);
  });
}
