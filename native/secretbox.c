// XSalsa20-Poly1305 secretbox for the sleeve's packet batches. The bytes are NaCl's crypto_secretbox
// (libsodium's crypto_secretbox_easy: tag first), so peers running sodium-native, tweetnacl or this
// code interoperate; test/unit/secretbox-native.test.ts holds it to sodium-native byte for byte.
//
// Why it exists: sealing a 1400-byte packet through sodium-native costs ~2.1 us, ~0.5 us of it the
// JS->native call; here ~0.9 us. One N-API call seals or opens a whole batch (tunio.c boxSeal/boxOpen),
// and the work is spread over SIMD lanes, the set chosen once by what the CPU has:
//   - subkeys: HSalsa20(key, nonce[0..16)) of up to 16 (AVX-512) or 8 (AVX2) boxes at once, one box
//     per lane;
//   - keystream: Salsa20 under (subkey, nonce[16..24)), 16 / 8 / 4 (SSE2) blocks at once, one block
//     per lane, transposed back with unpack/shuffle; its first 32 bytes are the Poly1305 key, the
//     rest XORs the message;
//   - Poly1305 over the ciphertext (still in L1): 4 blocks at a time in radix 2^26 (AVX2), the scalar
//     radix-2^64 loop for the rest. (An 8-lane AVX-512 version measured no faster here.)
#include "secretbox.h"
#include <pthread.h>
#include <string.h>

typedef unsigned __int128 u128;

static inline uint32_t ld32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static inline uint64_t ld64(const uint8_t *p) { return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32; }
static inline void st32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}
static inline void st64(uint8_t *p, uint64_t v) {
  st32(p, (uint32_t)v);
  st32(p + 4, (uint32_t)(v >> 32));
}

// Clears secrets off the stack; the empty asm that "reads" memory keeps the compiler from dropping
// the memset as a dead store.
static void wipe(void *p, size_t n) {
  memset(p, 0, n);
  __asm__ __volatile__("" : : "r"(p) : "memory");
}

// ---- Salsa20 -------------------------------------------------------------------------------------

#define ROTL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
#define QR(a, b, c, d)   \
  b ^= ROTL(a + d, 7);   \
  c ^= ROTL(b + a, 9);   \
  d ^= ROTL(c + b, 13);  \
  a ^= ROTL(d + c, 18)
// a column round then a row round
#define DOUBLE_ROUND       \
  QR(x0, x4, x8, x12);     \
  QR(x5, x9, x13, x1);     \
  QR(x10, x14, x2, x6);    \
  QR(x15, x3, x7, x11);    \
  QR(x0, x1, x2, x3);      \
  QR(x5, x6, x7, x4);      \
  QR(x10, x11, x8, x9);    \
  QR(x15, x12, x13, x14)

static const uint32_t SIGMA[4] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574}; // "expand 32-byte k"

static void hsalsa20(uint8_t out[32], const uint8_t in[16], const uint8_t k[32]) {
  uint32_t x0 = SIGMA[0], x5 = SIGMA[1], x10 = SIGMA[2], x15 = SIGMA[3];
  uint32_t x1 = ld32(k), x2 = ld32(k + 4), x3 = ld32(k + 8), x4 = ld32(k + 12);
  uint32_t x11 = ld32(k + 16), x12 = ld32(k + 20), x13 = ld32(k + 24), x14 = ld32(k + 28);
  uint32_t x6 = ld32(in), x7 = ld32(in + 4), x8 = ld32(in + 8), x9 = ld32(in + 12);
  for (int i = 0; i < 10; i++) {
    DOUBLE_ROUND;
  }
  st32(out, x0);
  st32(out + 4, x5);
  st32(out + 8, x10);
  st32(out + 12, x15);
  st32(out + 16, x6);
  st32(out + 20, x7);
  st32(out + 24, x8);
  st32(out + 28, x9);
}

