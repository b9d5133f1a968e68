// Anti-replay window for datagram counters (the RFC 6479 bitmap, as in WireGuard). A datagram may
// arrive late or reordered by the underlay, so we accept any counter not seen before that is within
// WINDOW of the highest seen; duplicates and older counters are rejected. check() runs before the
// (costly) MAC verification; update() only after it, so forged datagrams cannot move the window.
// Counters are doubles: exact to 2^53, which a per-connection counter never reaches.

const WORD_BITS = 32;
const WORDS = 64; // ring of 64 x 32 bits = 2048 counters of history
const RING_BITS = WORDS * WORD_BITS;
/** Counters this far below the highest seen are too old; one word is kept free for the slide. */
export const REPLAY_WINDOW = RING_BITS - WORD_BITS;
/** Largest counter accepted on the wire (2^53 - 1). */
export const MAX_COUNTER = Number.MAX_SAFE_INTEGER;

export const enum ReplayVerdict {
  Ok = 0,
  Duplicate = 1,
  TooOld = 2,
}

export class ReplayWindow {
  private readonly bits = new Uint32Array(WORDS);
  private top = -1; // highest accepted counter; -1 before the first

  get highest(): number { return this.top; }

  /** Whether counter may be accepted (does not record it). */
  check(counter: number): ReplayVerdict {
    if (counter > this.top) return ReplayVerdict.Ok;
    if (this.top - counter >= REPLAY_WINDOW) return ReplayVerdict.TooOld;
    const word = Math.floor(counter / WORD_BITS) % WORDS;
    const bit = 1 << (counter % WORD_BITS);
    return (this.bits[word] & bit) !== 0 ? ReplayVerdict.Duplicate : ReplayVerdict.Ok;
  }

  /** Records counter after the datagram proved authentic; returns the same verdict check() would. */
  update(counter: number): ReplayVerdict {
    if (counter > this.top) {
      const topWord = this.top < 0 ? -1 : Math.floor(this.top / WORD_BITS);
      const newWord = Math.floor(counter / WORD_BITS);
      // Clear the words the window slides over; a jump beyond the whole ring clears all of it.
      const steps = Math.min(newWord - topWord, WORDS);
      for (let i = 1; i <= steps; i++) this.bits[(topWord + i) % WORDS] = 0;
      this.top = counter;
    } else {
      const v = this.check(counter);
      if (v !== ReplayVerdict.Ok) return v;
    }
    const word = Math.floor(counter / WORD_BITS) % WORDS;
    this.bits[word] |= 1 << (counter % WORD_BITS);
    return ReplayVerdict.Ok;
  }

  reset(): void {
    this.bits.fill(0);
    this.top = -1;
  }
}
