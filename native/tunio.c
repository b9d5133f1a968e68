// weave.ts data-path addon: the few syscalls Node cannot make or cannot batch.
// - TUN: open + TUNSETIFF (Node has no ioctl), batched non-blocking read()/write() of whole packets
//   (a Node stream on a TUN fd merges writes into one packet, so it is never used).
// - UDP: a non-blocking socket with IP_PMTUDISC_DO (DF on every datagram: PMTU probes and EMSGSIZE
//   tell us the path MTU), batched sendmmsg/recvmmsg with per-datagram IPv4 addresses.
// - Readiness: uv_poll on the fd calls a JS function; JS drains the fd in batches.
// Every entry point validates its buffers against the lengths it is asked to touch, so a JS bug
// becomes an exception, never memory corruption. Addresses cross the boundary as host-order u32.
#define _GNU_SOURCE
#include <node_api.h>
#include <uv.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <linux/if_tun.h>

#define MAXB 256

#define NAPI_OK(call)                                                       \
  do {                                                                      \
    if ((call) != napi_ok) {                                                \
      napi_throw_error(env, "ENAPI", "tunio: " #call " failed");            \
      return NULL;                                                          \
    }                                                                       \
  } while (0)

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[256];
  char code[32];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  snprintf(code, sizeof code, "E%d", err);
  napi_value m, c, e, n;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c);
  napi_create_error(env, c, m, &e);
  napi_create_int32(env, err, &n);
  napi_set_named_property(env, e, "errno", n);
  napi_throw(env, e);
  return NULL;
}

static napi_value throw_arg(napi_env env, const char *msg) {
  napi_throw_type_error(env, "EINVAL", msg);
  return NULL;
}

static napi_value mkint(napi_env env, int64_t v) {
  napi_value r;
  napi_create_int64(env, v, &r);
  return r;
}

static bool get_i32(napi_env env, napi_value v, int32_t *out) {
  return napi_get_value_int32(env, v, out) == napi_ok;
}

// A byte view (Buffer / Uint8Array) of any length.
static bool get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type t;
  size_t n, off;
  napi_value ab;
  void *d;
  if (napi_get_typedarray_info(env, v, &t, &n, &d, &ab, &off) != napi_ok) return false;
  if (t != napi_uint8_array) return false;
  *data = d;
  *len = n;
  return true;
}

// An Int32Array / Uint32Array with at least `need` elements.
static bool get_u32s(napi_env env, napi_value v, size_t need, uint32_t **data) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type t;
  size_t n, off;
  napi_value ab;
  void *d;
  if (napi_get_typedarray_info(env, v, &t, &n, &d, &ab, &off) != napi_ok) return false;
  if (t != napi_int32_array && t != napi_uint32_array) return false;
  if (n < need) return false;
  *data = d;
  return true;
}

// openTun(name, multiQueue) -> fd (non-blocking, close-on-exec, IFF_TUN|IFF_NO_PI)
static napi_value OpenTun(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char name[IFNAMSIZ + 1] = {0};
  size_t nl = 0;
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], name, sizeof name, &nl) != napi_ok) return throw_arg(env, "openTun(name, multiQueue)");
  if (nl == 0 || nl >= IFNAMSIZ) return throw_arg(env, "openTun: interface name must be 1-15 bytes");
  bool mq = false;
  if (argc > 1) napi_get_value_bool(env, argv[1], &mq);
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return throw_errno(env, "open /dev/net/tun", errno);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (mq ? IFF_MULTI_QUEUE : 0);
  memcpy(ifr.ifr_name, name, nl);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "TUNSETIFF", e);
  }
  return mkint(env, fd);
}

// closeFd(fd)
static napi_value CloseFd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  if (argc < 1 || !get_i32(env, argv[0], &fd) || fd < 0) return throw_arg(env, "closeFd(fd)");
  if (close(fd) < 0) return throw_errno(env, "close", errno);
  return NULL;
}

