// Seeded randomness. Every random choice tsft makes (weight init, dataset shuffles and sampling, dropout,
// token sampling) draws from a `Random` seeded from `seedEverything`, so that runs repeat exactly on
// every backend (values are made in JS, never by a backend's own RNG).

import { getLogger } from './logger';

/** A small, fast, seedable PRNG (xoshiro128** over 32-bit state), with the draws tsft needs. */
export class Random {
  private s = new Uint32Array(4);

  constructor(seed = 0) {
    this.seed(seed);
  }

  /** Reset the state from a 53-bit integer seed (splitmix32 expansion). */
  seed(seed: number): void {
    let x = (Math.floor(seed) >>> 0) ^ Math.floor(seed / 2 ** 32);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }

  /** A uniform 32-bit unsigned integer. */
  nextU32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }

  /** Uniform in [0, 1). */
  random(): number {
    return (this.nextU32() * 2 ** 21 + (this.nextU32() >>> 11)) / 2 ** 53;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.random() * n);
  }

  /** Standard normal (Box–Muller). */
  normal(): number {
    let u = 0;
    while (u === 0) u = this.random();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.random());
  }

  /** Fill `out` with N(mean, std²) samples. */
  fillNormal(out: Float32Array, mean = 0, std = 1): Float32Array {
    for (let i = 0; i < out.length; i++) out[i] = mean + std * this.normal();
    return out;
  }

  /** A random permutation of 0..n-1 (Fisher–Yates). */
  permutation(n: number): number[] {
    const p = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [p[i], p[j]] = [p[j], p[i]];
    }
    return p;
  }

  /** Snapshot of the state (saved in checkpoints as RNG state). */
  getState(): number[] {
    return Array.from(this.s);
  }

  setState(state: number[]): void {
    this.s.set(state.map((v) => v >>> 0));
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** The process-wide RNG that `seedEverything` seeds. */
export const globalRandom = new Random(0);
let globalSeed = 0;

/**
 * Seed every RNG tsft uses (weight init, data shuffles, sampling) and return the seed, as ms-swift's
 * `seed_everything`.
 * @example
 *   seedEverything(42);   // [INFO:tsft] Global seed set to 42
 */
export function seedEverything(seed: number): number {
  if (!Number.isInteger(seed) || seed < 0) throw new RangeError(`seedEverything: seed must be a non-negative integer, got ${seed}`);
  globalSeed = seed;
  globalRandom.seed(seed);
  getLogger().info(`Global seed set to ${seed}`);
  return seed;
}

/** The seed last given to seedEverything (0 when never called). */
export function getGlobalSeed(): number {
  return globalSeed;
}
