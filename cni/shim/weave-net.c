// weave-net: the CNI plugin executable (spec 1.1.0). A shim, in C, because a runtime starts one
// plugin process per ADD/DEL and Node's own start-up here (250-550 ms on the loaded 2-core test
// machine, ~40 ms idle) is several times Debian's whole bridge + host-local ADD (25-55 ms loaded);
// this binary starts in about a millisecond. The router does the work and holds the spec logic
// (version negotiation, validation, result conversion, error objects: cni/spec.ts, cni/handler.ts).
//
// What a call does:
//   1. read the network configuration from stdin (at most 1 MiB);
//   2. VERSION: print the supported versions (compiled in from cni/spec.ts) and stop: no router needed;
//   3. find the router: the configuration's "socket" (a unix socket path) and "api" (HOST:PORT) keys,
//      else the data dir's socket (/var/lib/weave/weave.sock) and then TCP 127.0.0.1:6784;
//   4. POST /cni {"env": {every CNI_* variable}, "stdin": "<the configuration>"}, HTTP/1.0;
//   5. the reply is "<exit status>\n<what to print>": print it, exit with that status.
// It answers by itself only when no router answers: STATUS gets code 50 (not available), every
// other command code 11 (try again later), both naming what was tried; and a configuration that is
// not one JSON object gets code 6 at once (half an object cannot even say which router to ask). It
// scans JSON for its syntax and its keys only (scan_value below): the router validates the rest.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef WEAVE_CNI_VERSIONS
#error "WEAVE_CNI_VERSIONS must be defined by scripts/build-cni.js from cni/spec.ts"
#endif
#ifndef WEAVE_CNI_LATEST
#error "WEAVE_CNI_LATEST must be defined by scripts/build-cni.js from cni/spec.ts"
#endif

#define MAX_IN (1 << 20)
#define MAX_REPLY (4 << 20)
#define DEFAULT_SOCKET "/var/lib/weave/weave.sock"
#define DEFAULT_API "127.0.0.1:6784"
/* an ADD may wait for IPAM (--ipalloc-timeout, 20 s by default) */
#define IO_TIMEOUT_S 90

extern char **environ;

struct buf { char *p; size_t len, cap; };

static void die_oom(void) { fputs("weave-net: out of memory\n", stderr); exit(1); }

static void put(struct buf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (b->len + n + 1 > cap) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) die_oom();
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* s as the contents of a JSON string (without the quotes) */
static void put_json_str(struct buf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') { char e[2] = {'\\', (char)c}; put(b, e, 2); }
    else if (c == '\n') put(b, "\\n", 2);
    else if (c == '\r') put(b, "\\r", 2);
    else if (c == '\t') put(b, "\\t", 2);
    else if (c < 0x20) { char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]}; put(b, e, 6); }
    else put(b, (const char *)&c, 1);
  }
}

// ---- a JSON scanner: only to find the top-level keys this shim needs ---------------------------

static const char *ws(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* a JSON string at p; returns the position after it (NULL if malformed); *raw set to "no escapes" */
static const char *scan_string(const char *p, const char *e, int *raw) {
  if (p >= e || *p != '"') return NULL;
  *raw = 1;
  for (p++; p < e; p++) {
    if (*p == '"') return p + 1;
    if ((unsigned char)*p < 0x20) return NULL;
    if (*p == '\\') {
      *raw = 0;
      if (++p >= e) return NULL;
      if (*p == 'u') {
        for (int i = 0; i < 4; i++) if (++p >= e || !strchr("0123456789abcdefABCDEF", *p)) return NULL;
      } else if (!strchr("\"\\/bfnrt", *p)) return NULL;
    }
  }
  return NULL;
}

static const char *scan_value(const char *p, const char *e, int depth);

static const char *scan_literal(const char *p, const char *e, const char *lit) {
  size_t n = strlen(lit);
  return (size_t)(e - p) >= n && memcmp(p, lit, n) == 0 ? p + n : NULL;
}

static const char *scan_number(const char *p, const char *e) {
  const char *s = p;
  if (p < e && *p == '-') p++;
  if (p >= e || *p < '0' || *p > '9') return NULL;
  if (*p == '0') p++; else while (p < e && *p >= '0' && *p <= '9') p++;
  if (p < e && *p == '.') { p++; if (p >= e || *p < '0' || *p > '9') return NULL; while (p < e && *p >= '0' && *p <= '9') p++; }
  if (p < e && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < e && (*p == '+' || *p == '-')) p++;
    if (p >= e || *p < '0' || *p > '9') return NULL;
    while (p < e && *p >= '0' && *p <= '9') p++;
  }
  return p > s ? p : NULL;
}

/* one container (object or array); for the top-level object, fn sees each key and its value */
typedef void (*member_fn)(const char *k, size_t kn, const char *v, size_t vn, int vraw, void *ctx);