// readBatch(fd, buf, stride, max, lens) -> n packets read; stops at EAGAIN (device empty).
static napi_value ReadBatch(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd, stride, maxp;
  uint8_t *buf;
  size_t blen;
  uint32_t *lens;
  if (argc < 5 || !get_i32(env, argv[0], &fd) || !get_bytes(env, argv[1], &buf, &blen) || !get_i32(env, argv[2], &stride) ||
      !get_i32(env, argv[3], &maxp) || stride <= 0 || maxp < 0 || (size_t)stride * (size_t)maxp > blen ||
      !get_u32s(env, argv[4], (size_t)maxp, &lens))
    return throw_arg(env, "readBatch(fd, buf, stride, max, lens): bad arguments or buffers too small");
  int n = 0;
  while (n < maxp) {
    ssize_t r = read(fd, buf + (size_t)n * stride, (size_t)stride);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (n == 0) return throw_errno(env, "read tun", errno);
      break;
    }
    lens[n++] = (uint32_t)r;
  }
  return mkint(env, n);
}

// writeBatch(fd, buf, offs, lens, n) -> n written; a packet the kernel refuses (EINVAL: not IP) is
// skipped, EAGAIN (queue full) drops the rest of the batch like a full NIC ring would.
static napi_value WriteBatch(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd, n;
  uint8_t *buf;
  size_t blen;
  uint32_t *offs, *lens;
  if (argc < 5 || !get_i32(env, argv[0], &fd) || !get_bytes(env, argv[1], &buf, &blen) || !get_i32(env, argv[4], &n) || n < 0 ||
      !get_u32s(env, argv[2], (size_t)n, &offs) || !get_u32s(env, argv[3], (size_t)n, &lens))
    return throw_arg(env, "writeBatch(fd, buf, offs, lens, n): bad arguments");
  for (int i = 0; i < n; i++)
    if ((size_t)offs[i] + (size_t)lens[i] > blen) return throw_arg(env, "writeBatch: packet outside buffer");
  int ok = 0;
  for (int i = 0; i < n; i++) {
    ssize_t r = write(fd, buf + offs[i], lens[i]);
    if (r < 0) {
      if (errno == EINTR) { i--; continue; }
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      continue;
    }
    ok++;
  }
  return mkint(env, ok);
}

// udpOpen(bindIp:u32, port, rcvbuf, sndbuf) -> fd; non-blocking, DF on (IP_PMTUDISC_DO).
static napi_value UdpOpen(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint32_t ip;
  int32_t port, rb, sb;
  if (argc < 4 || napi_get_value_uint32(env, argv[0], &ip) != napi_ok || !get_i32(env, argv[1], &port) || port < 0 || port > 65535 ||
      !get_i32(env, argv[2], &rb) || !get_i32(env, argv[3], &sb))
    return throw_arg(env, "udpOpen(ip, port, rcvbuf, sndbuf)");
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  // FORCE needs CAP_NET_ADMIN; fall back to the capped variant when not root.
  if (rb > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rb, sizeof rb) < 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb);
  if (sb > 0 && setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sb, sizeof sb) < 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb);
  int pmtu = IP_PMTUDISC_DO;
  if (setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof pmtu) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "setsockopt IP_MTU_DISCOVER", e);
  }
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(ip);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "bind udp", e);
  }
  return mkint(env, fd);
}

// udpPort(fd) -> bound port (tests bind port 0)
static napi_value UdpPort(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  if (argc < 1 || !get_i32(env, argv[0], &fd)) return throw_arg(env, "udpPort(fd)");
  struct sockaddr_in sa;
  socklen_t sl = sizeof sa;
  if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) return throw_errno(env, "getsockname", errno);
  return mkint(env, ntohs(sa.sin_port));
}