// HSalsa20 of up to W (key, nonce) pairs at once, one per lane: the subkeys of a batch's boxes
// (subs: 32 bytes each). Lanes past n repeat pair 0 and are not stored.
#define DEFINE_HSALSA(NAME, W, ATTR)                                                                   \
  typedef uint32_t NAME##_v __attribute__((vector_size(4 * (W))));                                   \
  ATTR static void NAME(uint8_t *subs, const uint8_t *const *nonces, const uint8_t *const *keys, size_t n) { \
    uint32_t in[16][W] __attribute__((aligned(64)));                                                  \
    for (size_t j = 0; j < (W); j++) {                                                                \
      const uint8_t *k = keys[j < n ? j : 0], *nc = nonces[j < n ? j : 0];                            \
      in[0][j] = SIGMA[0];                                                                            \
      in[5][j] = SIGMA[1];                                                                            \
      in[10][j] = SIGMA[2];                                                                           \
      in[15][j] = SIGMA[3];                                                                           \
      for (int i = 0; i < 4; i++) {                                                                   \
        in[1 + i][j] = ld32(k + 4 * i);                                                               \
        in[11 + i][j] = ld32(k + 16 + 4 * i);                                                         \
        in[6 + i][j] = ld32(nc + 4 * i);                                                              \
      }                                                                                               \
    }                                                                                                 \
    NAME##_v x[16];                                                                                   \
    memcpy(x, in, sizeof x);                                                                          \
    NAME##_v x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3], x4 = x[4], x5 = x[5], x6 = x[6], x7 = x[7];  \
    NAME##_v x8 = x[8], x9 = x[9], x10 = x[10], x11 = x[11], x12 = x[12], x13 = x[13], x14 = x[14];   \
    NAME##_v x15 = x[15];                                                                             \
    for (int r = 0; r < 10; r++) {                                                                    \
      DOUBLE_ROUND;                                                                                   \
    }                                                                                                 \
    NAME##_v o[8] = {x0, x5, x10, x15, x6, x7, x8, x9};                                               \
    uint32_t t[8][W];                                                                                 \
    memcpy(t, o, sizeof t);                                                                           \
    for (size_t j = 0; j < n && j < (W); j++)                                                         \
      for (int i = 0; i < 8; i++) st32(subs + 32 * j + 4 * i, t[i][j]);                               \
  }

typedef void (*hsalsa_fn)(uint8_t *subs, const uint8_t *const *nonces, const uint8_t *const *keys, size_t n);

// The Salsa20 input block under key k and 8-byte nonce n (words 8 and 9, the block counter, are set
// per block by the keystream functions).
static void salsa_state(uint32_t s[16], const uint8_t k[32], const uint8_t n[8]) {
  s[0] = SIGMA[0];
  for (int i = 0; i < 4; i++) s[1 + i] = ld32(k + 4 * i);
  s[5] = SIGMA[1];
  s[6] = ld32(n);
  s[7] = ld32(n + 4);
  s[8] = s[9] = 0;
  s[10] = SIGMA[2];
  for (int i = 0; i < 4; i++) s[11 + i] = ld32(k + 16 + 4 * i);
  s[15] = SIGMA[3];
}

// W keystream blocks (counters ctr .. ctr+W-1) into out (W*64 bytes): one block per vector lane, the
// 16 state words as 16 vectors; STORE then transposes lanes back into blocks.
#define DEFINE_KEYSTREAM(NAME, W, ATTR, STORE)                                                        \
  typedef uint32_t NAME##_v __attribute__((vector_size(4 * (W))));                                   \
  ATTR static void NAME(const uint32_t in[16], uint64_t ctr, uint8_t *out) {                         \
    NAME##_v s[16];                                                                                   \
    for (int i = 0; i < 16; i++) {                                                                    \
      NAME##_v z = {0};                                                                               \
      s[i] = z + in[i];                                                                               \
    }                                                                                                 \
    uint32_t lo[W], hi[W];                                                                            \
    for (int j = 0; j < (W); j++) {                                                                   \
      uint64_t c = ctr + (uint64_t)j;                                                                 \
      lo[j] = (uint32_t)c;                                                                            \
      hi[j] = (uint32_t)(c >> 32);                                                                    \
    }                                                                                                 \
    memcpy(&s[8], lo, sizeof lo);                                                                     \
    memcpy(&s[9], hi, sizeof hi);                                                                     \
    NAME##_v x0 = s[0], x1 = s[1], x2 = s[2], x3 = s[3], x4 = s[4], x5 = s[5], x6 = s[6], x7 = s[7];  \
    NAME##_v x8 = s[8], x9 = s[9], x10 = s[10], x11 = s[11], x12 = s[12], x13 = s[13], x14 = s[14];   \
    NAME##_v x15 = s[15];                                                                             \
    for (int r = 0; r < 10; r++) {                                                                    \
      DOUBLE_ROUND;                                                                                   \
    }                                                                                                 \
    NAME##_v o[16] = {x0 + s[0], x1 + s[1], x2 + s[2], x3 + s[3], x4 + s[4], x5 + s[5],               \
                      x6 + s[6], x7 + s[7], x8 + s[8], x9 + s[9], x10 + s[10], x11 + s[11],           \
                      x12 + s[12], x13 + s[13], x14 + s[14], x15 + s[15]};                            \
    STORE(o, out);                                                                                    \
  }

typedef void (*keystream_fn)(const uint32_t in[16], uint64_t ctr, uint8_t *out);

