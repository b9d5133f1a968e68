// weave.ts data-path addon: the few syscalls Node cannot make or cannot batch.
// - TUN: open + TUNSETIFF (Node has no ioctl), batched non-blocking read()/write() of whole packets
//   (a Node stream on a TUN fd merges writes into one packet, so it is never used). With offloads
//   (IFF_VNET_HDR + TSO): a read is a virtio header + up to 64 KB TCP super-packet, split here into
//   MTU-sized packets in the caller's slots; writes coalesce in-order TCP segments into GSO writes.
// - UDP GSO: runs of equal-size datagrams to one address go out as one UDP_SEGMENT message.
// - UDP: a non-blocking socket with IP_PMTUDISC_DO (DF on every datagram: PMTU probes and EMSGSIZE
//   tell us the path MTU), batched sendmmsg/recvmmsg with per-datagram IPv4 addresses.
// - Readiness: uv_poll on the fd calls a JS function; JS drains the fd in batches. Or (the sleeve's
//   workers) a waiter: the worker thread blocks in epoll_wait on its fds and its own libuv loop.
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
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <linux/if_tun.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include "secretbox.h"

#define MAXB 256
#define VNET_HDR 10 // struct virtio_net_hdr (no num_buffers)

#define NAPI_OK(call)                                                       \
  do {                                                                      \
    if ((call) != napi_ok) {                                                \
      napi_throw_error(env, "ENAPI", "tunio: " #call " failed");            \
      return NULL;                                                          \
    }                                                                       \
  } while (0)

// Every call's prologue: up to n arguments in argv, how many were passed in argc.
#define ARGS(n)                                                   \
  size_t argc = (n);                                              \
  napi_value argv[(n)];                                           \
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL))

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

// n packets in one byte buffer: offs[i] and lens[i] place packet i, and every packet lies inside.
typedef struct { uint8_t *buf; size_t blen; uint32_t *offs, *lens; } pkt_list;

// NULL when the list is sound, else what is wrong with it.
static const char *get_pkt_list(napi_env env, napi_value vbuf, napi_value voffs, napi_value vlens, int32_t n, pkt_list *p) {
  if (n < 0 || !get_bytes(env, vbuf, &p->buf, &p->blen) || !get_u32s(env, voffs, (size_t)n, &p->offs) || !get_u32s(env, vlens, (size_t)n, &p->lens))
    return "bad arguments";
  for (int i = 0; i < n; i++)
    if ((size_t)p->offs[i] + (size_t)p->lens[i] > p->blen) return "packet outside buffer";
  return NULL;
}

// max slots of stride bytes in one byte buffer, and lens[max] for what lands in them.
static bool get_slots(napi_env env, napi_value vbuf, napi_value vstride, napi_value vmax, napi_value vlens, uint8_t **buf, int32_t *stride, int32_t *maxp, uint32_t **lens) {
  size_t blen;
  return get_bytes(env, vbuf, buf, &blen) && get_i32(env, vstride, stride) && get_i32(env, vmax, maxp) && *stride > 0 && *maxp >= 0 &&
         (size_t)*stride * (size_t)*maxp <= blen && get_u32s(env, vlens, (size_t)*maxp, lens);
}

// TypeError "<signature>: <problem>".
static napi_value throw_bad(napi_env env, const char *sig, const char *problem) {
  char msg[192];
  snprintf(msg, sizeof msg, "%s: %s", sig, problem);
  return throw_arg(env, msg);
}

// openTun(name, multiQueue, offload?) -> fd (non-blocking, close-on-exec, IFF_TUN|IFF_NO_PI; with
// offload also IFF_VNET_HDR + TUNSETOFFLOAD(CSUM|TSO4|TSO_ECN): read/write with readBatchVnet/writeBatchVnet)
static napi_value OpenTun(napi_env env, napi_callback_info info) {
  ARGS(3);
  char name[IFNAMSIZ + 1] = {0};
  size_t nl = 0;
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], name, sizeof name, &nl) != napi_ok) return throw_arg(env, "openTun(name, multiQueue)");
  if (nl == 0 || nl >= IFNAMSIZ) return throw_arg(env, "openTun: interface name must be 1-15 bytes");
  bool mq = false;
  if (argc > 1) napi_get_value_bool(env, argv[1], &mq);
  bool offload = false;
  if (argc > 2) napi_get_value_bool(env, argv[2], &offload);
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return throw_errno(env, "open /dev/net/tun", errno);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (mq ? IFF_MULTI_QUEUE : 0) | (offload ? IFF_VNET_HDR : 0);
  memcpy(ifr.ifr_name, name, nl);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "TUNSETIFF", e);
  }
  if (offload) {
    int hs = VNET_HDR;
    unsigned off = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN;
    if (ioctl(fd, TUNSETVNETHDRSZ, &hs) < 0 || ioctl(fd, TUNSETOFFLOAD, off) < 0) {
      int e = errno;
      close(fd);
      return throw_errno(env, "TUNSETOFFLOAD", e);
    }
  }
  return mkint(env, fd);
}

// closeFd(fd)
static napi_value CloseFd(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  if (argc < 1 || !get_i32(env, argv[0], &fd) || fd < 0) return throw_arg(env, "closeFd(fd)");
  if (close(fd) < 0) return throw_errno(env, "close", errno);
  return NULL;
}