static const char *scan_container(const char *p, const char *e, int depth, member_fn fn, void *ctx) {
  char close = *p == '{' ? '}' : ']';
  int obj = *p == '{';
  if (depth > 64) return NULL;
  p = ws(p + 1, e);
  if (p < e && *p == close) return p + 1;
  for (;;) {
    const char *k = NULL, *kend = NULL;
    int raw = 1;
    if (obj) {
      k = p;
      if (!(p = scan_string(p, e, &raw))) return NULL;
      kend = p;
      p = ws(p, e);
      if (p >= e || *p != ':') return NULL;
      p = ws(p + 1, e);
    }
    const char *v = p;
    int vraw = 0;
    if (p < e && *p == '"') { if (!(p = scan_string(p, e, &vraw))) return NULL; }
    else if (!(p = scan_value(p, e, depth + 1))) return NULL;
    if (fn && obj && raw) fn(k + 1, (size_t)(kend - k - 2), v, (size_t)(p - v), vraw, ctx);
    p = ws(p, e);
    if (p < e && *p == ',') { p = ws(p + 1, e); continue; }
    if (p < e && *p == close) return p + 1;
    return NULL;
  }
}

static const char *scan_value(const char *p, const char *e, int depth) {
  int raw;
  p = ws(p, e);
  if (p >= e) return NULL;
  switch (*p) {
  case '{': case '[': return scan_container(p, e, depth, NULL, NULL);
  case '"': return scan_string(p, e, &raw);
  case 't': return scan_literal(p, e, "true");
  case 'f': return scan_literal(p, e, "false");
  case 'n': return scan_literal(p, e, "null");
  default: return scan_number(p, e);
  }
}

struct conf { char socket[sizeof(((struct sockaddr_un *)0)->sun_path)]; char api[64]; char version[16]; };

/* string values of the keys we use; a value with escapes or too long is ignored (the router reports) */
static void take(char *dst, size_t cap, const char *v, size_t vn, int vraw) {
  if (!vraw || vn < 2 || v[0] != '"' || vn - 2 >= cap) return;
  memcpy(dst, v + 1, vn - 2);
  dst[vn - 2] = 0;
}

static void on_member(const char *k, size_t kn, const char *v, size_t vn, int vraw, void *ctx) {
  struct conf *c = ctx;
  if (kn == 6 && memcmp(k, "socket", 6) == 0) take(c->socket, sizeof c->socket, v, vn, vraw);
  else if (kn == 3 && memcmp(k, "api", 3) == 0) take(c->api, sizeof c->api, v, vn, vraw);
  else if (kn == 10 && memcmp(k, "cniVersion", 10) == 0) take(c->version, sizeof c->version, v, vn, vraw);
}

/* 1 when the input is one JSON object (keys of interest copied into c), else 0 */
static int scan_conf(const char *p, size_t n, struct conf *c) {
  const char *e = p + n;
  p = ws(p, e);
  if (p >= e || *p != '{') return 0;
  p = scan_container(p, e, 0, on_member, c);
  return p && ws(p, e) == e;
}

// ---- output -------------------------------------------------------------------------------------

static const char *versions[] = {WEAVE_CNI_VERSIONS};

static int supported(const char *v) {
  for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) if (strcmp(versions[i], v) == 0) return 1;
  return 0;
}

static int print_version(void) {
  printf("{\"cniVersion\":\"%s\",\"supportedVersions\":[", WEAVE_CNI_LATEST);
  for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) printf("%s\"%s\"", i ? "," : "", versions[i]);
  puts("]}");
  return 0;
}

/* a spec error object on stdout; the caller exits non-zero */
static int cni_error(const struct conf *c, int code, const char *msg, const char *details) {
  struct buf b = {0};
  puts_(&b, "{\"cniVersion\":\"");
  puts_(&b, supported(c->version) ? c->version : WEAVE_CNI_LATEST);
  puts_(&b, "\",\"code\":");
  char n[16];
  snprintf(n, sizeof n, "%d", code);
  puts_(&b, n);
  puts_(&b, ",\"msg\":\"");
  put_json_str(&b, msg, strlen(msg));
  puts_(&b, "\",\"details\":\"");
  put_json_str(&b, details, strlen(details));
  puts_(&b, "\"}\n");
  fwrite(b.p, 1, b.len, stdout);
  free(b.p);
  return 1;
}

// ---- talking to the router ----------------------------------------------------------------------

static void timeouts(int fd) {
  struct timeval tv = {IO_TIMEOUT_S, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int connect_unix(const char *path, struct buf *why) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof a.sun_path) { puts_(why, path); puts_(why, " (path too long); "); return -1; }
  strcpy(a.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) { timeouts(fd); return fd; }
  puts_(why, path);
  puts_(why, " (");
  puts_(why, strerror(errno));
  puts_(why, "); ");
  if (fd >= 0) close(fd);
  return -1;
}