typedef struct poly_s poly_t;
// Poly1305 over 4*groups whole blocks, added to p's state (a SIMD path; NULL: scalar only)
typedef void (*poly_bulk_fn)(poly_t *p, const uint8_t *m, size_t groups);

typedef struct {
  const char *name;
  int n;              // how many widths
  int w[3];           // widths, widest first
  keystream_fn f[3];
  poly_bulk_fn poly4;
  int hw;             // lanes of hs (0: scalar HSalsa20 only)
  hsalsa_fn hs;
} ks_impl;

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86 1
#include <immintrin.h>

// The transposes: after two unpack stages each 128-bit lane holds 4 words of one block; lanes are
// then moved into place. Word order inside a block is little-endian on x86, as Salsa20 wants.
#define UNPACK4(r0, r1, r2, r3, u0, u1, u2, u3, UNLO32, UNHI32, UNLO64, UNHI64) \
  do {                                                                           \
    __typeof__(r0) t0_ = UNLO32(r0, r1), t1_ = UNHI32(r0, r1);                   \
    __typeof__(r0) t2_ = UNLO32(r2, r3), t3_ = UNHI32(r2, r3);                   \
    u0 = UNLO64(t0_, t2_);                                                       \
    u1 = UNHI64(t0_, t2_);                                                       \
    u2 = UNLO64(t1_, t3_);                                                       \
    u3 = UNHI64(t1_, t3_);                                                       \
  } while (0)

static inline void store4_sse2(const void *ov, uint8_t *out) {
  __m128i r[16], u[16];
  memcpy(r, ov, sizeof r);
  for (int g = 0; g < 4; g++)
    UNPACK4(r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3], u[4 * g], u[4 * g + 1], u[4 * g + 2], u[4 * g + 3],
            _mm_unpacklo_epi32, _mm_unpackhi_epi32, _mm_unpacklo_epi64, _mm_unpackhi_epi64);
  for (int b = 0; b < 4; b++)
    for (int g = 0; g < 4; g++) _mm_storeu_si128((__m128i *)(out + 64 * b + 16 * g), u[4 * g + b]);
}
#define STORE4(o, out) store4_sse2(o, out)

__attribute__((target("avx2"))) static inline void store8_avx2(const void *ov, uint8_t *out) {
  __m256i r[16], u[16];
  memcpy(r, ov, sizeof r);
  for (int g = 0; g < 4; g++)
    UNPACK4(r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3], u[4 * g], u[4 * g + 1], u[4 * g + 2], u[4 * g + 3],
            _mm256_unpacklo_epi32, _mm256_unpackhi_epi32, _mm256_unpacklo_epi64, _mm256_unpackhi_epi64);
  // u[4g+b]: words 4g..4g+3 of block b (low half) and of block b+4 (high half)
  for (int b = 0; b < 4; b++)
    for (int h = 0; h < 2; h++) { // h: words 0-7, 8-15
      __m256i a = u[8 * h + b], c = u[8 * h + 4 + b];
      _mm256_storeu_si256((__m256i *)(out + 64 * b + 32 * h), _mm256_permute2x128_si256(a, c, 0x20));
      _mm256_storeu_si256((__m256i *)(out + 64 * (b + 4) + 32 * h), _mm256_permute2x128_si256(a, c, 0x31));
    }
}
#define STORE8(o, out) store8_avx2(o, out)

__attribute__((target("avx2,avx512f,avx512vl"))) static inline void store16_avx512(const void *ov, uint8_t *out) {
  __m512i r[16], u[16];
  memcpy(r, ov, sizeof r);
  for (int g = 0; g < 4; g++)
    UNPACK4(r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3], u[4 * g], u[4 * g + 1], u[4 * g + 2], u[4 * g + 3],
            _mm512_unpacklo_epi32, _mm512_unpackhi_epi32, _mm512_unpacklo_epi64, _mm512_unpackhi_epi64);
  // u[4g+b], 128-bit lane L: words 4g..4g+3 of block 4L+b
  for (int b = 0; b < 4; b++) {
    __m512i A = u[b], B = u[4 + b], C = u[8 + b], D = u[12 + b];
    __m512i x0 = _mm512_shuffle_i32x4(A, B, 0x44), x1 = _mm512_shuffle_i32x4(A, B, 0xee); // A0 A1 B0 B1 | A2 A3 B2 B3
    __m512i y0 = _mm512_shuffle_i32x4(C, D, 0x44), y1 = _mm512_shuffle_i32x4(C, D, 0xee);
    _mm512_storeu_si512((void *)(out + 64 * b), _mm512_shuffle_i32x4(x0, y0, 0x88));        // A0 B0 C0 D0
    _mm512_storeu_si512((void *)(out + 64 * (4 + b)), _mm512_shuffle_i32x4(x0, y0, 0xdd));  // A1 B1 C1 D1
    _mm512_storeu_si512((void *)(out + 64 * (8 + b)), _mm512_shuffle_i32x4(x1, y1, 0x88));
    _mm512_storeu_si512((void *)(out + 64 * (12 + b)), _mm512_shuffle_i32x4(x1, y1, 0xdd));
  }
}
#define STORE16(o, out) store16_avx512(o, out)