// readBatch(fd, buf, stride, max, lens) -> n packets read; stops at EAGAIN (device empty).
static napi_value ReadBatch(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t fd, stride, maxp;
  uint8_t *buf;
  uint32_t *lens;
  if (argc < 5 || !get_i32(env, argv[0], &fd) || !get_slots(env, argv[1], argv[2], argv[3], argv[4], &buf, &stride, &maxp, &lens))
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
  ARGS(5);
  int32_t fd, n;
  pkt_list p;
  const char *bad = argc < 5 || !get_i32(env, argv[0], &fd) || !get_i32(env, argv[4], &n) ? "bad arguments" : get_pkt_list(env, argv[1], argv[2], argv[3], n, &p);
  if (bad) return throw_bad(env, "writeBatch(fd, buf, offs, lens, n)", bad);
  uint8_t *buf = p.buf;
  uint32_t *offs = p.offs, *lens = p.lens;
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

// ---- TUN offloads (IFF_VNET_HDR): segmentation on read, coalescing on write -------------------------
// With TUNSETOFFLOAD(CSUM|TSO4|TSO_ECN) the kernel hands us TCP super-packets of up to 64 KB (one
// read instead of ~45) and packets whose checksum it left for us (csum-partial). readBatch cuts
// them into MTU-sized IPv4 packets with complete checksums in the caller's slots, so the JS engine
// and the wire format see exactly what a TUN without offloads gives. On write, consecutive in-order
// TCP segments of one flow become one GSO super-packet (one writev, one trip through the kernel's
// forwarding and the receiving TCP stack, like GRO); everything else goes out unchanged behind a
// zero virtio header. Coalesced packets are written csum-partial: the kernel treats them as
// verified. That is sound because each came out of an authenticated frame (encrypted) or a UDP
// datagram whose checksum the kernel checked (unencrypted), after our own segmentation checksummed it.

#define VNET_F_NEEDS_CSUM 1
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1
#define VNET_GSO_ECN 0x80
// carry buffer (caller-owned, one per reading thread): a super-packet read but not yet fully handed
// out (the batch filled up), plus counters JS reads.
//   u32 pending length, u32 next segment, u32 malformed (dropped), u32 super-packets split,
//   u32 segments produced, pad, virtio header at 24, packet at CARRY_PKT
#define CARRY_PENDING 0
#define CARRY_NEXT 1
#define CARRY_BAD 2
#define CARRY_SUPER 3
#define CARRY_SEGS 4
#define CARRY_VH 24
#define CARRY_PKT 64
#define CARRY_SIZE (CARRY_PKT + 65536)
#define MAX_COALESCE 64

static inline uint16_t rd16be(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32be(const uint8_t *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }
static inline void wr16be(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wr32be(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v; }
// the virtio header is little-endian (legacy virtio on a little-endian host; TUN default)
static inline uint16_t rd16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline void wr16le(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

// One's complement sum (RFC 1071) over native-order words; callers start every run at an even
// offset of the checksummed data, so partial sums add up.
static uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t n) {
  while (n >= 8) {
    uint32_t a, b;
    memcpy(&a, p, 4);
    memcpy(&b, p + 4, 4);
    sum += (uint64_t)a + b;
    p += 8;
    n -= 8;
  }
  if (n >= 4) {
    uint32_t a;
    memcpy(&a, p, 4);
    sum += a;
    p += 4;
    n -= 4;
  }
  if (n >= 2) {
    uint16_t a;
    memcpy(&a, p, 2);
    sum += a;
    p += 2;
    n -= 2;
  }
  if (n) {
    uint8_t b[2] = {p[0], 0};
    uint16_t a;
    memcpy(&a, b, 2);
    sum += a;
  }
  return sum;
}

static uint16_t csum_fold(uint64_t s) {
  s = (s & 0xffffffffu) + (s >> 32);
  s = (s & 0xffffffffu) + (s >> 32);
  s = (s & 0xffff) + (s >> 16);
  s = (s & 0xffff) + (s >> 16);
  s = (s & 0xffff) + (s >> 16);
  return (uint16_t)s;
}

// pseudo header (IPv4 src, dst at ip+12, protocol, L4 length), native-order partial sum
static uint64_t csum_pseudo4(const uint8_t *ip, uint8_t proto, uint16_t l4len) {
  uint8_t tail[4] = {0, proto, (uint8_t)(l4len >> 8), (uint8_t)l4len};
  return csum_add(0, ip + 12, 8) + csum_add(0, tail, 4);
}

// writes the final (inverted) checksum of a run into p (2 bytes, network order by construction)
static void csum_store(uint8_t *p, uint64_t sum) {
  uint16_t c = (uint16_t)~csum_fold(sum);
  memcpy(p, &c, 2);
}

static void ip4_csum(uint8_t *ip, size_t ihl) {
  ip[10] = ip[11] = 0;
  csum_store(ip + 10, csum_add(0, ip, ihl));
}

// Outcome of splitting one packet read from the TUN: segments written, or GSO_BAD (malformed).
#define GSO_BAD (-1)

// Splits (or just completes) the packet pkt[0,len) described by virtio header vh into out slots
// [0, room) of `stride` bytes, starting at segment `first`; *total gets the segment count.
static int gso_split(uint8_t *pkt, size_t len, const uint8_t *vh, uint8_t *out, size_t stride, int room, uint32_t *lens, int first, int *total) {
  uint8_t flags = vh[0], gt = vh[1];
  uint16_t gso = rd16le(vh + 4), cstart = rd16le(vh + 6), coff = rd16le(vh + 8);
  if ((gt & ~VNET_GSO_ECN) == VNET_GSO_NONE) {
    *total = 1;
    if (len > stride || len == 0) return GSO_BAD;
    if (room < 1) return 0;
    if (flags & VNET_F_NEEDS_CSUM) {
      // the kernel summed the pseudo header into the field; we add the rest from csum_start on
      if ((size_t)cstart + coff + 2 > len) return GSO_BAD;
      uint64_t s = csum_add(0, pkt + cstart, len - cstart);
      csum_store(pkt + cstart + coff, s);
    }
    memcpy(out, pkt, len);
    lens[0] = (uint32_t)len;
    return 1;
  }
  if ((gt & ~VNET_GSO_ECN) != VNET_GSO_TCPV4) return GSO_BAD;
  if (len < 20 || (pkt[0] >> 4) != 4) return GSO_BAD;
  size_t ihl = (size_t)(pkt[0] & 15) * 4;
  size_t tot = rd16be(pkt + 2);
  if (ihl < 20 || tot > len || tot < ihl + 20 || pkt[9] != 6) return GSO_BAD;
  if ((rd16be(pkt + 6) & 0x3fff) != 0) return GSO_BAD; // MF or a fragment offset
  uint8_t *tcp = pkt + ihl;
  size_t thl = (size_t)(tcp[12] >> 4) * 4;
  size_t hl = ihl + thl;
  if (thl < 20 || hl > tot || gso == 0 || hl + gso > stride) return GSO_BAD;
  size_t payload = tot - hl;
  int n = payload == 0 ? 1 : (int)((payload + gso - 1) / gso);
  *total = n;
  uint16_t id = rd16be(pkt + 4);
  uint32_t seq = rd32be(tcp + 4);
  uint8_t tflags = tcp[13];
  int k = 0;
  for (int i = first; i < n && k < room; i++, k++) {
    size_t poff = (size_t)i * gso;
    size_t plen = payload - poff < gso ? payload - poff : gso;
    uint8_t *o = out + (size_t)k * stride;
    memcpy(o, pkt, hl);
    memcpy(o + hl, pkt + hl + poff, plen);
    wr16be(o + 2, (uint16_t)(hl + plen));
    wr16be(o + 4, (uint16_t)(id + i));
    ip4_csum(o, ihl);
    uint8_t *t = o + ihl;
    wr32be(t + 4, seq + (uint32_t)poff);
    uint8_t f = tflags;
    if (i != n - 1) f &= (uint8_t)~0x09; // FIN and PSH only on the last segment
    if (i != 0) f &= (uint8_t)~0x80;     // CWR only on the first
    t[13] = f;
    t[16] = t[17] = 0;
    uint64_t s = csum_pseudo4(o, 6, (uint16_t)(thl + plen));
    s = csum_add(s, t, thl);
    s = csum_add(s, o + hl, plen);
    csum_store(t + 16, s);
    lens[k] = (uint32_t)(hl + plen);
  }
  return k;
}

// Splits what the carry holds into slots; returns slots filled (0 when none fit), GSO_BAD when malformed.
static int carry_drain(uint8_t *carry, uint8_t *buf, size_t stride, int room, uint32_t *lens) {
  uint32_t *cs = (uint32_t *)carry;
  int total = 0;
  int k = gso_split(carry + CARRY_PKT, cs[CARRY_PENDING], carry + CARRY_VH, buf, stride, room, lens, (int)cs[CARRY_NEXT], &total);
  if (k == GSO_BAD) {
    cs[CARRY_BAD]++;
    cs[CARRY_PENDING] = 0;
    return 0;
  }
  if (total > 1 && cs[CARRY_NEXT] == 0) cs[CARRY_SUPER]++;
  if (total > 1) cs[CARRY_SEGS] += (uint32_t)k;
  cs[CARRY_NEXT] += (uint32_t)k;
  if ((int)cs[CARRY_NEXT] >= total) cs[CARRY_PENDING] = 0;
  return k;
}

// A reading thread's carry buffer: at least size bytes, 4-aligned (its head is u32 counters).
static bool get_carry(napi_env env, napi_value v, size_t size, uint8_t **carry) {
  uint8_t *c;
  size_t n;
  if (!get_bytes(env, v, &c, &n) || n < size || ((uintptr_t)c & 3) != 0) return false;
  *carry = c;
  return true;
}

// readBatchVnet(fd, buf, stride, max, lens, carry) -> packets (segments) placed in slots; a TUN opened
// with offloads. A super-packet that does not fit the rest of the batch waits in carry for the next
// call (the caller calls again while batches come back full).
static napi_value ReadBatchVnet(napi_env env, napi_callback_info info) {
  ARGS(6);
  int32_t fd, stride, maxp;
  uint8_t *buf, *carry;
  uint32_t *lens;
  if (argc < 6 || !get_i32(env, argv[0], &fd) || !get_slots(env, argv[1], argv[2], argv[3], argv[4], &buf, &stride, &maxp, &lens) || !get_carry(env, argv[5], CARRY_SIZE, &carry))
    return throw_arg(env, "readBatchVnet(fd, buf, stride, max, lens, carry): bad arguments, buffers too small or carry not 4-aligned");
  uint32_t *cs = (uint32_t *)carry;
  int n = 0;
  while (n < maxp) {
    if (cs[CARRY_PENDING] == 0) {
      struct iovec iov[2] = {{carry + CARRY_VH, VNET_HDR}, {carry + CARRY_PKT, CARRY_SIZE - CARRY_PKT}};
      ssize_t r = readv(fd, iov, 2);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (n == 0) return throw_errno(env, "read tun", errno);
        break;
      }
      if (r == 0) break; // end of file: not a TUN (a FIFO in tests); nothing more to read now
      if (r <= VNET_HDR) {
        cs[CARRY_BAD]++;
        continue;
      }
      cs[CARRY_PENDING] = (uint32_t)(r - VNET_HDR);
      cs[CARRY_NEXT] = 0;
    }
    n += carry_drain(carry, buf + (size_t)n * stride, (size_t)stride, maxp - n, lens + n);
  }
  return mkint(env, n);
}

// gsoSplit(vnetPacket, buf, stride, max, lens) -> segments, or -1 when malformed: the read-side
// splitting alone, on a crafted virtio header + packet (tests).
static napi_value GsoSplit(napi_env env, napi_callback_info info) {
  ARGS(5);
  uint8_t *in, *buf;
  size_t inlen;
  int32_t stride, maxp;
  uint32_t *lens;
  if (argc < 5 || !get_bytes(env, argv[0], &in, &inlen) || !get_slots(env, argv[1], argv[2], argv[3], argv[4], &buf, &stride, &maxp, &lens))
    return throw_arg(env, "gsoSplit(vnetPacket, buf, stride, max, lens): bad arguments");
  if (inlen <= VNET_HDR || inlen - VNET_HDR > 65535) return mkint(env, GSO_BAD);
  uint8_t *pkt = malloc(inlen); // tests only: the hot path splits in place from the carry
  if (!pkt) return throw_errno(env, "malloc", ENOMEM);
  memcpy(pkt, in, inlen);
  int total = 0;
  int k = gso_split(pkt + VNET_HDR, inlen - VNET_HDR, pkt, buf, (size_t)stride, maxp, lens, 0, &total);
  free(pkt);
  if (k != GSO_BAD && k < total) return throw_arg(env, "gsoSplit: more segments than max");
  return mkint(env, k);
}

// Coalescing: a TCP/IPv4 segment that may start or extend a super-packet.
typedef struct seg {
  uint8_t *p;
  size_t len, ihl, thl, payload;
  uint32_t seq;
} seg_t;

static bool seg_parse(uint8_t *p, size_t len, seg_t *s) {
  if (len < 40 || (p[0] >> 4) != 4 || p[9] != 6) return false;
  size_t ihl = (size_t)(p[0] & 15) * 4;
  if (ihl < 20 || rd16be(p + 2) != len || (rd16be(p + 6) & 0x3fff) != 0) return false;
  if (len < ihl + 20) return false;
  size_t thl = (size_t)(p[ihl + 12] >> 4) * 4;
  if (thl < 20 || ihl + thl >= len) return false; // no payload: nothing to coalesce
  uint8_t f = p[ihl + 13];
  if ((f & ~0x18) != 0 || !(f & 0x10)) return false; // ACK, or ACK|PSH only
  s->p = p;
  s->len = len;
  s->ihl = ihl;
  s->thl = thl;
  s->payload = len - ihl - thl;
  s->seq = rd32be(p + ihl + 4);
  return true;
}

// q continues the flow of head h right after `next` (same addresses, ports, IP/TCP header fields
// other than length/id/checksum/seq/flags, same ack, window and options)
static bool seg_follows(const seg_t *h, const seg_t *q, uint32_t next) {
  const uint8_t *a = h->p, *b = q->p;
  if (q->ihl != h->ihl || q->thl != h->thl || q->seq != next) return false;
  if (a[0] != b[0] || a[1] != b[1] || a[6] != b[6] || a[7] != b[7] || a[8] != b[8]) return false;
  if (memcmp(a + 12, b + 12, h->ihl - 12) != 0) return false; // addresses and IP options
  const uint8_t *ta = a + h->ihl, *tb = b + q->ihl;
  if (memcmp(ta, tb, 4) != 0 || memcmp(ta + 8, tb + 8, 5) != 0 || memcmp(ta + 14, tb + 14, 2) != 0) return false;
  if (h->thl > 20 && memcmp(ta + 20, tb + 20, h->thl - 20) != 0) return false;
  return true;
}

// Groups packets [i, n): returns how many (>= 1) go into the next write; *gso the segment size
// (0: the packet goes out alone, unchanged).
static int coalesce_group(uint8_t *buf, const uint32_t *offs, const uint32_t *lens, int i, int n, seg_t *head, size_t *gso) {
  *gso = 0;
  if (!seg_parse(buf + offs[i], lens[i], head) || (head->p[head->ihl + 13] & 0x08)) return 1;
  size_t g = head->payload;
  size_t total = head->len;
  uint32_t next = head->seq + (uint32_t)g;
  int k = 1;
  while (i + k < n && k < MAX_COALESCE) {
    seg_t q;
    if (!seg_parse(buf + offs[i + k], lens[i + k], &q) || !seg_follows(head, &q, next) || q.payload > g || total + q.payload > 65535) break;
    total += q.payload;
    next += (uint32_t)q.payload;
    k++;
    if (q.payload < g || (q.p[q.ihl + 13] & 0x08)) break; // a short or PSH segment ends the run
  }
  if (k > 1) *gso = g;
  return k;
}

// Turns head (in place) into the header of a k-packet super-packet and fills vh; the caller sends
// head's packet followed by the payloads of the others.
static void coalesce_head(seg_t *head, size_t total, size_t gso, bool psh, uint8_t *vh) {
  uint8_t *p = head->p;
  size_t hl = head->ihl + head->thl;
  wr16be(p + 2, (uint16_t)total);
  ip4_csum(p, head->ihl);
  uint8_t *t = p + head->ihl;
  if (psh) t[13] |= 0x08;
  // csum-partial: the field holds the folded pseudo-header sum, the kernel adds header + payload
  uint16_t c = csum_fold(csum_pseudo4(p, 6, (uint16_t)(total - head->ihl)));
  memcpy(t + 16, &c, 2);
  vh[0] = VNET_F_NEEDS_CSUM;
  vh[1] = VNET_GSO_TCPV4;
  wr16le(vh + 2, (uint16_t)hl);
  wr16le(vh + 4, (uint16_t)gso);
  wr16le(vh + 6, (uint16_t)head->ihl);
  wr16le(vh + 8, 16);
}

// Builds the iovecs of the write starting at packet i; returns the packets it covers.
static int coalesce_iov(uint8_t *buf, const uint32_t *offs, const uint32_t *lens, int i, int n, uint8_t *vh, struct iovec *iov, int *niov) {
  seg_t head;
  size_t gso;
  int k = coalesce_group(buf, offs, lens, i, n, &head, &gso);
  memset(vh, 0, VNET_HDR);
  iov[0].iov_base = vh;
  iov[0].iov_len = VNET_HDR;
  iov[1].iov_base = buf + offs[i];
  iov[1].iov_len = lens[i];
  *niov = 2;
  if (k == 1) return 1;
  size_t total = head.len;
  bool psh = false;
  for (int j = 1; j < k; j++) {
    uint8_t *q = buf + offs[i + j];
    size_t qhl = head.ihl + head.thl;
    iov[1 + j].iov_base = q + qhl;
    iov[1 + j].iov_len = lens[i + j] - qhl;
    total += lens[i + j] - qhl;
    psh = (q[head.ihl + 13] & 0x08) != 0;
  }
  *niov = 1 + k;
  coalesce_head(&head, total, gso, psh, vh);
  return k;
}

// writeBatchVnet(fd, buf, offs, lens, n) -> packets written (a coalesced write counts all it carries).
// Like writeBatch: a refused write is skipped, EAGAIN drops the rest.
static napi_value WriteBatchVnet(napi_env env, napi_callback_info info) {
  ARGS(5);
  int32_t fd, n;
  pkt_list p;
  const char *bad = argc < 5 || !get_i32(env, argv[0], &fd) || !get_i32(env, argv[4], &n) ? "bad arguments" : get_pkt_list(env, argv[1], argv[2], argv[3], n, &p);
  if (bad) return throw_bad(env, "writeBatchVnet(fd, buf, offs, lens, n)", bad);
  uint8_t *buf = p.buf;
  uint32_t *offs = p.offs, *lens = p.lens;
  int ok = 0;
  uint8_t vh[VNET_HDR];
  struct iovec iov[MAX_COALESCE + 1];
  for (int i = 0; i < n;) {
    int niov;
    int k = coalesce_iov(buf, offs, lens, i, n, vh, iov, &niov);
    ssize_t r;
    do {
      r = writev(fd, iov, niov); // the head is rewritten already: retry the same iovecs
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    } else ok += k;
    i += k;
  }
  return mkint(env, ok);
}

// groCoalesce(buf, offs, lens, n, out, outLens) -> writes: what writeBatchVnet would write, each
// virtio header + packet back to back in out, lengths in outLens (tests).
static napi_value GroCoalesce(napi_env env, napi_callback_info info) {
  ARGS(6);
  int32_t n;
  pkt_list p;
  uint8_t *out;
  size_t olen;
  uint32_t *olens;
  const char *bad = argc < 6 || !get_i32(env, argv[3], &n) ? "bad arguments" : get_pkt_list(env, argv[0], argv[1], argv[2], n, &p);
  if (!bad && (!get_bytes(env, argv[4], &out, &olen) || !get_u32s(env, argv[5], (size_t)n, &olens))) bad = "bad arguments";
  if (bad) return throw_bad(env, "groCoalesce(buf, offs, lens, n, out, outLens)", bad);
  uint8_t *buf = p.buf;
  uint32_t *offs = p.offs, *lens = p.lens;
  uint8_t vh[VNET_HDR];
  struct iovec iov[MAX_COALESCE + 1];
  size_t at = 0;
  int w = 0;
  for (int i = 0; i < n;) {
    int niov;
    int k = coalesce_iov(buf, offs, lens, i, n, vh, iov, &niov);
    size_t start = at;
    for (int j = 0; j < niov; j++) {
      if (at + iov[j].iov_len > olen) return throw_arg(env, "groCoalesce: out too small");
      memcpy(out + at, iov[j].iov_base, iov[j].iov_len);
      at += iov[j].iov_len;
    }
    olens[w++] = (uint32_t)(at - start);
    i += k;
  }
  return mkint(env, w);
}

// udpOpen(bindIp:u32, port, rcvbuf, sndbuf) -> fd; non-blocking, DF on (IP_PMTUDISC_DO).
static napi_value UdpOpen(napi_env env, napi_callback_info info) {
  ARGS(4);
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
  ARGS(1);
  int32_t fd;
  if (argc < 1 || !get_i32(env, argv[0], &fd)) return throw_arg(env, "udpPort(fd)");
  struct sockaddr_in sa;
  socklen_t sl = sizeof sa;
  if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) return throw_errno(env, "getsockname", errno);
  return mkint(env, ntohs(sa.sin_port));
}

// UDP GSO (UDP_SEGMENT): a run of datagrams to one address, all of one size but the last (which may
// be shorter), leaves in one sendmmsg message: one trip through the kernel's UDP/IP output and the
// underlay for up to UDP_GSO_MAX datagrams instead of one each. On the wire they are the same
// datagrams. A refused run is resent datagram by datagram, so per-datagram errors (EMSGSIZE for the
// path MTU: the run as a whole gets EINVAL) stay exact; a kernel or route that refuses GSO itself
// (EIO: no checksum offload on the way out; EINVAL while the datagrams alone go through) turns it
// off for the process.
#define UDP_GSO_MAX 64
#define UDP_GSO_BYTES 65000
static volatile int udp_gso_off = 0;

typedef union {
  char buf[CMSG_SPACE(sizeof(uint16_t))];
  struct cmsghdr align;
} gso_cmsg_t;

// sends datagram i alone; returns 1 sent, 0 failed (errs[i] set), -1 EAGAIN (errs[i] = EAGAIN)
static int send_one(int fd, struct msghdr *tmpl, struct iovec *iov, uint32_t *errs, int i) {
  struct msghdr m = *tmpl;
  m.msg_iov = iov;
  m.msg_iovlen = 1;
  m.msg_control = NULL;
  m.msg_controllen = 0;
  for (;;) {
    if (sendmsg(fd, &m, 0) >= 0) return 1;
    if (errno == EINTR) continue;
    errs[i] = (uint32_t)((errno == EWOULDBLOCK) ? EAGAIN : errno);
    return errno == EAGAIN || errno == EWOULDBLOCK ? -1 : 0;
  }
}

// sendBatch(fd, buf, offs, lens, ips, ports, errs, n, gso?) -> datagrams sent. errs[i] = 0 or the errno of
// datagram i (EMSGSIZE: larger than the path MTU the kernel knows). EAGAIN stops the batch (the rest
// get EAGAIN): the socket buffer is full and dropping is what a NIC would do.
static napi_value SendBatch(napi_env env, napi_callback_info info) {
  ARGS(9);
  int32_t fd, n;
  pkt_list p;
  uint32_t *ips, *ports, *errs;
  bool want_gso = false;
  if (argc > 8) napi_get_value_bool(env, argv[8], &want_gso);
  const char *bad = argc < 8 || !get_i32(env, argv[0], &fd) || !get_i32(env, argv[7], &n) || n > MAXB ? "bad arguments (n <= 256)" : get_pkt_list(env, argv[1], argv[2], argv[3], n, &p);
  if (!bad && (!get_u32s(env, argv[4], (size_t)n, &ips) || !get_u32s(env, argv[5], (size_t)n, &ports) || !get_u32s(env, argv[6], (size_t)n, &errs))) bad = "bad arguments (n <= 256)";
  if (bad) return throw_bad(env, "sendBatch(fd, buf, offs, lens, ips, ports, errs, n)", bad);
  uint8_t *buf = p.buf;
  uint32_t *offs = p.offs, *lens = p.lens;
  struct mmsghdr msgs[MAXB];
  struct iovec iov[MAXB];
  struct sockaddr_in sas[MAXB];
  gso_cmsg_t ctl[MAXB];
  int gstart[MAXB], gcount[MAXB];
  for (int i = 0; i < n; i++) {
    iov[i].iov_base = buf + offs[i];
    iov[i].iov_len = lens[i];
    errs[i] = 0;
  }
  int nm = 0;
  bool gso = want_gso && !udp_gso_off;
  for (int i = 0; i < n;) {
    int k = 1;
    size_t bytes = lens[i];
    if (gso && lens[i] > 0)
      while (i + k < n && k < UDP_GSO_MAX && ips[i + k] == ips[i] && ports[i + k] == ports[i] && lens[i + k] <= lens[i] && lens[i + k] > 0 &&
             bytes + lens[i + k] <= UDP_GSO_BYTES) {
        bytes += lens[i + k];
        k++;
        if (lens[i + k - 1] < lens[i]) break; // a shorter datagram ends the run
      }
    struct msghdr *h = &msgs[nm].msg_hdr;
    memset(&msgs[nm], 0, sizeof msgs[nm]);
    memset(&sas[nm], 0, sizeof sas[nm]);
    sas[nm].sin_family = AF_INET;
    sas[nm].sin_port = htons((uint16_t)ports[i]);
    sas[nm].sin_addr.s_addr = htonl(ips[i]);
    h->msg_name = &sas[nm];
    h->msg_namelen = sizeof sas[nm];
    h->msg_iov = &iov[i];
    h->msg_iovlen = (size_t)k;
    if (k > 1) {
      memset(&ctl[nm], 0, sizeof ctl[nm]);
      h->msg_control = ctl[nm].buf;
      h->msg_controllen = sizeof ctl[nm].buf;
      struct cmsghdr *cm = CMSG_FIRSTHDR(h);
      cm->cmsg_level = SOL_UDP;
      cm->cmsg_type = UDP_SEGMENT;
      cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      uint16_t seg = (uint16_t)lens[i];
      memcpy(CMSG_DATA(cm), &seg, sizeof seg);
    }
    gstart[nm] = i;
    gcount[nm] = k;
    nm++;
    i += k;
  }
  int done = 0, sent = 0;
  while (done < nm) {
    int r = sendmmsg(fd, msgs + done, (unsigned)(nm - done), 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK) {
        for (int i = gstart[done]; i < n; i++) errs[i] = EAGAIN;
        break;
      }
      int g = done++;
      if (gcount[g] == 1) {
        errs[gstart[g]] = (uint32_t)e; // this datagram failed; carry on with the next
        continue;
      }
      // the run again, one by one: per-datagram errors (and sends) as without GSO
      int stop = 0, ok1 = 0;
      for (int i = gstart[g]; i < gstart[g] + gcount[g]; i++) {
        int o = send_one(fd, &msgs[g].msg_hdr, &iov[i], errs, i);
        if (o < 0) {
          for (int j = i; j < n; j++) errs[j] = EAGAIN;
          stop = 1;
          break;
        }
        ok1 += o;
      }
      sent += ok1;
      // EINVAL is also what a run larger than the path MTU gets (the datagrams alone then get
      // EMSGSIZE): only when they went through alone was it GSO itself the kernel refused.
      if (e == EIO || e == ENOPROTOOPT || e == EOPNOTSUPP || (e == EINVAL && ok1 > 0)) udp_gso_off = 1;
      if (stop) break;
      continue;
    }
    for (int g = done; g < done + r; g++) sent += gcount[g];
    done += r;
  }
  return mkint(env, sent);
}