static int connect_tcp(const char *hostport, struct buf *why) {
  char host[64];
  const char *colon = strrchr(hostport, ':');
  struct sockaddr_in a = {.sin_family = AF_INET};
  long port = colon ? strtol(colon + 1, NULL, 10) : 0;
  size_t hn = colon ? (size_t)(colon - hostport) : 0;
  if (!colon || hn == 0 || hn >= sizeof host || port < 1 || port > 65535) {
    puts_(why, hostport);
    puts_(why, " (not an IPv4 HOST:PORT); ");
    return -1;
  }
  memcpy(host, hostport, hn);
  host[hn] = 0;
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { puts_(why, hostport); puts_(why, " (not an IPv4 address); "); return -1; }
  a.sin_port = htons((unsigned short)port);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) { timeouts(fd); return fd; }
  puts_(why, hostport);
  puts_(why, " (");
  puts_(why, strerror(errno));
  puts_(why, "); ");
  if (fd >= 0) close(fd);
  return -1;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* {"env":{"CNI_...":"..."},"stdin":"..."} */
static void request_body(struct buf *b, const char *in, size_t n) {
  int first = 1;
  puts_(b, "{\"env\":{");
  for (char **e = environ; *e; e++) {
    const char *eq = strchr(*e, '=');
    if (strncmp(*e, "CNI_", 4) != 0 || !eq) continue;
    puts_(b, first ? "\"" : ",\"");
    first = 0;
    put_json_str(b, *e, (size_t)(eq - *e));
    puts_(b, "\":\"");
    put_json_str(b, eq + 1, strlen(eq + 1));
    puts_(b, "\"");
  }
  puts_(b, "},\"stdin\":\"");
  put_json_str(b, in, n);
  puts_(b, "\"}");
}

int main(void) {
  struct buf in = {0};
  char chunk[65536];
  for (;;) {
    ssize_t r = read(0, chunk, sizeof chunk);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    put(&in, chunk, (size_t)r);
    if (in.len > MAX_IN) break;
  }
  struct conf c = {{0}, {0}, {0}};
  const char *cmd = getenv("CNI_COMMAND");
  if (cmd && strcmp(cmd, "VERSION") == 0) return print_version();
  int parsed = in.len > 0 && in.len <= MAX_IN && scan_conf(in.p, in.len, &c);
  if (!parsed) {
    /* not one JSON object: nothing can be trusted from half of it (not even which router to ask) */
    memset(&c, 0, sizeof c);
    return cni_error(&c, 6, "failed to decode the network configuration on stdin (not a JSON object)", in.len > MAX_IN ? "stdin is larger than 1 MiB" : "stdin must hold the network configuration as one JSON object");
  }

  struct buf why = {0};
  int fd = connect_unix(c.socket[0] ? c.socket : DEFAULT_SOCKET, &why);
  if (fd < 0) fd = connect_tcp(c.api[0] ? c.api : DEFAULT_API, &why);
  if (fd < 0) {
    if (why.len >= 2) why.len -= 2, why.p[why.len] = 0;
    char details[2048];
    snprintf(details, sizeof details, "tried %s: is the weave router running on this host (weave status)? The network configuration names it with \"socket\" (a unix socket path) or \"api\" (HOST:PORT)", why.p);
    if (cmd && strcmp(cmd, "STATUS") == 0) return cni_error(&c, 50, "the weave router is not running", details);
    return cni_error(&c, 11, "the weave router is not reachable; try again later", details);
  }

  struct buf body = {0}, req = {0};
  request_body(&body, in.len ? in.p : "", in.len);
  char head[256];
  snprintf(head, sizeof head, "POST /cni HTTP/1.0\r\nHost: weave\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n", body.len);
  puts_(&req, head);
  put(&req, body.p, body.len);
  struct buf reply = {0};
  int ok = write_all(fd, req.p, req.len) == 0;
  while (ok) {
    ssize_t r = read(fd, chunk, sizeof chunk);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) ok = 0;
    if (r <= 0) break;
    put(&reply, chunk, (size_t)r);
    if (reply.len > MAX_REPLY) ok = 0;
  }
  close(fd);
  if (!ok) return cni_error(&c, 11, "the weave router did not answer; try again later", strerror(errno ? errno : EIO));

  int status = 0;
  char *sep = reply.p ? strstr(reply.p, "\r\n\r\n") : NULL;
  if (!sep || sscanf(reply.p, "HTTP/%*d.%*d %d", &status) != 1) return cni_error(&c, 999, "the weave router sent a malformed reply", reply.p ? reply.p : "");
  const char *out = sep + 4;
  if (status != 200) return cni_error(&c, 999, "the weave router refused the request", out);
  char *end;
  long code = strtol(out, &end, 10);
  if (end == out || *end != '\n' || code < 0 || code > 255) return cni_error(&c, 999, "the weave router sent a malformed reply", out);
  fputs(end + 1, stdout);
  return (int)code;
}