DEFINE_KEYSTREAM(ks4_sse2, 4, , STORE4)
DEFINE_KEYSTREAM(ks8_avx2, 8, __attribute__((target("avx2"))), STORE8)
DEFINE_KEYSTREAM(ks16_avx512, 16, __attribute__((target("avx2,avx512f,avx512vl"))), STORE16)
DEFINE_KEYSTREAM(ks8_avx512, 8, __attribute__((target("avx2,avx512f,avx512vl"))), STORE8)
DEFINE_HSALSA(hs8_avx2, 8, __attribute__((target("avx2"))))
DEFINE_HSALSA(hs16_avx512, 16, __attribute__((target("avx2,avx512f,avx512vl"))))
static void poly_avx2(poly_t *p, const uint8_t *m, size_t groups);
// Narrower calls cost about as much as W=8 ones (the same instructions on narrower vectors), so the
// SIMD sets stop at 8.
static const ks_impl GENERIC = {"generic", 1, {4}, {ks4_sse2}, NULL, 0, NULL};
static const ks_impl AVX2 = {"avx2", 1, {8}, {ks8_avx2}, poly_avx2, 8, hs8_avx2};
static const ks_impl AVX512 = {"avx512", 2, {16, 8}, {ks16_avx512, ks8_avx512}, poly_avx2, 16, hs16_avx512};
#else
// no SIMD transpose: lane j of every word vector is block j
#define STORE_SCALAR(o, out)                                                            \
  do {                                                                                  \
    uint32_t t_[16][sizeof(o[0]) / 4];                                                  \
    memcpy(t_, o, sizeof t_);                                                           \
    for (size_t j = 0; j < sizeof(o[0]) / 4; j++)                                       \
      for (int i = 0; i < 16; i++) st32(out + 64 * j + 4 * i, t_[i][j]);               \
  } while (0)
DEFINE_KEYSTREAM(ks4_generic, 4, , STORE_SCALAR)
static const ks_impl GENERIC = {"generic", 1, {4}, {ks4_generic}, NULL, 0, NULL};
#endif

static const ks_impl *impl = &GENERIC;

const char *sb_impl(void) { return impl->name; }

static void pick_best(void) { sb_use(NULL); }

void sb_init(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, pick_best);
}

int sb_use(const char *name) {
#ifdef HAVE_X86
  __builtin_cpu_init();
  int has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  int has2 = __builtin_cpu_supports("avx2");
  if (name == NULL) {
    impl = has512 ? &AVX512 : has2 ? &AVX2 : &GENERIC;
    return 1;
  }
  if (strcmp(name, "avx512") == 0) {
    if (!has512) return 0;
    impl = &AVX512;
    return 1;
  }
  if (strcmp(name, "avx2") == 0) {
    if (!has2) return 0;
    impl = &AVX2;
    return 1;
  }
#else
  if (name == NULL) return 1;
#endif
  if (strcmp(name, "generic") == 0) {
    impl = &GENERIC;
    return 1;
  }
  return 0;
}

#define KS_MAX (16 * 64)

// Fills ks with keystream from block ctr on, at least `need` blocks when one call can (the narrowest
// width that covers them, else the widest); returns the blocks made.
static size_t keystream(const ks_impl *im, const uint32_t st[16], uint64_t ctr, size_t need, uint8_t *ks) {
  int k = 0;
  while (k + 1 < im->n && (size_t)im->w[k + 1] >= need) k++;
  im->f[k](st, ctr, ks);
  return (size_t)im->w[k];
}

// ---- Poly1305 -------------------------------------------------------------------------------------
// h = h0 + h1*2^64 + h2*2^128 (h2 a few bits), r = r0 + r1*2^64 clamped so that r1 is a multiple of
// 4: then h1*r1*2^128 = h1*(r1/4)*2^130 = h1*s1 (mod 2^130-5) with s1 = 5*r1/4, and the product
// needs only three 128-bit sums.

struct poly_s {
  uint64_t r0, r1, s1, h0, h1, h2, pad0, pad1;
};

static void poly_init(poly_t *p, const uint8_t key[32]) {
  p->r0 = ld64(key) & 0x0ffffffc0fffffffULL;
  p->r1 = ld64(key + 8) & 0x0ffffffc0ffffffcULL;
  p->s1 = p->r1 + (p->r1 >> 2);
  p->h0 = p->h1 = p->h2 = 0;
  p->pad0 = ld64(key + 16);
  p->pad1 = ld64(key + 24);
}