// sendBatch(fd, buf, offs, lens, ips, ports, errs, n) -> datagrams sent. errs[i] = 0 or the errno of
// datagram i (EMSGSIZE: larger than the path MTU the kernel knows). EAGAIN stops the batch (the rest
// get EAGAIN): the socket buffer is full and dropping is what a NIC would do.
static napi_value SendBatch(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd, n;
  uint8_t *buf;
  size_t blen;
  uint32_t *offs, *lens, *ips, *ports, *errs;
  if (argc < 8 || !get_i32(env, argv[0], &fd) || !get_bytes(env, argv[1], &buf, &blen) || !get_i32(env, argv[7], &n) || n < 0 || n > MAXB ||
      !get_u32s(env, argv[2], (size_t)n, &offs) || !get_u32s(env, argv[3], (size_t)n, &lens) || !get_u32s(env, argv[4], (size_t)n, &ips) ||
      !get_u32s(env, argv[5], (size_t)n, &ports) || !get_u32s(env, argv[6], (size_t)n, &errs))
    return throw_arg(env, "sendBatch(fd, buf, offs, lens, ips, ports, errs, n): bad arguments (n <= 256)");
  struct mmsghdr msgs[MAXB];
  struct iovec iov[MAXB];
  struct sockaddr_in sas[MAXB];
  for (int i = 0; i < n; i++) {
    if ((size_t)offs[i] + (size_t)lens[i] > blen) return throw_arg(env, "sendBatch: datagram outside buffer");
    memset(&msgs[i], 0, sizeof msgs[i]);
    memset(&sas[i], 0, sizeof sas[i]);
    sas[i].sin_family = AF_INET;
    sas[i].sin_port = htons((uint16_t)ports[i]);
    sas[i].sin_addr.s_addr = htonl(ips[i]);
    iov[i].iov_base = buf + offs[i];
    iov[i].iov_len = lens[i];
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &sas[i];
    msgs[i].msg_hdr.msg_namelen = sizeof sas[i];
    errs[i] = 0;
  }
  int done = 0, sent = 0;
  while (done < n) {
    int r = sendmmsg(fd, msgs + done, (unsigned)(n - done), 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        for (int i = done; i < n; i++) errs[i] = EAGAIN;
        break;
      }
      errs[done++] = (uint32_t)errno; // this datagram failed; carry on with the next
      continue;
    }
    done += r;
    sent += r;
  }
  return mkint(env, sent);
}

// recvBatch(fd, buf, stride, max, lens, ips, ports) -> n datagrams (0 when empty). A datagram longer
// than stride arrives truncated: lens[i] = stride + 1 marks it so the caller drops it.
static napi_value RecvBatch(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd, stride, maxp;
  uint8_t *buf;
  size_t blen;
  uint32_t *lens, *ips, *ports;
  if (argc < 7 || !get_i32(env, argv[0], &fd) || !get_bytes(env, argv[1], &buf, &blen) || !get_i32(env, argv[2], &stride) ||
      !get_i32(env, argv[3], &maxp) || stride <= 0 || maxp < 0 || maxp > MAXB || (size_t)stride * (size_t)maxp > blen ||
      !get_u32s(env, argv[4], (size_t)maxp, &lens) || !get_u32s(env, argv[5], (size_t)maxp, &ips) || !get_u32s(env, argv[6], (size_t)maxp, &ports))
    return throw_arg(env, "recvBatch(fd, buf, stride, max, lens, ips, ports): bad arguments (max <= 256)");
  if (maxp == 0) return mkint(env, 0);
  struct mmsghdr msgs[MAXB];
  struct iovec iov[MAXB];
  struct sockaddr_in sas[MAXB];
  for (int i = 0; i < maxp; i++) {
    memset(&msgs[i], 0, sizeof msgs[i]);
    iov[i].iov_base = buf + (size_t)i * stride;
    iov[i].iov_len = (size_t)stride;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &sas[i];
    msgs[i].msg_hdr.msg_namelen = sizeof sas[i];
  }
  int r;
  do {
    r = recvmmsg(fd, msgs, (unsigned)maxp, MSG_DONTWAIT, NULL);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return mkint(env, 0);
    // ICMP errors queued on the socket (port unreachable from a peer that went away) surface here;
    // they are not fatal for the socket.
    if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH || errno == EMSGSIZE) return mkint(env, 0);
    return throw_errno(env, "recvmmsg", errno);
  }
  for (int i = 0; i < r; i++) {
    lens[i] = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? (uint32_t)stride + 1 : msgs[i].msg_len;
    ips[i] = ntohl(sas[i].sin_addr.s_addr);
    ports[i] = ntohs(sas[i].sin_port);
  }
  return mkint(env, r);
}

