// XSalsa20-Poly1305 secretbox (NaCl's crypto_secretbox, libsodium's crypto_secretbox_easy layout:
// 16-byte tag, then the ciphertext), written for the sleeve's batches: see secretbox.c.
#ifndef WEAVE_SECRETBOX_H
#define WEAVE_SECRETBOX_H
#include <stddef.h>
#include <stdint.h>

#define SB_TAG 16
#define SB_NONCE 24
#define SB_KEY 32

// Seals mlen bytes at m into out: tag at out[0..16), ciphertext at out[16..16+mlen). m may be exactly
// out + 16 (sealing in place); any other overlap is undefined.
void sb_seal(uint8_t *out, const uint8_t *m, size_t mlen, const uint8_t nonce[SB_NONCE], const uint8_t key[SB_KEY]);

// Opens the box at box (tag + clen bytes of ciphertext) into out (clen bytes): 1 when authentic, else
// 0 and out is zeroed. out may be exactly box + 16 (opening in place); any other overlap is undefined.
int sb_open(uint8_t *out, const uint8_t *box, size_t clen, const uint8_t nonce[SB_NONCE], const uint8_t key[SB_KEY]);

// One box of a batch: box = tag + ciphertext, msg = the len-byte message (the plaintext).
typedef struct {
  uint8_t *box;
  uint8_t *msg;
  size_t len;
  const uint8_t *nonce; // SB_NONCE bytes
  const uint8_t *key;   // SB_KEY bytes
} sb_job;

// sb_seal / sb_open over a batch (the subkeys of several boxes are computed together, so a batch is
// cheaper than its boxes one by one). ok[i]: 1 when box i was authentic. Returns how many were.
void sb_seal_many(sb_job *jobs, size_t n);
size_t sb_open_many(sb_job *jobs, size_t n, uint8_t *ok);

// Poly1305 (the MAC inside the boxes), for tests against other implementations.
void sb_poly1305(uint8_t tag[16], const uint8_t *m, size_t len, const uint8_t key[32]);

// The keystream implementation in use: "generic", "avx2" or "avx512". sb_use() picks one by name
// (tests compare them) and returns 0 when this CPU or build lacks it; sb_use(NULL) picks the best.
const char *sb_impl(void);
// Picks the best implementation once per process (every thread's addon load calls it; a later
// sb_use stays in force).
void sb_init(void);
int sb_use(const char *name);

#endif
