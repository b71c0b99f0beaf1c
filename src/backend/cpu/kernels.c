// CPU kernels of tsft in WebAssembly SIMD (128-bit), run by every thread of the pool (main thread + workers)
// on one shared memory: cross-entropy straight from hidden states, AdamW, and the sum of squared gradients.
//
// Build (clang ≥ 14 with lld; output is byte-for-byte reproducible with one clang version):
//   npm run build:wasm      # = sh src/backend/cpu/build.sh → src/backend/cpu/kernels-wasm.ts (base64)
//
// Work is split into fixed units (vocabulary slices, element blocks) that threads claim with an atomic
// counter, and every result is reduced per unit in a fixed order: the numbers are the same whatever the
// number of threads. No libc, no data segment, no heap: the host (runtime.ts) lays every buffer out and
// passes pointers; each instance gets its own stack (its __stack_pointer is set by the host).
//
// Speed notes (V8 11 / Node 20 on x64, measured on a 2-core Zen 3 at ~3.1 GHz): wasm SIMD has no FMA; two
// f32x4 muls and two adds per cycle make ~49 GFLOP/s per core. V8's code for the packed 4×2 micro-kernel below
// reaches ~36 in cache (the instruction stream, not the FP pipes, is the limit): 4×3 and 6×2 tiles spill
// registers in V8's allocator, unrolling the loop slows it, relaxed-SIMD FMA measured no faster; 5×2 gains
// ~8% but needs 5-row packing.

#include <stddef.h>
#include <stdint.h>
#include <wasm_simd128.h>

typedef float f32;
typedef int32_t i32;
typedef uint32_t u32;

#define EXPORT(name) __attribute__((export_name(#name)))
#define INLINE static inline __attribute__((always_inline))

INLINE v128_t splat(f32 x) { return wasm_f32x4_splat(x); }
INLINE v128_t ld(const f32* p) { return wasm_v128_load(p); }
INLINE void st(f32* p, v128_t v) { wasm_v128_store(p, v); }
INLINE i32 claim(i32* counter) { return __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST); }
INLINE i32 min_i(i32 a, i32 b) { return a < b ? a : b; }

// max/min as one maxps/minps: wasm's f32x4.max/min propagate NaN and order ±0, which costs V8 ~6 instructions.
INLINE v128_t vmax(v128_t a, v128_t b) { return wasm_f32x4_pmax(a, b); }
INLINE v128_t vmin(v128_t a, v128_t b) { return wasm_f32x4_pmin(a, b); }

// exp(x) for 4 lanes, Cephes expf: x = n·ln2 + r, |r| ≤ ln2/2, degree-6 polynomial in r, 2ⁿ through the
// exponent bits. Max relative error ~2 ulp over [−87.3, 88] (clamped outside: exp(−∞) gives ~1e−38).
// n = round(x·log2e) by adding 1.5·2²³ (the float's low bits then hold n).
INLINE v128_t exp4(v128_t x) {
  x = vmin(vmax(x, splat(-87.33654f)), splat(88.0f));
  const v128_t magic = splat(12582912.f);
  v128_t t = wasm_f32x4_add(wasm_f32x4_mul(x, splat(1.44269504088896341f)), magic);
  v128_t n = wasm_f32x4_sub(t, magic);
  v128_t r = wasm_f32x4_sub(x, wasm_f32x4_mul(n, splat(0.693359375f)));
  r = wasm_f32x4_sub(r, wasm_f32x4_mul(n, splat(-2.12194440e-4f)));
  v128_t p = splat(1.9875691500e-4f);
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), splat(1.3981999507e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), splat(8.3334519073e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), splat(4.1665795894e-2f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), splat(1.6666665459e-1f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), splat(5.0000001201e-1f));
  p = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_mul(wasm_f32x4_mul(p, r), r), r), splat(1.f));
  // 2ⁿ: (n + 127) << 23, with n = bits(t) − bits(1.5·2²³) (whose low 9 bits are 0, so they drop out)
  v128_t e = wasm_i32x4_shl(wasm_i32x4_add(t, wasm_i32x4_splat(127)), 23);
  return wasm_f32x4_mul(p, e);
}