// udpGsoOff() -> true once the kernel refused UDP GSO itself (process-wide; reports and tests)
static napi_value UdpGsoOff(napi_env env, napi_callback_info info) {
  napi_value r;
  napi_get_boolean(env, udp_gso_off != 0, &r);
  return r;
}

// recvBatch(fd, buf, stride, max, lens, ips, ports) -> n datagrams (0 when empty). A datagram longer
// than stride arrives truncated: lens[i] = stride + 1 marks it so the caller drops it.
static napi_value RecvBatch(napi_env env, napi_callback_info info) {
  ARGS(7);
  int32_t fd, stride, maxp;
  uint8_t *buf;
  uint32_t *lens, *ips, *ports;
  if (argc < 7 || !get_i32(env, argv[0], &fd) || !get_slots(env, argv[1], argv[2], argv[3], argv[4], &buf, &stride, &maxp, &lens) || maxp > MAXB ||
      !get_u32s(env, argv[5], (size_t)maxp, &ips) || !get_u32s(env, argv[6], (size_t)maxp, &ports))
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

// ---- UDP GRO on receive ------------------------------------------------------------------------------
// With UDP_GRO on the socket the kernel queues a run of datagrams from one sender (a UDP GSO send,
// or what the NIC's GRO joined) as one buffer of equal-size segments (the last may be shorter), so
// one skb and one copy carry up to 64 KB. recvBatchGro receives up to GRO_MSGS such buffers into the
// caller's carry with one recvmmsg and hands the segments out one per slot, exactly as recvBatch would
// have returned the datagrams; what does not fit waits in the carry for the next call.
#define GRO_MSGS 8
#define GRO_BUF 65536
// carry: u32 messages held, u32 current message, u32 offset in it; per message (at 16 + 16*m):
// u32 length, u32 segment size, u32 ip, u32 port; data of message m at GRO_DATA + m * GRO_BUF
#define GRO_DATA 256
#define GRO_CARRY_SIZE (GRO_DATA + GRO_MSGS * GRO_BUF)

// udpSetGro(fd) -> true when the kernel took UDP_GRO (then read with recvBatchGro)
static napi_value UdpSetGro(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t fd;
  if (argc < 1 || !get_i32(env, argv[0], &fd)) return throw_arg(env, "udpSetGro(fd)");
  int one = 1;
  napi_value r;
  napi_get_boolean(env, setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0, &r);
  return r;
}

// recvBatchGro(fd, buf, stride, max, lens, ips, ports, carry) -> datagrams, as recvBatch (a segment
// longer than stride is reported as stride + 1 and not copied).
static napi_value RecvBatchGro(napi_env env, napi_callback_info info) {
  ARGS(8);
  int32_t fd, stride, maxp;
  uint8_t *buf, *carry;
  uint32_t *lens, *ips, *ports;
  if (argc < 8 || !get_i32(env, argv[0], &fd) || !get_slots(env, argv[1], argv[2], argv[3], argv[4], &buf, &stride, &maxp, &lens) ||
      !get_u32s(env, argv[5], (size_t)maxp, &ips) || !get_u32s(env, argv[6], (size_t)maxp, &ports) ||
      !get_carry(env, argv[7], GRO_CARRY_SIZE, &carry))
    return throw_arg(env, "recvBatchGro(fd, buf, stride, max, lens, ips, ports, carry): bad arguments, buffers too small or carry not 4-aligned");
  uint32_t *cs = (uint32_t *)carry;
  int n = 0;
  // a recvmmsg that came back short found the socket empty: asking again would be a syscall for
  // EAGAIN on every lone packet (the waiter reports anything that arrives later)
  bool empty = false;
  while (n < maxp) {
    if (cs[1] >= cs[0]) {
      if (empty) break;
      struct mmsghdr msgs[GRO_MSGS];
      struct iovec iov[GRO_MSGS];
      struct sockaddr_in sas[GRO_MSGS];
      union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
      } ctl[GRO_MSGS];
      memset(msgs, 0, sizeof msgs);
      for (int m = 0; m < GRO_MSGS; m++) {
        iov[m].iov_base = carry + GRO_DATA + (size_t)m * GRO_BUF;
        iov[m].iov_len = GRO_BUF;
        msgs[m].msg_hdr.msg_iov = &iov[m];
        msgs[m].msg_hdr.msg_iovlen = 1;
        msgs[m].msg_hdr.msg_name = &sas[m];
        msgs[m].msg_hdr.msg_namelen = sizeof sas[m];
        msgs[m].msg_hdr.msg_control = ctl[m].buf;
        msgs[m].msg_hdr.msg_controllen = sizeof ctl[m].buf;
      }
      int r;
      do {
        r = recvmmsg(fd, msgs, GRO_MSGS, MSG_DONTWAIT, NULL);
      } while (r < 0 && errno == EINTR);
      if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH || errno == EMSGSIZE) break;
        if (n == 0) return throw_errno(env, "recvmmsg", errno);
        break;
      }
      if (r == 0) break;
      empty = r < GRO_MSGS;
      for (int m = 0; m < r; m++) {
        uint32_t *md = cs + 4 + 4 * m;
        uint32_t len = msgs[m].msg_len;
        int gso = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[m].msg_hdr); c; c = CMSG_NXTHDR(&msgs[m].msg_hdr, c))
          if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int))) memcpy(&gso, CMSG_DATA(c), sizeof gso);
        md[0] = len;
        // no segment size: one datagram
        md[1] = (gso > 0 && (uint32_t)gso < len) ? (uint32_t)gso : (len > 0 ? len : 1);
        // cannot happen (a UDP payload or GRO run fits 64 KB); if it did: one over-long datagram, dropped
        if (msgs[m].msg_hdr.msg_flags & MSG_TRUNC) md[0] = md[1] = GRO_BUF;
        md[2] = ntohl(sas[m].sin_addr.s_addr);
        md[3] = ntohs(sas[m].sin_port);
      }
      cs[0] = (uint32_t)r;
      cs[1] = 0;
      cs[2] = 0;
    }
    // hand out segments of the current message
    uint32_t m = cs[1];
    uint32_t *md = cs + 4 + 4 * m;
    uint8_t *data = carry + GRO_DATA + (size_t)m * GRO_BUF;
    while (n < maxp && cs[2] < md[0]) {
      uint32_t seg = md[0] - cs[2] < md[1] ? md[0] - cs[2] : md[1];
      if (seg > (uint32_t)stride) {
        lens[n] = (uint32_t)stride + 1;
      } else {
        memcpy(buf + (size_t)n * stride, data + cs[2], seg);
        lens[n] = seg;
      }
      ips[n] = md[2];
      ports[n] = md[3];
      n++;
      cs[2] += seg;
    }
    if (md[0] == 0) { // an empty datagram: reported as such, like recvmmsg would
      lens[n] = 0;
      ips[n] = md[2];
      ports[n] = md[3];
      n++;
    }
    if (cs[2] >= md[0]) {
      cs[1]++;
      cs[2] = 0;
    }
  }
  return mkint(env, n);
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