// hibit: 1 for full message blocks (the 2^128 pad bit), 0 for the padded last partial block.
static void poly_blocks(poly_t *p, const uint8_t *m, size_t blocks, uint64_t hibit) {
  const uint64_t r0 = p->r0, r1 = p->r1, s1 = p->s1;
  uint64_t h0 = p->h0, h1 = p->h1, h2 = p->h2;
  while (blocks--) {
    u128 t = (u128)h0 + ld64(m);
    h0 = (uint64_t)t;
    t = (u128)h1 + ld64(m + 8) + (uint64_t)(t >> 64);
    h1 = (uint64_t)t;
    h2 += (uint64_t)(t >> 64) + hibit;
    // h2 <= 6 here, so every sum below stays inside its type (d0, d1 < 2^126; d2 < 2^63)
    u128 d0 = (u128)h0 * r0 + (u128)h1 * s1;
    u128 d1 = (u128)h0 * r1 + (u128)h1 * r0 + (u128)h2 * s1;
    uint64_t d2 = h2 * r0;
    d1 += (uint64_t)(d0 >> 64);
    h0 = (uint64_t)d0;
    d2 += (uint64_t)(d1 >> 64);
    h1 = (uint64_t)d1;
    // fold the bits from 2^130 up back in times 5
    uint64_t c = (d2 >> 2) * 5;
    h2 = d2 & 3;
    t = (u128)h0 + c;
    h0 = (uint64_t)t;
    t = (u128)h1 + (uint64_t)(t >> 64);
    h1 = (uint64_t)t;
    h2 += (uint64_t)(t >> 64);
    m += 16;
  }
  p->h0 = h0;
  p->h1 = h1;
  p->h2 = h2;
}

static void poly_tail(poly_t *p, const uint8_t *m, size_t n) {
  uint8_t b[16] = {0};
  memcpy(b, m, n);
  b[n] = 1;
  poly_blocks(p, b, 1, 0);
}

// h < 2p here (h2 <= 4, and h2 = 4 only with h1 = 0), so one conditional subtraction of p reduces it.
static void poly_finish(poly_t *p, uint8_t tag[16]) {
  u128 t = (u128)p->h0 + 5;
  uint64_t g0 = (uint64_t)t;
  t = (u128)p->h1 + (uint64_t)(t >> 64);
  uint64_t g1 = (uint64_t)t;
  uint64_t g2 = p->h2 + (uint64_t)(t >> 64);
  uint64_t use_g = 0 - (g2 >> 2); // all ones when h + 5 >= 2^130, i.e. h >= p
  uint64_t h0 = (g0 & use_g) | (p->h0 & ~use_g);
  uint64_t h1 = (g1 & use_g) | (p->h1 & ~use_g);
  t = (u128)h0 + p->pad0;
  h0 = (uint64_t)t;
  h1 = h1 + p->pad1 + (uint64_t)(t >> 64);
  st64(tag, h0);
  st64(tag + 8, h1);
}

// Poly1305 of a whole message: SIMD over the leading groups of 4 blocks when the implementation has
// it, the scalar loop for the rest.
static void poly_mac(const ks_impl *im, poly_t *p, const uint8_t *m, size_t len) {
  size_t blocks = len / 16;
  if (im->poly4 != NULL && blocks >= 8) {
    size_t groups = blocks / 4;
    im->poly4(p, m, groups);
    m += groups * 64;
    blocks -= groups * 4;
    len -= groups * 64;
  }
  poly_blocks(p, m, blocks, 1);
  if (len & 15) poly_tail(p, m + blocks * 16, len & 15);
}

#ifdef HAVE_X86
// ---- Poly1305, 4 blocks at a time (AVX2) ------------------------------------------------------------
// Radix 2^26: five limbs per number, one 64-bit lane per limb product (vpmuludq). Lane k accumulates
// every 4th block: H_k = H_k*r^4 + m, and at the end h = sum of H_k times r^(4-position of its
// block). Bounds: limbs stay < 2^27 before a multiply, so each of the five products < 2^56 and their
// sum < 2^59.
#define M26 0x3ffffffULL