// ---------------------------------------------------------------------------------------------------
// GEMM on packed panels (BLIS-style): C (+)= diag(rs)·A·B, C of M rows × NV 4-float vectors, with
//   A packed in panels of 4 rows:     Ap[i/4][p][i%4]          (M % 4 == 0)
//   B packed in panels of 8 columns:  Bp[j/8][p][j%8]          (the last panel is 4 wide when NV is odd)
// so the micro-kernel (4 rows × 2 vectors: 8 accumulators, 2 B vectors and a splat fit the 15 xmm registers
// V8 allocates) walks both operands contiguously. Vector j of row i goes to C + i·ldc + j·ldv (ldv = 4:
// row-major; else e.g. the panel layout of the logits); rs (or 0) scales each row of the product.

#define MICRO(CV)                                                                                      \
  INLINE void micro_4x##CV(f32* C, i32 ldc, i32 ldv, const f32* A, const f32* B, i32 P, i32 acc,     \
                           const f32* rs) {                                                          \
    v128_t c[4][CV];                                                                                 \
    for (int r = 0; r < 4; r++)                                                                      \
      for (int v = 0; v < CV; v++) c[r][v] = splat(0.f);                                             \
    for (i32 p = 0; p < P; p++, A += 4, B += 4 * CV) {                                               \
      v128_t bv[CV];                                                                                 \
      for (int v = 0; v < CV; v++) bv[v] = ld(B + 4 * v);                                            \
      for (int r = 0; r < 4; r++) {                                                                  \
        v128_t s = wasm_v128_load32_splat(A + r);                                                    \
        for (int v = 0; v < CV; v++) c[r][v] = wasm_f32x4_add(c[r][v], wasm_f32x4_mul(s, bv[v]));    \
      }                                                                                              \
    }                                                                                                \
    for (int r = 0; r < 4; r++) {                                                                    \
      const v128_t scale = rs ? splat(rs[r]) : splat(1.f);                                           \
      for (int v = 0; v < CV; v++) {                                                                 \
        f32* o = C + r * ldc + v * ldv;                                                              \
        v128_t x = rs ? wasm_f32x4_mul(c[r][v], scale) : c[r][v];                                    \
        st(o, acc ? wasm_f32x4_add(ld(o), x) : x);                                                   \
      }                                                                                              \
    }                                                                                                \
  }
MICRO(1)
MICRO(2)

/** Rows of the reduction kept in L1 at a time: A and B panels of KC rows (2 KB + 4 KB). */
#define KC 128

static void gemm_pk(f32* C, i32 ldc, i32 ldv, const f32* Ap, const f32* Bp, i32 M, i32 NV, i32 P, i32 acc,
                    const f32* rs) {
  for (i32 p0 = 0; p0 < P; p0 += KC) {
    const i32 kc = min_i(KC, P - p0), a = acc || p0 > 0;
    for (i32 j = 0; j < NV; j += 2) {
      const f32* b = Bp + (size_t)(j / 2) * P * 8;
      f32* c = C + j * ldv;
      if (j + 2 <= NV) {
        for (i32 i = 0; i < M; i += 4)
          micro_4x2(c + i * ldc, ldc, ldv, Ap + (size_t)i * P + p0 * 4, b + p0 * 8, kc, a, rs ? rs + i : 0);
      } else {
        for (i32 i = 0; i < M; i += 4)
          micro_4x1(c + i * ldc, ldc, ldv, Ap + (size_t)i * P + p0 * 4, b + p0 * 4, kc, a, rs ? rs + i : 0);
      }
    }
  }
}

/** The 4×4 block with rows r0..r3 stored transposed (column c of the block at d + 4c). */
INLINE void store_transposed4(f32* d, v128_t r0, v128_t r1, v128_t r2, v128_t r3) {
  v128_t t0 = wasm_i32x4_shuffle(r0, r1, 0, 4, 1, 5), t1 = wasm_i32x4_shuffle(r0, r1, 2, 6, 3, 7);
  v128_t t2 = wasm_i32x4_shuffle(r2, r3, 0, 4, 1, 5), t3 = wasm_i32x4_shuffle(r2, r3, 2, 6, 3, 7);
  st(d, wasm_i32x4_shuffle(t0, t2, 0, 1, 4, 5));
  st(d + 4, wasm_i32x4_shuffle(t0, t2, 2, 3, 6, 7));
  st(d + 8, wasm_i32x4_shuffle(t1, t3, 0, 1, 4, 5));
  st(d + 12, wasm_i32x4_shuffle(t1, t3, 2, 3, 6, 7));
}