// ---- secretbox batches (secretbox.c): one call per batch, not per packet --------------------------

// A batch of boxes: n (vn), the boxes (buf, offs, lens), a nonce and a key per box (n*24, n*32
// bytes). NULL when sound, else what is wrong.
static const char *get_boxes(napi_env env, napi_value vbuf, napi_value voffs, napi_value vlens, napi_value vnonces, napi_value vkeys, napi_value vn,
                             int32_t *n, pkt_list *pl, uint8_t **nonces, uint8_t **keys) {
  size_t nl, kl;
  if (!get_i32(env, vn, n)) return "bad arguments";
  const char *bad = get_pkt_list(env, vbuf, voffs, vlens, *n, pl);
  if (bad) return bad;
  if (!get_bytes(env, vnonces, nonces, &nl) || !get_bytes(env, vkeys, keys, &kl) || nl < (size_t)*n * SB_NONCE || kl < (size_t)*n * SB_KEY)
    return "nonces/keys must hold n*24/n*32 bytes";
  return NULL;
}

// boxSeal(buf, offs, lens, nonces, keys, n): box i spans buf[offs[i], offs[i]+lens[i]); its message
// (lens[i]-16 bytes) sits at offs[i]+16 and is sealed in place, the tag written in front of it.
static napi_value BoxSeal(napi_env env, napi_callback_info info) {
  static const char *sig = "boxSeal(buf, offs, lens, nonces, keys, n)";
  ARGS(6);
  int32_t n;
  pkt_list pl;
  uint8_t *nonces, *keys;
  if (argc < 6) return throw_bad(env, sig, "bad arguments");
  const char *bad = get_boxes(env, argv[0], argv[1], argv[2], argv[3], argv[4], argv[5], &n, &pl, &nonces, &keys);
  if (bad) return throw_bad(env, sig, bad);
  for (int i = 0; i < n; i++)
    if (pl.lens[i] < SB_TAG) return throw_bad(env, sig, "a box is shorter than its 16-byte tag");
  sb_job jobs[MAXB];
  for (int done = 0; done < n;) {
    int m = n - done < MAXB ? n - done : MAXB;
    for (int j = 0; j < m; j++) {
      int i = done + j;
      uint8_t *box = pl.buf + pl.offs[i];
      jobs[j] = (sb_job){box, box + SB_TAG, pl.lens[i] - SB_TAG, nonces + (size_t)i * SB_NONCE, keys + (size_t)i * SB_KEY};
    }
    sb_seal_many(jobs, (size_t)m);
    done += m;
  }
  return NULL;
}