// a*b mod 2^130-5, limbs < 2^27 in, fully carried limbs (< 2^26, limb 1 < 2^26 + 2^10) out
static void mul26(uint64_t o[5], const uint64_t a[5], const uint64_t b[5]) {
  uint64_t s1 = b[1] * 5, s2 = b[2] * 5, s3 = b[3] * 5, s4 = b[4] * 5;
  uint64_t d0 = a[0] * b[0] + a[1] * s4 + a[2] * s3 + a[3] * s2 + a[4] * s1;
  uint64_t d1 = a[0] * b[1] + a[1] * b[0] + a[2] * s4 + a[3] * s3 + a[4] * s2;
  uint64_t d2 = a[0] * b[2] + a[1] * b[1] + a[2] * b[0] + a[3] * s4 + a[4] * s3;
  uint64_t d3 = a[0] * b[3] + a[1] * b[2] + a[2] * b[1] + a[3] * b[0] + a[4] * s4;
  uint64_t d4 = a[0] * b[4] + a[1] * b[3] + a[2] * b[2] + a[3] * b[1] + a[4] * b[0];
  uint64_t c;
  c = d0 >> 26; d0 &= M26; d1 += c;
  c = d1 >> 26; d1 &= M26; d2 += c;
  c = d2 >> 26; d2 &= M26; d3 += c;
  c = d3 >> 26; d3 &= M26; d4 += c;
  c = d4 >> 26; d4 &= M26; d0 += c * 5;
  c = d0 >> 26; d0 &= M26; d1 += c;
  o[0] = d0; o[1] = d1; o[2] = d2; o[3] = d3; o[4] = d4;
}

// radix 2^64 (h0, h1, h2 small) -> radix 2^26
static void to26(uint64_t l[5], uint64_t h0, uint64_t h1, uint64_t h2) {
  l[0] = h0 & M26;
  l[1] = (h0 >> 26) & M26;
  l[2] = ((h0 >> 52) | (h1 << 12)) & M26;
  l[3] = (h1 >> 14) & M26;
  l[4] = (h1 >> 40) | (h2 << 24);
}

#define VMUL(d, h, r, s)                                                                                   \
  do {                                                                                                     \
    d[0] = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epu32(h[0], r[0]), _mm256_mul_epu32(h[1], s[4])), \
                                             _mm256_add_epi64(_mm256_mul_epu32(h[2], s[3]), _mm256_mul_epu32(h[3], s[2]))), \
                            _mm256_mul_epu32(h[4], s[1]));                                                 \
    d[1] = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epu32(h[0], r[1]), _mm256_mul_epu32(h[1], r[0])), \
                                             _mm256_add_epi64(_mm256_mul_epu32(h[2], s[4]), _mm256_mul_epu32(h[3], s[3]))), \
                            _mm256_mul_epu32(h[4], s[2]));                                                 \
    d[2] = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epu32(h[0], r[2]), _mm256_mul_epu32(h[1], r[1])), \
                                             _mm256_add_epi64(_mm256_mul_epu32(h[2], r[0]), _mm256_mul_epu32(h[3], s[4]))), \
                            _mm256_mul_epu32(h[4], s[3]));                                                 \
    d[3] = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epu32(h[0], r[3]), _mm256_mul_epu32(h[1], r[2])), \
                                             _mm256_add_epi64(_mm256_mul_epu32(h[2], r[1]), _mm256_mul_epu32(h[3], r[0]))), \
                            _mm256_mul_epu32(h[4], s[4]));                                                 \
    d[4] = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epu32(h[0], r[4]), _mm256_mul_epu32(h[1], r[3])), \
                                             _mm256_add_epi64(_mm256_mul_epu32(h[2], r[2]), _mm256_mul_epu32(h[3], r[1]))), \
                            _mm256_mul_epu32(h[4], r[0]));                                                 \
  } while (0)

// partial carry of the five product sums into limbs < 2^26 (limb 1 < 2^26 + 2^10)
#define VCARRY(h, d, mask)                                                                                 \
  do {                                                                                                     \
    __m256i c_;                                                                                            \
    c_ = _mm256_srli_epi64(d[0], 26); h[0] = _mm256_and_si256(d[0], mask); d[1] = _mm256_add_epi64(d[1], c_); \
    c_ = _mm256_srli_epi64(d[1], 26); h[1] = _mm256_and_si256(d[1], mask); d[2] = _mm256_add_epi64(d[2], c_); \
    c_ = _mm256_srli_epi64(d[2], 26); h[2] = _mm256_and_si256(d[2], mask); d[3] = _mm256_add_epi64(d[3], c_); \
    c_ = _mm256_srli_epi64(d[3], 26); h[3] = _mm256_and_si256(d[3], mask); d[4] = _mm256_add_epi64(d[4], c_); \
    c_ = _mm256_srli_epi64(d[4], 26); h[4] = _mm256_and_si256(d[4], mask);                                \
    h[0] = _mm256_add_epi64(h[0], _mm256_add_epi64(c_, _mm256_slli_epi64(c_, 2)));                         \
    c_ = _mm256_srli_epi64(h[0], 26); h[0] = _mm256_and_si256(h[0], mask); h[1] = _mm256_add_epi64(h[1], c_); \
  } while (0)