/** A panels from a row-major M×P matrix (rows `lds` apart). M, P multiples of 4. */
static void pack_a(f32* dst, const f32* src, i32 M, i32 P, i32 lds) {
  for (i32 i = 0; i < M; i += 4) {
    const f32* s = src + (size_t)i * lds;
    for (i32 p = 0; p < P; p += 4)
      store_transposed4(dst + (size_t)i * P + 4 * p, ld(s + p), ld(s + lds + p), ld(s + 2 * lds + p), ld(s + 3 * lds + p));
  }
}

/** B panels from a row-major P×(4·NV) matrix (rows `lds` apart). */
static void pack_b(f32* dst, const f32* src, i32 P, i32 NV, i32 lds) {
  for (i32 j = 0; j < NV; j += 2) {
    f32* d = dst + (size_t)(j / 2) * P * 8;
    const f32* s = src + 4 * j;
    if (j + 2 <= NV) {
      for (i32 p = 0; p < P; p++) { st(d + 8 * p, ld(s + p * lds)); st(d + 8 * p + 4, ld(s + p * lds + 4)); }
    } else {
      for (i32 p = 0; p < P; p++) st(d + 4 * p, ld(s + p * lds));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Cross-entropy from hidden states. Sizes are padded: N → Np (multiple of 4, extra rows of h are zero),
// H → Hp (multiple of 4, zero columns), V → tiles of VB rows (W's extra rows are zero). The vocabulary is
// cut into `slices` runs of consecutive tiles; a thread claims a whole slice, so a slice's running
// statistics and its dHidden partial have one writer.
//
// A tile's logits L[v][n] (v < VB, n < Np) are kept in panels of 4 rows n: L[n/4][v][n%4] — the A panels of
// dH's product, and per group of 4 rows a column of VB vectors (the row statistics are vertical SIMD).
// Forward, per tile t: L = W_t·hᵀ; per row n the tile max mt, e = exp(L − mt) kept in the store (0 in padded
// columns), the slice's (max, Σexp relative to it, first argmax) updated online; the target's logit read
// where it falls. Backward, per tile, with f_n = exp(mt_n − lse_n)·scale_n (so that D = e·f − onehot·scale):
//   dW_t = (e·f)ᵀ·h − onehot terms         (rows v0.. of dW, written; the one-hot rows fixed after)
//   dH_s += diag(f)·eᵀ·W_t                  (the slice's partial; − scale_n·W[target_n] once, at the end)
// Without the store (too big), the tile's logits are recomputed (one more matmul).

typedef struct {
  f32* W;          // [Vp][Hp] weight (lm_head / tied embedding)
  f32* h;          // [Np][Hp] hidden states
  f32* hB;         // h packed as the forward's B (Hp × Np: panels of 8 rows of h)
  i32* tgt;        // [Np] target ids (−1 in padded rows)
  i32 V, Np, Hp, VB;
  i32 tiles, slices;
  f32* store;      // [tiles][Np/4][VB][4] e = exp(L − mt) from the forward, or 0: recompute in backward
  f32* mt;         // [tiles][Np] tile max of each row
  f32* sliceMax;   // [slices][Np]
  f32* sliceSum;   // [slices][Np] Σ exp(L − sliceMax)
  i32* sliceArg;   // [slices][Np] first column reaching sliceMax
  f32* tlogit;     // [Np] the target's logit
  f32* lse;        // [Np] (backward input: log-sum-exp of each row)
  f32* rowScale;   // [Np] (backward input: upstream gradient per row, 0 in padded rows)
  f32* dW;         // [Vp][Hp] (backward output)
  f32* dHs;        // [slices][Np][Hp] dHidden partial of each slice
  f32* dH;         // [Np][Hp] (backward output: Σ over slices, in slice order)
  f32* hN;         // h packed as dW's B (Np × Hp: panels of 8 columns)
  f32* scratch;    // [threads][ce_scratch_floats] per-thread tiles, see Scratch
  i32 next;        // work counter (slices claimed)
} CeJob;

/** A thread's tiles: packed W (as A of the logits, as B of dH), packed D (A of dW), logits, row factors. */
typedef struct {
  f32 *Wa, *Wb, *Dv, *L, *rows;
} Scratch;

INLINE i32 tiles_per_slice(const CeJob* J) { return (J->tiles + J->slices - 1) / J->slices; }

/** Floats of one thread's scratch (the host allocates threads × this). */
EXPORT(ce_scratch_floats) i32 ce_scratch_floats(i32 VB, i32 Np, i32 Hp) { return 2 * VB * Hp + 2 * VB * Np + Np; }

INLINE Scratch scratch_of(const CeJob* J, i32 tid) {
  const i32 VB = J->VB, Np = J->Np, Hp = J->Hp;
  Scratch S;
  S.Wa = J->scratch + (size_t)tid * ce_scratch_floats(VB, Np, Hp);
  S.Wb = S.Wa + VB * Hp;
  S.Dv = S.Wb + VB * Hp;
  S.L = S.Dv + VB * Np;
  S.rows = S.L + VB * Np;
  return S;
}

/** Element (v, n) of a tile in the panel layout. */
INLINE size_t at_vn(const CeJob* J, i32 v, i32 n) { return (size_t)(n & ~3) * J->VB + v * 4 + (n & 3); }

/** Tile t's logits into L (panel layout). */
static void ce_logits(const CeJob* J, i32 t, const Scratch* S, f32* L) {
  pack_a(S->Wa, J->W + (size_t)t * J->VB * J->Hp, J->VB, J->Hp, J->Hp);
  gemm_pk(L, 4, 4 * J->VB, S->Wa, J->hB, J->VB, J->Np / 4, J->Hp, 0, 0);
}

/** Tile t's logits L → target logits, tile maxima, first argmax, e = exp(L − mt) in place, slice (max, Σ). */
static void ce_tile_stats(const CeJob* J, i32 s, i32 t, f32* L) {
  const i32 Np = J->Np, VB = J->VB, v0 = t * VB, cols = min_i(VB, J->V - v0);
  for (i32 n = 0; n < Np; n++) {
    u32 d = (u32)(J->tgt[n] - v0);
    if (d < (u32)cols) J->tlogit[n] = L[at_vn(J, d, n)];
  }
  f32* sMax = J->sliceMax + (size_t)s * Np;
  f32* sSum = J->sliceSum + (size_t)s * Np;
  i32* sArg = J->sliceArg + (size_t)s * Np;
  for (i32 n = 0; n < Np; n += 4) {
    f32* col = L + (size_t)n * VB;  // VB vectors: rows n..n+3 of columns v0..
    v128_t m = ld(col);
    for (i32 j = 1; j < cols; j++) m = vmax(m, ld(col + 4 * j));
    st(J->mt + (size_t)t * Np + n, m);
    const v128_t M0 = ld(sMax + n);
    if (wasm_v128_any_true(wasm_f32x4_gt(m, M0))) {
      // first argmax, only for rows whose slice max this tile beats (rare after the first tiles)
      for (i32 r = 0; r < 4; r++) {
        const f32 mr = J->mt[(size_t)t * Np + n + r];
        if (!(mr > sMax[n + r])) continue;
        i32 j = 0;
        while (j < cols - 1 && col[4 * j + r] != mr) j++;
        sArg[n + r] = v0 + j;
      }
    }
    v128_t sum = splat(0.f);
    for (i32 j = 0; j < cols; j++) {
      v128_t e = exp4(wasm_f32x4_sub(ld(col + 4 * j), m));
      st(col + 4 * j, e);
      sum = wasm_f32x4_add(sum, e);
    }
    for (i32 j = cols; j < VB; j++) st(col + 4 * j, splat(0.f));
    const v128_t M1 = vmax(M0, m);
    st(sMax + n, M1);
    st(sSum + n, wasm_f32x4_add(wasm_f32x4_mul(ld(sSum + n), exp4(wasm_f32x4_sub(M0, M1))),
                                wasm_f32x4_mul(sum, exp4(wasm_f32x4_sub(m, M1)))));
  }
}

/** Packs h for the forward (hB) and the backward (hN). Single thread: N·H is small. */
EXPORT(ce_prepare) void ce_prepare(CeJob* J) {
  const i32 Np = J->Np, Hp = J->Hp;
  // hB: B of L = W·hᵀ: P = Hp rows (k), columns n; element (k, n) = h[n][k]
  for (i32 n0 = 0; n0 < Np; n0 += 8) {
    const i32 w = min_i(8, Np - n0);
    f32* d = J->hB + (size_t)(n0 / 8) * Hp * 8;
    for (i32 k = 0; k < Hp; k++)
      for (i32 c = 0; c < w; c++) d[k * w + c] = J->h[(n0 + c) * Hp + k];
  }
  // hN: B of dW = D·h: P = Np rows (n), columns k: h itself in panels of 8 columns
  pack_b(J->hN, J->h, Np, Hp / 4, Hp);
}

/** Threads claim slices: logits, tile maxima, e (into the store), slice statistics, target logits. */
EXPORT(ce_forward) void ce_forward(CeJob* J, i32 tid) {
  const i32 Np = J->Np, per = tiles_per_slice(J);
  const Scratch S = scratch_of(J, tid);
  for (i32 s; (s = claim(&J->next)) < J->slices;) {
    f32* sMax = J->sliceMax + (size_t)s * Np;
    for (i32 n = 0; n < Np; n += 4) {
      st(sMax + n, splat(-__builtin_inff()));
      st(J->sliceSum + (size_t)s * Np + n, splat(0.f));
      wasm_v128_store(J->sliceArg + (size_t)s * Np + n, wasm_i32x4_splat(0));
    }
    for (i32 t = s * per; t < min_i((s + 1) * per, J->tiles); t++) {
      f32* L = J->store ? J->store + (size_t)t * J->VB * Np : S.L;
      ce_logits(J, t, &S, L);
      ce_tile_stats(J, s, t, L);
    }
  }
}

static void ce_backward_tile(const CeJob* J, f32* dHs, i32 t, const Scratch* S) {
  const i32 Np = J->Np, Hp = J->Hp, VB = J->VB, v0 = t * VB, cols = min_i(VB, J->V - v0);
  const f32* mt = J->mt + (size_t)t * Np;
  f32* f = S->rows;
  for (i32 n = 0; n < Np; n += 4)
    st(f + n, wasm_f32x4_mul(exp4(wasm_f32x4_sub(ld(mt + n), ld(J->lse + n))), ld(J->rowScale + n)));
  const f32* E = J->store ? J->store + (size_t)t * VB * Np : S->L;
  if (!J->store) {
    ce_logits(J, t, S, S->L);
    for (i32 n = 0; n < Np; n += 4) {
      f32* col = S->L + (size_t)n * VB;
      for (i32 j = 0; j < VB; j++)
        st(col + 4 * j, j < cols ? exp4(wasm_f32x4_sub(ld(col + 4 * j), ld(mt + n))) : splat(0.f));
    }
  }
  // Dv (A of dW: panels of 4 rows v, p = n) = e·f, 4×4 blocks transposed
  for (i32 n = 0; n < Np; n += 4) {
    const f32* col = E + (size_t)n * VB;
    const v128_t fn = ld(f + n);
    for (i32 j = 0; j < VB; j += 4)
      store_transposed4(S->Dv + (size_t)j * Np + 4 * n, wasm_f32x4_mul(ld(col + 4 * j), fn),
                        wasm_f32x4_mul(ld(col + 4 * j + 4), fn), wasm_f32x4_mul(ld(col + 4 * j + 8), fn),
                        wasm_f32x4_mul(ld(col + 4 * j + 12), fn));
  }
  f32* dWt = J->dW + (size_t)v0 * Hp;
  gemm_pk(dWt, Hp, 4, S->Dv, J->hN, VB, Hp / 4, Np, 0, 0);  // dW_t = (e·f)ᵀ·h
  for (i32 n = 0; n < Np; n++) {                            // − scale_n · h_n on the target's row
    u32 d = (u32)(J->tgt[n] - v0);
    if (d >= (u32)cols) continue;
    const v128_t sc = splat(J->rowScale[n]);
    for (i32 k = 0; k < Hp; k += 4)
      st(dWt + d * Hp + k, wasm_f32x4_sub(ld(dWt + d * Hp + k), wasm_f32x4_mul(sc, ld(J->h + n * Hp + k))));
  }
  pack_b(S->Wb, J->W + (size_t)v0 * Hp, VB, Hp / 4, Hp);
  gemm_pk(dHs, Hp, 4, E, S->Wb, Np, Hp / 4, VB, 1, f);  // dH_s += diag(f)·eᵀ·W_t
}

/** Threads claim slices: dW rows of the slice's tiles, the slice's dHidden partial. */
EXPORT(ce_backward) void ce_backward(CeJob* J, i32 tid) {
  const i32 Np = J->Np, Hp = J->Hp, per = tiles_per_slice(J);
  const Scratch S = scratch_of(J, tid);
  for (i32 s; (s = claim(&J->next)) < J->slices;) {
    f32* dHs = J->dHs + (size_t)s * Np * Hp;
    for (i32 i = 0; i < Np * Hp; i += 4) st(dHs + i, splat(0.f));
    for (i32 t = s * per; t < min_i((s + 1) * per, J->tiles); t++) ce_backward_tile(J, dHs, t, &S);
  }
}

/** dH = Σ_s dHs[s] in slice order − scale_n·W[target_n]; threads claim blocks of 4 rows. */
EXPORT(ce_reduce_dh) void ce_reduce_dh(CeJob* J, i32 tid) {
  (void)tid;
  const i32 Np = J->Np, Hp = J->Hp, rows = 4 * Hp;
  for (i32 b; (b = claim(&J->next)) < Np / 4;) {
    f32* out = J->dH + (size_t)b * rows;
    for (i32 i = 0; i < rows; i += 4) {
      v128_t acc = ld(J->dHs + (size_t)b * rows + i);
      for (i32 s = 1; s < J->slices; s++) acc = wasm_f32x4_add(acc, ld(J->dHs + (size_t)s * Np * Hp + (size_t)b * rows + i));
      st(out + i, acc);
    }
    for (i32 n = 4 * b; n < 4 * b + 4; n++) {
      if (J->tgt[n] < 0) continue;
      const v128_t sc = splat(J->rowScale[n]);
      const f32* w = J->W + (size_t)J->tgt[n] * Hp;
      for (i32 k = 0; k < Hp; k += 4) st(J->dH + n * Hp + k, wasm_f32x4_sub(ld(J->dH + n * Hp + k), wasm_f32x4_mul(sc, ld(w + k))));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// AdamW (torch.optim.AdamW, decoupled weight decay) and Σg², over a list of segments (one per parameter)
// cut into blocks of BLOCK elements that threads claim.

#define BLOCK 16384

typedef struct {
  f32* p;
  f32* g;
  f32* m;
  f32* v;
  i32 n;           // elements
  i32 firstBlock;  // index of this segment's first block in the job
  f32 decay;       // 1 − lr·wd, or 1 where the parameter is not decayed
  i32 pad;
} Segment;

typedef struct {
  Segment* segs;
  i32 count;
  i32 blocks;      // total blocks over all segments
  f32 gradScale;   // g ← g · gradScale first (clipping)
  f32 oneMinusB1, b2, oneMinusB2, stepSize, bc2Sqrt, eps;
  f32* partials;   // sumsq: [blocks] Σ g² per block
  i32 next;
} SegJob;

INLINE const Segment* find_segment(const SegJob* J, i32 b) {
  i32 lo = 0, hi = J->count - 1;
  while (lo < hi) {
    i32 mid = (lo + hi + 1) >> 1;
    if (J->segs[mid].firstBlock <= b) lo = mid; else hi = mid - 1;
  }
  return &J->segs[lo];
}

// One AdamW update, written once for 4 lanes (V = v128_t) and once for the scalar tail (V = f32).
#define ADAMW_UPDATE(V, MUL, ADD, SUB, DIV, SQRT, g, p, m, v)                                  \
  {                                                                                             \
    V gi = MUL(g, gs);                                                                          \
    V pi = MUL(p, dec);                                                                         \
    V mi = ADD(m, MUL(SUB(gi, m), w1));                                                         \
    V vi = ADD(MUL(v, b2), MUL(MUL(w2, gi), gi));                                               \
    V den = ADD(DIV(SQRT(vi), bc), eps);                                                        \
    pi = SUB(pi, MUL(ss, DIV(mi, den)));                                                        \
    p = pi; m = mi; v = vi;                                                                     \
  }
#define SMUL(a, b) ((a) * (b))
#define SADD(a, b) ((a) + (b))
#define SSUB(a, b) ((a) - (b))
#define SDIV(a, b) ((a) / (b))

/**
 * Per element, in torch's order (_single_tensor_adam with decoupled decay):
 *   g ← g·gradScale;  p ← p·(1 − lr·wd);  m ← m + (g − m)·(1 − β1);  v ← v·β2 + ((1 − β2)·g)·g
 *   p ← p − (lr / (1 − β1ᵗ)) · (m / (√v / √(1 − β2ᵗ) + eps))
 */
EXPORT(adamw) void adamw(SegJob* J, i32 tid) {
  (void)tid;
  for (i32 b; (b = claim(&J->next)) < J->blocks;) {
    const Segment* S = find_segment(J, b);
    i32 i0 = (b - S->firstBlock) * BLOCK, i1 = min_i(i0 + BLOCK, S->n), i = i0;
    f32 *P = S->p, *M = S->m, *Vv = S->v;
    const f32* G = S->g;
    {
      const v128_t gs = splat(J->gradScale), w1 = splat(J->oneMinusB1), b2 = splat(J->b2), w2 = splat(J->oneMinusB2);
      const v128_t ss = splat(J->stepSize), bc = splat(J->bc2Sqrt), eps = splat(J->eps), dec = splat(S->decay);
      for (; i + 4 <= i1; i += 4) {
        v128_t p = ld(P + i), m = ld(M + i), v = ld(Vv + i);
        ADAMW_UPDATE(v128_t, wasm_f32x4_mul, wasm_f32x4_add, wasm_f32x4_sub, wasm_f32x4_div, wasm_f32x4_sqrt,
                     ld(G + i), p, m, v)
        st(P + i, p); st(M + i, m); st(Vv + i, v);
      }
    }
    const f32 gs = J->gradScale, w1 = J->oneMinusB1, b2 = J->b2, w2 = J->oneMinusB2;
    const f32 ss = J->stepSize, bc = J->bc2Sqrt, eps = J->eps, dec = S->decay;
    for (; i < i1; i++) ADAMW_UPDATE(f32, SMUL, SADD, SSUB, SDIV, __builtin_sqrtf, G[i], P[i], M[i], Vv[i])
  }
}

/** partials[b] = Σ g² over block b (f32 lanes within a block; the host adds the blocks in f64, in order). */
EXPORT(sumsq) void sumsq(SegJob* J, i32 tid) {
  (void)tid;
  for (i32 b; (b = claim(&J->next)) < J->blocks;) {
    const Segment* S = find_segment(J, b);
    i32 i0 = (b - S->firstBlock) * BLOCK, i1 = min_i(i0 + BLOCK, S->n), i = i0;
    const f32* g = S->g;
    v128_t a0 = splat(0.f), a1 = a0;
    for (; i + 8 <= i1; i += 8) {
      v128_t x = ld(g + i), y = ld(g + i + 4);
      a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(x, x));
      a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(y, y));
    }
    a0 = wasm_f32x4_add(a0, a1);
    f32 tail = 0.f;
    for (; i < i1; i++) tail += g[i] * g[i];
    J->partials[b] = ((wasm_f32x4_extract_lane(a0, 0) + wasm_f32x4_extract_lane(a0, 1)) +
                      (wasm_f32x4_extract_lane(a0, 2) + wasm_f32x4_extract_lane(a0, 3))) + tail;
  }
}

/** x ← exp(x) for n floats (n % 4 == 0): exp4 on its own, for the tests of its accuracy. */
EXPORT(exp_inplace) void exp_inplace(f32* x, i32 n) {
  for (i32 i = 0; i < n; i += 4) st(x + i, exp4(ld(x + i)));
}

/** sizeof / offsetof of the job structs into out[0..4], for the host's check of its own layout (runtime.ts). */
EXPORT(layout) void layout(i32* out) {
  out[0] = sizeof(CeJob);
  out[1] = offsetof(CeJob, next);
  out[2] = sizeof(SegJob);
  out[3] = offsetof(SegJob, next);
  out[4] = sizeof(Segment);
}