// boxOpen(src, srcOffs, lens, dst, dstOffs, nonces, keys, ok, n) -> how many were authentic: box i is
// src[srcOffs[i], +lens[i]), its message goes to dst[dstOffs[i], +lens[i]-16); ok[i] = 1 when authentic,
// 0 when forged, corrupt or shorter than a tag (its dst bytes zeroed).
static napi_value BoxOpen(napi_env env, napi_callback_info info) {
  static const char *sig = "boxOpen(src, srcOffs, lens, dst, dstOffs, nonces, keys, ok, n)";
  ARGS(9);
  int32_t n;
  pkt_list pl;
  uint8_t *dst, *nonces, *keys, *ok;
  uint32_t *doffs;
  size_t dlen, oklen;
  if (argc < 9) return throw_bad(env, sig, "bad arguments");
  const char *bad = get_boxes(env, argv[0], argv[1], argv[2], argv[5], argv[6], argv[8], &n, &pl, &nonces, &keys);
  if (bad) return throw_bad(env, sig, bad);
  if (!get_bytes(env, argv[3], &dst, &dlen) || !get_u32s(env, argv[4], (size_t)n, &doffs)) return throw_bad(env, sig, "bad dst or dstOffs");
  if (!get_bytes(env, argv[7], &ok, &oklen) || oklen < (size_t)n) return throw_bad(env, sig, "ok must be a Uint8Array of n");
  for (int i = 0; i < n; i++)
    if (pl.lens[i] >= SB_TAG && (size_t)doffs[i] + pl.lens[i] - SB_TAG > dlen) return throw_bad(env, sig, "message outside dst");
  // boxes shorter than a tag never reach the cipher; the others go in runs of up to MAXB
  sb_job jobs[MAXB];
  uint8_t jok[MAXB];
  int idx[MAXB];
  int good = 0, m = 0;
  for (int i = 0; i <= n; i++) {
    if (i < n && pl.lens[i] < SB_TAG) ok[i] = 0;
    else if (i < n) {
      idx[m] = i;
      jobs[m++] = (sb_job){pl.buf + pl.offs[i], dst + doffs[i], pl.lens[i] - SB_TAG, nonces + (size_t)i * SB_NONCE, keys + (size_t)i * SB_KEY};
    }
    if (m == MAXB || (i == n && m > 0)) {
      good += (int)sb_open_many(jobs, (size_t)m, jok);
      for (int j = 0; j < m; j++) ok[idx[j]] = jok[j];
      m = 0;
    }
  }
  return mkint(env, good);
}