// 4 blocks as limbs, lanes in block order 0, 2, 1, 3 (what unpacking two 32-byte loads gives)
#define VLOAD(l, m, mask, hibit)                                                                            \
  do {                                                                                                     \
    __m256i a_ = _mm256_loadu_si256((const __m256i *)(m)), b_ = _mm256_loadu_si256((const __m256i *)((m) + 32)); \
    __m256i lo_ = _mm256_unpacklo_epi64(a_, b_), hi_ = _mm256_unpackhi_epi64(a_, b_);                      \
    l[0] = _mm256_and_si256(lo_, mask);                                                                    \
    l[1] = _mm256_and_si256(_mm256_srli_epi64(lo_, 26), mask);                                             \
    l[2] = _mm256_and_si256(_mm256_or_si256(_mm256_srli_epi64(lo_, 52), _mm256_slli_epi64(hi_, 12)), mask); \
    l[3] = _mm256_and_si256(_mm256_srli_epi64(hi_, 14), mask);                                             \
    l[4] = _mm256_or_si256(_mm256_srli_epi64(hi_, 40), hibit);                                             \
  } while (0)

__attribute__((target("avx2"))) static void poly_avx2(poly_t *p, const uint8_t *m, size_t groups) {
  uint64_t r1[5], r2[5], r3[5], r4[5], h[5];
  to26(r1, p->r0, p->r1, 0);
  mul26(r2, r1, r1);
  mul26(r3, r2, r1);
  mul26(r4, r2, r2);
  to26(h, p->h0, p->h1, p->h2);
  const __m256i mask = _mm256_set1_epi64x((long long)M26), hibit = _mm256_set1_epi64x(1LL << 24);
  __m256i R[5], S[5], F[5], FS[5], H[5], L[5], D[5];
  for (int i = 0; i < 5; i++) {
    R[i] = _mm256_set1_epi64x((long long)r4[i]);
    S[i] = _mm256_set1_epi64x((long long)(r4[i] * 5));
    // lanes hold blocks 0, 2, 1, 3 of a group: they end times r^4, r^2, r^3, r^1
    F[i] = _mm256_setr_epi64x((long long)r4[i], (long long)r2[i], (long long)r3[i], (long long)r1[i]);
    FS[i] = _mm256_setr_epi64x((long long)(r4[i] * 5), (long long)(r2[i] * 5), (long long)(r3[i] * 5), (long long)(r1[i] * 5));
  }
  VLOAD(H, m, mask, hibit);
  for (int i = 0; i < 5; i++) H[i] = _mm256_add_epi64(H[i], _mm256_setr_epi64x((long long)h[i], 0, 0, 0)); // h joins block 0
  for (size_t g = 1; g < groups; g++) {
    VMUL(D, H, R, S);
    VCARRY(H, D, mask);
    VLOAD(L, m + 64 * g, mask, hibit);
    for (int i = 0; i < 5; i++) H[i] = _mm256_add_epi64(H[i], L[i]);
  }
  VMUL(D, H, F, FS);
  VCARRY(H, D, mask);
  uint64_t l[5];
  for (int i = 0; i < 5; i++) {
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)t, H[i]);
    l[i] = t[0] + t[1] + t[2] + t[3];
  }
  uint64_t c;
  c = l[0] >> 26; l[0] &= M26; l[1] += c;
  c = l[1] >> 26; l[1] &= M26; l[2] += c;
  c = l[2] >> 26; l[2] &= M26; l[3] += c;
  c = l[3] >> 26; l[3] &= M26; l[4] += c;
  c = l[4] >> 26; l[4] &= M26; l[0] += c * 5;
  c = l[0] >> 26; l[0] &= M26; l[1] += c;
  u128 t = (u128)l[0] + ((u128)l[1] << 26) + ((u128)l[2] << 52);
  p->h0 = (uint64_t)t;
  t = (t >> 64) + ((u128)l[3] << 14) + ((u128)l[4] << 40);
  p->h1 = (uint64_t)t;
  p->h2 = (uint64_t)(t >> 64);
}
#endif

// ---- secretbox ------------------------------------------------------------------------------------

// out may be in itself (in place): whole words are read before they are written, so the loop does
// not need the byte-wise path compilers take when out and in might partly overlap.
static void xor_bytes(uint8_t *out, const uint8_t *in, const uint8_t *ks, size_t n) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    uint64_t a[4], k[4];
    memcpy(a, in + i, 32);
    memcpy(k, ks + i, 32);
    for (int j = 0; j < 4; j++) a[j] ^= k[j];
    memcpy(out + i, a, 32);
  }
  for (; i < n; i++) out[i] = in[i] ^ ks[i];
}