// ---- readiness: uv_poll -> JS callback (level-triggered: JS must drain, or it is called again) ----
typedef struct poller {
  uv_poll_t h;
  napi_env env;
  napi_ref cb;
  int closed;
  int refs; // the uv handle and the JS external each hold one; freed when both let go
} poller_t;

static void on_poll(uv_poll_t *h, int status, int events) {
  poller_t *p = (poller_t *)h;
  napi_env env = p->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, global, res, st;
  napi_get_reference_value(env, p->cb, &cb);
  napi_get_global(env, &global);
  napi_create_int32(env, status, &st);
  if (napi_call_function(env, global, cb, 1, &st, &res) != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value ex;
      napi_get_and_clear_last_exception(env, &ex);
      napi_fatal_exception(env, ex);
    }
  }
  napi_close_handle_scope(env, scope);
}

static void poller_unref(poller_t *p) {
  if (--p->refs == 0) free(p);
}

static void on_closed(uv_handle_t *h) { poller_unref((poller_t *)h); }

static void on_finalize(napi_env env, void *data, void *hint) { poller_unref((poller_t *)data); }

static void poll_stop(poller_t *p) {
  if (p->closed) return;
  p->closed = 1;
  uv_poll_stop(&p->h);
  napi_delete_reference(p->env, p->cb);
  uv_close((uv_handle_t *)&p->h, on_closed);
}

static void poll_cleanup_hook(void *arg) { poll_stop((poller_t *)arg); }

// poll(fd, cb) -> handle; cb(status) on each readable event.
static napi_value Poll(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  napi_valuetype t;
  if (argc < 2 || !get_i32(env, argv[0], &fd) || napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function) return throw_arg(env, "poll(fd, cb)");
  uv_loop_t *loop;
  NAPI_OK(napi_get_uv_event_loop(env, &loop));
  poller_t *p = calloc(1, sizeof *p);
  if (!p) return throw_errno(env, "calloc", ENOMEM);
  p->env = env;
  p->refs = 2;
  int rc = uv_poll_init(loop, &p->h, fd);
  if (rc != 0) {
    free(p);
    napi_throw_error(env, "EPOLL", uv_strerror(rc));
    return NULL;
  }
  napi_create_reference(env, argv[1], 1, &p->cb);
  uv_poll_start(&p->h, UV_READABLE, on_poll);
  napi_add_env_cleanup_hook(env, poll_cleanup_hook, p);
  napi_value ext;
  napi_create_external(env, p, on_finalize, NULL, &ext);
  return ext;
}

// unpoll(handle): idempotent
static napi_value Unpoll(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  poller_t *p = NULL;
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&p) != napi_ok || !p) return throw_arg(env, "unpoll(handle)");
  if (!p->closed) {
    napi_remove_env_cleanup_hook(env, poll_cleanup_hook, p);
    poll_stop(p);
  }
  return NULL;
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor d[] = {
      {"openTun", 0, OpenTun, 0, 0, 0, napi_default, 0},
      {"closeFd", 0, CloseFd, 0, 0, 0, napi_default, 0},
      {"readBatch", 0, ReadBatch, 0, 0, 0, napi_default, 0},
      {"writeBatch", 0, WriteBatch, 0, 0, 0, napi_default, 0},
      {"udpOpen", 0, UdpOpen, 0, 0, 0, napi_default, 0},
      {"udpPort", 0, UdpPort, 0, 0, 0, napi_default, 0},
      {"sendBatch", 0, SendBatch, 0, 0, 0, napi_default, 0},
      {"recvBatch", 0, RecvBatch, 0, 0, 0, napi_default, 0},
      {"poll", 0, Poll, 0, 0, 0, napi_default, 0},
      {"unpoll", 0, Unpoll, 0, 0, 0, napi_default, 0},
  };
  napi_define_properties(env, exports, sizeof d / sizeof d[0], d);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