// boxImpl(name?) -> the keystream implementation in use; with a name ("generic", "avx2", "avx512")
// switches to it first, or returns null when this CPU or build lacks it (tests compare them).
static napi_value BoxImpl(napi_env env, napi_callback_info info) {
  ARGS(1);
  napi_valuetype t = napi_undefined;
  if (argc > 0) napi_typeof(env, argv[0], &t);
  if (t == napi_string) {
    char name[16] = {0};
    size_t nl;
    if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &nl) != napi_ok || !sb_use(name)) {
      napi_value nul;
      napi_get_null(env, &nul);
      return nul;
    }
  } else if (t != napi_undefined) return throw_bad(env, "boxImpl(name?)", "name must be a string");
  napi_value r;
  napi_create_string_utf8(env, sb_impl(), NAPI_AUTO_LENGTH, &r);
  return r;
}

// boxPoly1305(tag, msg, key): the batches' Poly1305 (tests hold it to other implementations)
static napi_value BoxPoly1305(napi_env env, napi_callback_info info) {
  ARGS(3);
  uint8_t *tag, *msg, *key;
  size_t tl, ml, kl;
  if (argc < 3 || !get_bytes(env, argv[0], &tag, &tl) || !get_bytes(env, argv[1], &msg, &ml) || !get_bytes(env, argv[2], &key, &kl) || tl != 16 || kl != 32)
    return throw_bad(env, "boxPoly1305(tag, msg, key)", "tag must be 16 bytes, key 32");
  sb_poly1305(tag, msg, ml, key);
  return NULL;
}