// The message in keystream chunks, then Poly1305 over the ciphertext (for a packet it is still in L1):
// after the XOR when sealing, before it when opening. The first 32 keystream bytes are the Poly1305 key.
// sub: the box's HSalsa20 subkey; n8: the last 8 bytes of its nonce.
static void crypt(const ks_impl *im, int sealing, uint8_t *out, const uint8_t *in, size_t len, const uint8_t sub[32], const uint8_t n8[8], uint8_t tag[16]) {
  uint32_t st[16];
  uint8_t ks[KS_MAX] __attribute__((aligned(64)));
  poly_t p;
  salsa_state(st, sub, n8);
  size_t need = (len + 32 + 63) / 64;
  size_t made = keystream(im, st, 0, need, ks);
  poly_init(&p, ks);
  if (!sealing) poly_mac(im, &p, in, len);
  uint64_t ctr = made;
  size_t done = made * 64 - 32 < len ? made * 64 - 32 : len;
  xor_bytes(out, in, ks + 32, done);
  while (done < len) {
    need -= made;
    made = keystream(im, st, ctr, need, ks);
    ctr += made;
    size_t take = made * 64 < len - done ? made * 64 : len - done;
    xor_bytes(out + done, in + done, ks, take);
    done += take;
  }
  if (sealing) poly_mac(im, &p, out, len);
  poly_finish(&p, tag);
  wipe(st, sizeof st);
  wipe(&p, sizeof p);
  wipe(ks, 64); // the first block held the Poly1305 key
}

void sb_poly1305(uint8_t tag[16], const uint8_t *m, size_t len, const uint8_t key[32]) {
  poly_t p;
  poly_init(&p, key);
  poly_mac(impl, &p, m, len);
  poly_finish(&p, tag);
  wipe(&p, sizeof p);
}

static int tag_ok(const uint8_t want[16], const uint8_t got[16]) {
  uint8_t diff = 0;
  for (int i = 0; i < 16; i++) diff |= (uint8_t)(want[i] ^ got[i]);
  return diff == 0;
}

// Seals (open = 0) or opens a run of boxes: subkeys W at a time with SIMD HSalsa20 (one lane per box),
// then each box. Returns how many opened.
static size_t run(sb_job *jobs, size_t n, uint8_t *ok, int open) {
  const ks_impl *im = impl;
  enum { CHUNK = 16 };
  uint8_t subs[CHUNK * 32];
  const uint8_t *nonces[CHUNK], *keys[CHUNK];
  size_t good = 0;
  for (size_t base = 0; base < n; base += CHUNK) {
    size_t m = n - base < CHUNK ? n - base : CHUNK;
    for (size_t j = 0; j < m; j++) {
      nonces[j] = jobs[base + j].nonce;
      keys[j] = jobs[base + j].key;
    }
    for (size_t j = 0; j < m;) {
      if (im->hs != NULL && m - j > 1) {
        im->hs(subs + 32 * j, nonces + j, keys + j, m - j);
        j += (size_t)im->hw;
      } else {
        hsalsa20(subs + 32 * j, nonces[j], keys[j]);
        j++;
      }
    }
    for (size_t j = 0; j < m; j++) {
      sb_job *b = &jobs[base + j];
      uint8_t tag[16];
      if (!open) {
        crypt(im, 1, b->box + SB_TAG, b->msg, b->len, subs + 32 * j, b->nonce + 16, tag);
        memcpy(b->box, tag, 16);
        continue;
      }
      crypt(im, 0, b->msg, b->box + SB_TAG, b->len, subs + 32 * j, b->nonce + 16, tag);
      ok[base + j] = (uint8_t)tag_ok(b->box, tag);
      if (ok[base + j]) good++;
      else memset(b->msg, 0, b->len); // the caller's memory: not a dead store
    }
  }
  wipe(subs, sizeof subs);
  return good;
}

void sb_seal_many(sb_job *jobs, size_t n) { run(jobs, n, NULL, 0); }

size_t sb_open_many(sb_job *jobs, size_t n, uint8_t *ok) { return run(jobs, n, ok, 1); }

void sb_seal(uint8_t *out, const uint8_t *m, size_t mlen, const uint8_t nonce[SB_NONCE], const uint8_t key[SB_KEY]) {
  sb_job j = {out, (uint8_t *)m, mlen, nonce, key};
  sb_seal_many(&j, 1);
}

int sb_open(uint8_t *out, const uint8_t *box, size_t clen, const uint8_t nonce[SB_NONCE], const uint8_t key[SB_KEY]) {
  sb_job j = {(uint8_t *)box, out, clen, nonce, key};
  uint8_t ok = 0;
  sb_open_many(&j, 1, &ok);
  return ok;
}