static void poll_cleanup_hook(void *arg) { poll_stop((poller_t *)arg); }

// poll(fd, cb) -> handle; cb(status) on each readable event.
static napi_value Poll(napi_env env, napi_callback_info info) {
  ARGS(2);
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
  ARGS(1);
  poller_t *p = NULL;
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&p) != napi_ok || !p) return throw_arg(env, "unpoll(handle)");
  if (!p->closed) {
    napi_remove_env_cleanup_hook(env, poll_cleanup_hook, p);
    poll_stop(p);
  }
  return NULL;
}

// ---- waiter: a worker thread blocks in epoll on its data fds and on its own libuv loop ----------
// uv_poll wakes a thread through a whole event-loop turn and a JS callback per wake. A worker whose
// only job is its fds blocks here instead: one epoll set holds the data fds and the thread's libuv
// backend fd (readable when the loop has work of its own: a message from the main thread, a
// terminate), so a packet costs the kernel's wake-up and a return into the JS that called, and JS
// yields to the loop only when the loop has work. After a wait that found data, the next wait polls
// without sleeping for up to spin µs first: a packet that follows within that window (the reply to
// what was just sent, the next burst) is taken without a wake-up, while packets flow. A wait that
// found nothing sleeps in the kernel until an fd or the loop is ready: an idle worker costs nothing.
#define WAIT_MAX_FDS 4
#define WAIT_LOOP (1u << 8)

typedef struct waiter {
  int ep;
  int nfds;
  int hot; // the last wait returned data: spin before sleeping
} waiter_t;

static void waiter_close(waiter_t *w) {
  if (w->ep >= 0) close(w->ep);
  w->ep = -1;
}

static void waiter_finalize(napi_env env, void *data, void *hint) {
  waiter_close((waiter_t *)data);
  free(data);
}

// waiterOpen(fds: Int32Array) -> handle. ioWait reports fds[i] ready as bit i, the loop as WAIT_LOOP.
static napi_value WaiterOpen(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint32_t *fds;
  bool is = false;
  napi_typedarray_type t;
  size_t n = 0, off;
  napi_value ab;
  void *d;
  if (argc < 1 || napi_is_typedarray(env, argv[0], &is) != napi_ok || !is || napi_get_typedarray_info(env, argv[0], &t, &n, &d, &ab, &off) != napi_ok ||
      t != napi_int32_array || n == 0 || n > WAIT_MAX_FDS)
    return throw_arg(env, "waiterOpen(fds): an Int32Array of 1-4 fds");
  fds = d;
  uv_loop_t *loop;
  NAPI_OK(napi_get_uv_event_loop(env, &loop));
  waiter_t *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, "calloc", ENOMEM);
  w->ep = epoll_create1(EPOLL_CLOEXEC);
  w->nfds = (int)n;
  if (w->ep < 0) {
    free(w);
    return throw_errno(env, "epoll_create1", errno);
  }
  for (size_t i = 0; i <= n; i++) {
    int fd = i < n ? (int)fds[i] : uv_backend_fd(loop);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i < n ? 1u << i : WAIT_LOOP};
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
      int e = errno;
      waiter_close(w);
      free(w);
      return throw_errno(env, "epoll_ctl", e);
    }
  }
  napi_value ext;
  if (napi_create_external(env, w, waiter_finalize, NULL, &ext) != napi_ok) {
    waiter_close(w);
    free(w);
    napi_throw_error(env, "ENAPI", "tunio: napi_create_external failed");
    return NULL;
  }
  return ext;
}

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// one epoll_wait; EINTR counts as nothing ready (the caller waits again)
static int waiter_poll(waiter_t *w, struct epoll_event *ev, int timeout_ms) {
  int r = epoll_wait(w->ep, ev, w->nfds + 1, timeout_ms);
  return r < 0 && errno == EINTR ? 0 : r;
}

// ioWait(handle, timeoutMs, spinUs) -> ready bits (0: the timeout passed). See the section head.
static napi_value IoWait(napi_env env, napi_callback_info info) {
  ARGS(3);
  waiter_t *w = NULL;
  int32_t timeout_ms, spin_us;
  if (argc < 3 || napi_get_value_external(env, argv[0], (void **)&w) != napi_ok || !w || !get_i32(env, argv[1], &timeout_ms) ||
      !get_i32(env, argv[2], &spin_us))
    return throw_arg(env, "ioWait(handle, timeoutMs, spinUs)");
  if (w->ep < 0) return throw_arg(env, "ioWait: waiter closed");
  struct epoll_event ev[WAIT_MAX_FDS + 1];
  int r = 0;
  if (w->hot && spin_us > 0) {
    uint64_t end = mono_ns() + (uint64_t)spin_us * 1000u;
    while ((r = waiter_poll(w, ev, 0)) == 0 && mono_ns() < end) {
    }
  }
  if (r == 0) r = waiter_poll(w, ev, timeout_ms);
  if (r < 0) return throw_errno(env, "epoll_wait", errno);
  uint32_t bits = 0;
  for (int i = 0; i < r; i++) bits |= ev[i].data.u32;
  w->hot = (bits & ~WAIT_LOOP) != 0;
  return mkint(env, bits);
}

// waiterFd(handle) -> the waiter's epoll fd (another thread arms and disarms its fds: waiterArm)
static napi_value WaiterFd(napi_env env, napi_callback_info info) {
  ARGS(1);
  waiter_t *w = NULL;
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&w) != napi_ok || !w) return throw_arg(env, "waiterFd(handle)");
  return mkint(env, w->ep);
}

// waiterArm(epfd, fd, bit, on) -> false when epfd no longer watches fd (its waiter closed). Off, the
// waiter's thread is not woken when fd becomes readable; on again, it is woken at once if it is.
static napi_value WaiterArm(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t ep, fd, bit;
  bool on = false;
  if (argc < 4 || !get_i32(env, argv[0], &ep) || !get_i32(env, argv[1], &fd) || !get_i32(env, argv[2], &bit) || napi_get_value_bool(env, argv[3], &on) != napi_ok)
    return throw_arg(env, "waiterArm(epfd, fd, bit, on)");
  struct epoll_event ev = {.events = on ? EPOLLIN : 0, .data.u32 = (uint32_t)bit};
  napi_value r;
  napi_get_boolean(env, epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) == 0, &r);
  return r;
}

// waiterClose(handle): idempotent (the finalizer closes it otherwise)
static napi_value WaiterClose(napi_env env, napi_callback_info info) {
  ARGS(1);
  waiter_t *w = NULL;
  if (argc < 1 || napi_get_value_external(env, argv[0], (void **)&w) != napi_ok || !w) return throw_arg(env, "waiterClose(handle)");
  waiter_close(w);
  return NULL;
}

// mallocTrim() -> true when glibc gave memory back. malloc_trim(0) returns the free pages of every
// arena to the kernel, not only the main heap's top (the only part free() ever returns): a router's
// arena keeps the holes its start-up and gossip bursts left (api/parts/memory.ts). false without glibc.
static napi_value MallocTrim(napi_env env, napi_callback_info info) {
  (void)info;
#ifdef __GLIBC__
  int r = malloc_trim(0);
#else
  int r = 0;
#endif
  napi_value out;
  napi_get_boolean(env, r != 0, &out);
  return out;
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
      {"readBatchVnet", 0, ReadBatchVnet, 0, 0, 0, napi_default, 0},
      {"writeBatchVnet", 0, WriteBatchVnet, 0, 0, 0, napi_default, 0},
      {"gsoSplit", 0, GsoSplit, 0, 0, 0, napi_default, 0},
      {"groCoalesce", 0, GroCoalesce, 0, 0, 0, napi_default, 0},
      {"udpGsoOff", 0, UdpGsoOff, 0, 0, 0, napi_default, 0},
      {"udpSetGro", 0, UdpSetGro, 0, 0, 0, napi_default, 0},
      {"recvBatchGro", 0, RecvBatchGro, 0, 0, 0, napi_default, 0},
      {"poll", 0, Poll, 0, 0, 0, napi_default, 0},
      {"unpoll", 0, Unpoll, 0, 0, 0, napi_default, 0},
      {"waiterOpen", 0, WaiterOpen, 0, 0, 0, napi_default, 0},
      {"ioWait", 0, IoWait, 0, 0, 0, napi_default, 0},
      {"waiterClose", 0, WaiterClose, 0, 0, 0, napi_default, 0},
      {"waiterFd", 0, WaiterFd, 0, 0, 0, napi_default, 0},
      {"waiterArm", 0, WaiterArm, 0, 0, 0, napi_default, 0},
      {"boxSeal", 0, BoxSeal, 0, 0, 0, napi_default, 0},
      {"boxOpen", 0, BoxOpen, 0, 0, 0, napi_default, 0},
      {"boxImpl", 0, BoxImpl, 0, 0, 0, napi_default, 0},
      {"boxPoly1305", 0, BoxPoly1305, 0, 0, 0, napi_default, 0},
      {"mallocTrim", 0, MallocTrim, 0, 0, 0, napi_default, 0},
  };
  sb_init();
  napi_define_properties(env, exports, sizeof d / sizeof d[0], d);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
