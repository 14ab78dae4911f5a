// The TW kernel body, written once with GCC/Clang vector extensions and compiled once per
// instruction set: include it after defining TWK_NS (namespace) and TWK_VW (floats per
// vector register: 4 SSE2, 8 AVX2, 16 AVX-512), in a translation unit compiled with the
// matching -m flags (see CMakeLists.txt). Nothing here depends on -march=native.
//
// Per tile t (k_t kept rows, G columns) and a range of rows of x:
//   * M == 1: a GEMV streaming the tile's compact rows once, each row's x value read
//     through the row table and broadcast (memory-bound: reads k_t x G values once);
//   * otherwise a register-blocked GEMM (BLIS-style) whose MR x NR micro-kernel accumulates
//     in registers (float32 accumulation for bf16 too). The weights: up to SMALL_M rows
//     (bfloat16: MR; and G a multiple of NR) read where they are, in chunks of KCI compact rows that
//     every sliver uses while they are in L1, the next chunk prefetched meanwhile (bfloat16
//     widened in registers); beyond that packed once per tile into NR-wide float32 panels.
//     The activations of compact row k are x[m0:m0+MR, rows[t, k]], read in one of three
//     ways:
//       - float32: broadcast straight from x (MR rows ldx apart, column rows[t, k]; nothing
//         packed, no copy of x);
//       - bfloat16, many rows (x^T given, see TwProblem::xt): MR contiguous floats of row
//         rows[t, k] of the float32 x^T the handler built;
//       - bfloat16, few rows: gathered *while packing* float32 slivers (per K block, or per
//         chunk in place; no gathered copy of x beyond that).
// Results land in a per-thread MC x Gp float scratch and are then written (and rounded for
// bf16) to the tile's output columns cols[t, :] (padding columns dropped); a float32 tile
// of whole NR-wide panels over contiguous output columns accumulates straight into y.

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "tw_kernel.h"

#ifndef TWK_NS
#error "define TWK_NS and TWK_VW before including tw_kernel_impl.h"
#endif

namespace tvwjax {
namespace TWK_NS {

// The micro-tile: MR rows x NV vectors, MR * NV accumulators. AVX-512 (32 registers):
// 6 x 64 (24 accumulators, 4 weight vectors, one broadcast). Measured against 12 x 32 on a
// 2-vCPU AMD EPYC (Zen 4), same process, interleaved (benchmarks.kernel_ab, 2026-12-02),
// both reading x directly: BERT-base TW 75% end to end 396 vs 425 ms; 512 x 4096 x 4096
// 21.7 vs 25.7 ms (75%), 9.9 vs 14.2 ms (90%): six rows of x (read in place, ldx apart)
// stay within an L1 set's eight ways where twelve rows 4 KiB-multiples apart do not.
// AVX2 (16 registers) and SSE2: 6 x 2 vectors.
constexpr int VW = TWK_VW;
constexpr int NV = VW == 16 ? 4 : 2;       // vectors per micro-tile row
constexpr int NR = NV * VW;                // micro-tile columns
constexpr int MR = 6;                      // micro-tile rows
constexpr int64_t MC = 144;                // rows of x per packed A block (multiple of MR)
constexpr int64_t KC = 256;                // compact rows per packed A block
constexpr int64_t SMALL_M = 32;            // up to this many rows: weights read in place
                                           // (bfloat16: up to MR, see weights_in_place)
constexpr int64_t KCI = 2048 / NR;         // in place: compact rows per chunk (8 KiB a panel)
constexpr int GEMV_NV = 8;                 // vectors per GEMV column chunk
constexpr int GEMV_STREAMS = 2;            // GEMV row segments read side by side
constexpr int64_t GEMV_BLOCK = 2;          // GEMV steps per L1 block

typedef float vf __attribute__((vector_size(VW * 4)));
typedef float vfu __attribute__((vector_size(VW * 4), aligned(4)));
typedef uint16_t vh __attribute__((vector_size(VW * 2), aligned(2)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));

static inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
static inline void store(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
template <size_t... I>
static inline vf splat(float s, std::index_sequence<I...>) {
  return vf{((void)I, s)...};
}
static inline vf bcast(float s) { return splat(s, std::make_index_sequence<VW>{}); }
static inline vf load(const uint16_t* p) {  // bf16 -> f32: the bits moved up 16
  vu u = __builtin_convertvector(*reinterpret_cast<const vh*>(p), vu) << 16;
  return reinterpret_cast<vf&>(u);
}

static inline float to_f32(float v) { return v; }
static inline float to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline void from_f32(float v, float* out) { *out = v; }
static inline void from_f32(float v, uint16_t* out) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN
    *out = static_cast<uint16_t>((u >> 16) | 0x40u);
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  *out = static_cast<uint16_t>(u >> 16);
}

static constexpr int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// ---- packing -------------------------------------------------------------------------------
// Rows [m0, m0 + r) of x gathered through the row table: ap[i * kc + k] = x[m0 + i, rows[k]]
// for k < kc (the fused gather). One contiguous run per row of x, so the loop is a plain
// indexed copy (row-interleaved output made the compiler spill its indices).
template <typename T>
static void pack_a(const T* x, int64_t ldx, int64_t m0, int r, const int32_t* __restrict rows,
                   int64_t kc, float* __restrict ap) {
  for (int i = 0; i < r; ++i) {
    const T* __restrict xr = x + (m0 + i) * ldx;
    float* __restrict out = ap + i * kc;
    for (int64_t k = 0; k < kc; ++k) out[k] = to_f32(xr[rows[k]]);
  }
}

#if defined(__AVX2__)
// out[c * ldo + r] = in[r * ldi + c] for an 8 x 8 block (in: float32 or bfloat16).
static inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
static inline __m256 load8(const uint16_t* p) {
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
template <typename T>
static inline void transpose8x8(const T* in, int64_t ldi, float* out, int64_t ldo) {
  __m256 r[8], t[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = load8(in + i * ldi);
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + i * ldo, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(out + (i + 4) * ldo, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// x^T as float32, (k, ldt) row-major: rows [m0, m1), columns [k0, k1) of x. The handler hands
// out blocks of a few dozen rows and columns, so the lines and pages of x and x^T touched at
// once stay few. Within them, blocks of 8 rows x 16 columns (two 8 x 8 register transposes
// with AVX2): each row's 16 values are one line of x, used whole (rows of x a multiple of
// 4 KiB apart share an L1 set; they are not re-read), and the rows of x^T written do not
// share a set (ldt is an odd number of lines, see the handler).
template <typename T>
static void transpose_t(const TwProblem& p, int64_t m0, int64_t m1, int64_t k0, int64_t k1,
                        float* xt) {
  const T* x = static_cast<const T*>(p.x);
  const int64_t k = p.k, ldt = p.ldt;
  constexpr int64_t BM = 8, BK = 16;
  for (int64_t kb = k0; kb < k1; kb += BK) {
    const int64_t ke = kb + BK < k1 ? kb + BK : k1;
    for (int64_t mb = m0; mb < m1; mb += BM) {
      const int64_t me = mb + BM < m1 ? mb + BM : m1;
      if (me - mb == BM && ke - kb == BK) {
#if defined(__AVX2__)
        for (int64_t h = 0; h < BK; h += 8)
          transpose8x8(x + mb * k + kb + h, k, xt + (kb + h) * ldt + mb, ldt);
#else
        float blk[BM][BK];
        for (int64_t i = 0; i < BM; ++i)
          for (int64_t kk = 0; kk < BK; ++kk) blk[i][kk] = to_f32(x[(mb + i) * k + kb + kk]);
        for (int64_t kk = 0; kk < BK; ++kk)
          for (int64_t i = 0; i < BM; ++i) xt[(kb + kk) * ldt + mb + i] = blk[i][kk];
#endif
      } else {
        for (int64_t kk = kb; kk < ke; ++kk)
          for (int64_t i = mb; i < me; ++i) xt[kk * ldt + i] = to_f32(x[i * k + kk]);
      }
    }
  }
}

static void transpose(const TwProblem& p, int64_t m0, int64_t m1, int64_t k0, int64_t k1,
                      float* xt) {
  if (p.dtype == DType::kF32)
    transpose_t<float>(p, m0, m1, k0, k1, xt);
  else
    transpose_t<uint16_t>(p, m0, m1, k0, k1, xt);
}

// The tile's first kt rows as Gp/NR panels, panel j = bp[j * kt * NR ...], row-major NR wide,
// zero beyond column G.
template <typename T>
static void pack_b(const T* w, int64_t g, int64_t kt, float* bp) {
  const int64_t panels = round_up(g, NR) / NR;
  for (int64_t j = 0; j < panels; ++j) {
    float* out = bp + j * kt * NR;
    const int64_t c0 = j * NR;
    if (c0 + NR <= g) {
      for (int64_t k = 0; k < kt; ++k) {
        const T* src = w + k * g + c0;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) store(out + k * NR + v * VW, load(src + v * VW));
      }
    } else {
      for (int64_t k = 0; k < kt; ++k)
        for (int c = 0; c < NR; ++c)
          out[k * NR + c] = c0 + c < g ? to_f32(w[k * g + c0 + c]) : 0.0f;
    }
  }
}

// ---- the micro-kernel ----------------------------------------------------------------------
// c[i, 0:NR] (+)= sum_k A_k[i] * b[k * ldb + 0:NR], i < R, where A_k (R floats) is step k's
// activations: a packed sliver (PackedA), a run of x^T found through the row table
// (RowsOfXt) or a column of x found through it (RowsOfX). One body for all three, so they
// stay the same register-blocked loop; each is made from (a, lda, rows, kc) and gives at(k),
// the address of A_k[0], and stride(), the distance from A_k[i] to A_k[i + 1].
struct PackedA {  // a[i * lda + k]: one gathered run per row of x (pack_a); rows unused
  const float* ap;
  int64_t lda;
  PackedA(const float* a, int64_t lda_, const int32_t*, int64_t) : ap(a), lda(lda_) {}
  const float* at(int64_t k) const { return ap + k; }
  int64_t stride() const { return lda; }
  void prefetch(int64_t) const {}
};

struct RowsOfXt {  // xt[rows[k] * ldt + i]: the activations of compact row k, contiguous in i
  const float* xt;
  int64_t ldt;
  const int32_t* rows;
  int64_t kc;
  RowsOfXt(const float* a, int64_t lda, const int32_t* r, int64_t kc_)
      : xt(a), ldt(lda), rows(r), kc(kc_) {}
  const float* at(int64_t k) const { return xt + static_cast<int64_t>(rows[k]) * ldt; }
  static constexpr int64_t stride() { return 1; }
  void prefetch(int64_t k) const {
    if (k + 8 < kc) __builtin_prefetch(at(k + 8));
  }
};

// x[i * ldx + rows[k]]: x itself (float32, rows ldx apart), column rows[k]. Each line of x
// serves the few kept columns it holds in consecutive steps (the rows are sorted); software
// prefetch of the next rows measured no gain.
struct RowsOfX {
  const float* x;
  int64_t ldx;
  const int32_t* rows;
  RowsOfX(const float* a, int64_t lda, const int32_t* r, int64_t) : x(a), ldx(lda), rows(r) {}
  const float* at(int64_t k) const { return x + rows[k]; }
  int64_t stride() const { return ldx; }
  void prefetch(int64_t) const {}
};

// InPlace: b is the tile's weights where they are (row stride ldb), and `pf_lines` lines
// from `pf` on (the next chunk, see gemm) are prefetched, spread evenly over the kc steps.
// Otherwise b is a packed panel (row stride NR) and pf is unused. TB: the weights' element
// type (float32, or bfloat16 read in place and widened in registers).
template <int R, bool InPlace, typename A, typename TB>
static inline void micro_body(int64_t kc, const A& a, const TB* __restrict b, int64_t ldb,
                              float* __restrict c, int64_t ldc, bool accumulate,
                              const char* pf, int64_t pf_lines) {
  vf acc[R][NV];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = accumulate ? load(c + i * ldc + v * VW) : vf{};
  const int64_t as = a.stride();
  int64_t pf_due = 0;
  for (int64_t k = 0; k < kc; ++k) {
    const float* __restrict ak = a.at(k);
    a.prefetch(k);
    vf bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = load(b + v * VW);
    if (InPlace) {  // Bresenham: pf_lines prefetches over kc steps
      for (pf_due += pf_lines; pf_due >= kc; pf_due -= kc, pf += 64) __builtin_prefetch(pf);
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const vf av = bcast(ak[i * as]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += av * bv[v];
    }
    b += InPlace ? ldb : NR;
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store(c + i * ldc + v * VW, acc[i][v]);
}

// One signature for every activation source: (kc, a, lda, rows, b, ldb, c, ldc, accumulate,
// pf, pf_lines); the tables are indexed by the sliver's rows (1..MR).
template <typename TB>
using MicroFn = void (*)(int64_t, const float*, int64_t, const int32_t*, const TB*, int64_t,
                         float*, int64_t, bool, const char*, int64_t);

template <int R, typename A, bool InPlace, typename TB>
static void micro(int64_t kc, const float* __restrict a, int64_t lda,
                  const int32_t* __restrict rows, const TB* __restrict b, int64_t ldb,
                  float* __restrict c, int64_t ldc, bool accumulate, const char* pf,
                  int64_t pf_lines) {
  micro_body<R, InPlace>(kc, A(a, lda, rows, kc), b, ldb, c, ldc, accumulate, pf, pf_lines);
}

template <typename A, bool InPlace = false, typename TB = float>
static constexpr MicroFn<TB> kMicro[MR + 1] = {
    nullptr,                      &micro<1, A, InPlace, TB>, &micro<2, A, InPlace, TB>,
    &micro<3, A, InPlace, TB>,    &micro<4, A, InPlace, TB>, &micro<5, A, InPlace, TB>,
    &micro<6, A, InPlace, TB>};

// ---- output --------------------------------------------------------------------------------
template <typename T>
static void write_rows(const TwProblem& p, int64_t tile, int64_t m0, int64_t rows_n,
                       const float* c, int64_t ldc) {
  T* y = static_cast<T*>(p.y);
  const int32_t* cols = p.cols + tile * p.g;
  // Real columns come first; the common case is one contiguous run.
  const int64_t gv = p.real_cols[tile];
  const bool run = p.col_run[tile];
  for (int64_t i = 0; i < rows_n; ++i) {
    T* yr = y + (m0 + i) * p.n;
    const float* cr = c + i * ldc;
    if (run) {
      T* out = yr + cols[0];
      for (int64_t g = 0; g < gv; ++g) from_f32(cr[g], out + g);
    } else {
      for (int64_t g = 0; g < gv; ++g) from_f32(cr[g], yr + cols[g]);
    }
  }
}

// ---- GEMV (one row of x) -------------------------------------------------------------------
// Memory-bound: the tile's kt x G values are read once. The kt rows are split into
// GEMV_STREAMS contiguous segments read side by side: step i accumulates row i of every
// segment. Two per thread measured best on a 2-vCPU AMD EPYC (M = 1, 4096 x 4096, 8 layers
// per call, ratio to dense in the same process, alternating builds, 2026-12-02): 75% 3.07x
// with two (mean of 4 runs), 2.93x with one (6 runs), 2.48x with four (4 runs); 90% 6.37x /
// 6.09x / 5.89x. The steps run in blocks of GEMV_BLOCK that, across the column chunks of one
// vector-register set each, stay in L1; the accumulators of each chunk live in `acc` (G
// floats) between blocks. Rows past the last full step (kt % GEMV_STREAMS) form one stream.
template <int NVEC, int S, typename T>
static inline void gemv_steps(const T* w, int64_t g, const T* xr, const int32_t* rows,
                              int64_t seg, int64_t i0, int64_t i1, float* acc_io) {
  vf acc[NVEC];
#pragma GCC unroll 16
  for (int v = 0; v < NVEC; ++v) acc[v] = load(acc_io + v * VW);
  for (int64_t i = i0; i < i1; ++i) {
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) {
      const int64_t k = s * seg + i;
      const vf a = bcast(to_f32(xr[rows[k]]));
      const T* wr = w + k * g;
#pragma GCC unroll 16
      for (int v = 0; v < NVEC; ++v) acc[v] += a * load(wr + v * VW);
    }
  }
#pragma GCC unroll 16
  for (int v = 0; v < NVEC; ++v) store(acc_io + v * VW, acc[v]);
}

template <int S, typename T>
static void gemv_block(const T* w, int64_t g, const T* xr, const int32_t* rows, int64_t seg,
                       int64_t i0, int64_t i1, float* acc) {
  int64_t c0 = 0;
  for (; c0 + GEMV_NV * VW <= g; c0 += GEMV_NV * VW)
    gemv_steps<GEMV_NV, S>(w + c0, g, xr, rows, seg, i0, i1, acc + c0);
  for (; c0 + VW <= g; c0 += VW) gemv_steps<1, S>(w + c0, g, xr, rows, seg, i0, i1, acc + c0);
  for (; c0 < g; ++c0) {
    float t = acc[c0];
    for (int64_t i = i0; i < i1; ++i)
      for (int s = 0; s < S; ++s) {
        const int64_t k = s * seg + i;
        t += to_f32(xr[rows[k]]) * to_f32(w[k * g + c0]);
      }
    acc[c0] = t;
  }
}

template <typename T>
static void gemv(const TwProblem& p, int64_t tile, int64_t m, float* c) {
  const int64_t kt = p.counts[tile], g = p.g;
  const T* w = static_cast<const T*>(p.values) + tile * p.kp * g;
  const T* xr = static_cast<const T*>(p.x) + m * p.k;
  const int32_t* rows = p.rows + tile * p.kp;
  std::memset(c, 0, sizeof(float) * g);
  const int64_t seg = kt / GEMV_STREAMS;
  for (int64_t i0 = 0; i0 < seg; i0 += GEMV_BLOCK)
    gemv_block<GEMV_STREAMS>(w, g, xr, rows, seg, i0, std::min(seg, i0 + GEMV_BLOCK), c);
  const int64_t done = seg * GEMV_STREAMS;  // the rest: one stream
  gemv_block<1>(w + done * g, g, xr, rows + done, kt - done, 0, kt - done, c);
  write_rows<T>(p, tile, m, 1, c, g);
}

// ---- the GEMM of one tile over rows [m0, m1) -------------------------------------------------
// bfloat16 weights read in place are widened by every sliver that reads them: worth it for
// one sliver (kernel_ab, 4096 x 4096 TW 75% warm, 2026-12-02: 3 rows 0.667 -> 0.466 ms,
// 6 rows 0.765 -> 0.603 ms against packed float32 panels) but not for more (16 rows
// 1.17-1.50 vs 1.19-1.35 ms, 32 rows 3.11 vs 3.68 ms). Where the handler built x^T (many
// rows, split into items of few) its packed-panel path stays.
static bool weights_in_place(const TwProblem& p, int64_t rows) {
  if (p.g % NR) return false;
  return p.dtype == DType::kF32 ? rows <= SMALL_M : rows <= MR && !p.xt;
}

// bfloat16 without x^T: the activations are gathered into packed slivers (pack_a).
static bool packs_a(const TwProblem& p) { return p.dtype != DType::kF32 && !p.xt; }

static int64_t k_block(const TwProblem& p, int64_t rows, int64_t kt) {
  // In place: the whole tile (its chunk loop keeps the weights in L1 for every sliver).
  return weights_in_place(p, rows) ? kt : KC;
}

// Scratch layout: C (MCp x Gp) | A (MCp x KC, packed slivers only) | B (Kp x Gp, 64-byte
// aligned; packed panels only).
struct Layout {
  int64_t c, a, b, total;
};

// The A part holds MC x KC packed rows: a K block's slivers, or (in place, bfloat16) one
// chunk's.
static_assert(round_up(SMALL_M, MR) * KCI <= round_up(MC, MR) * KC, "A scratch too small");

static Layout layout(const TwProblem& p, int64_t rows) {
  const int64_t gp = round_up(p.g, NR), mcp = round_up(MC, MR);
  Layout l;
  l.c = 0;
  l.a = round_up(mcp * gp, 16);
  l.b = round_up(l.a + (packs_a(p) ? mcp * KC : 0), 16);
  l.total = l.b + (weights_in_place(p, rows) ? 0 : p.kp * gp) + 16;
  return l;
}

static size_t scratch_floats(const TwProblem& p, int64_t rows) {
  return static_cast<size_t>(layout(p, rows).total);
}

template <typename T>
static void gemm(const TwProblem& p, int64_t tile, int64_t m0, int64_t m1, float* scratch) {
  const int64_t kt = p.counts[tile], g = p.g, gp = round_up(g, NR), panels = gp / NR;
  const T* w = static_cast<const T*>(p.values) + tile * p.kp * g;
  const T* x = static_cast<const T*>(p.x);
  const int32_t* rows = p.rows + tile * p.kp;
  const bool in_place = weights_in_place(p, m1 - m0);
  const int64_t kcb = k_block(p, m1 - m0, kt);
  const Layout l = layout(p, m1 - m0);
  // float32 output and a tile of whole register panels over one contiguous run of real
  // output columns: the micro-kernel accumulates straight into y (no scratch, no copy).
  // Not in place: there every chunk of K re-reads the accumulators, and rows of y a
  // multiple of 4 KiB apart would share an L1 set.
  const int32_t* cols = p.cols + tile * g;
  const bool direct = std::is_same<T, float>::value && !in_place && g % NR == 0 &&
                      p.real_cols[tile] == g && p.col_run[tile];
  const int64_t ldc = direct ? p.n : gp;
  float* ap = scratch + l.a;
  float* bp = scratch + l.b;
  // The activations (see the accessors): float32 x itself, bfloat16's x^T, or slivers
  // packed per K block. Sliver s starts at a_at(s) (its step 0 is compact row k0).
  const bool f32 = std::is_same<T, float>::value;
  const MicroFn<float>* table =
      f32 ? kMicro<RowsOfX> : p.xt ? kMicro<RowsOfXt> : kMicro<PackedA>;
  const float* xa = f32 ? reinterpret_cast<const float*>(x) : p.xt;
  const int64_t row_step = f32 ? p.k : 1;  // between rows of x in xa
  if (!in_place) pack_b<T>(w, g, kt, bp);
  for (int64_t mb = m0; mb < m1; mb += MC) {
    const int64_t mc = m1 - mb < MC ? m1 - mb : MC, slivers = (mc + MR - 1) / MR;
    const auto sliver_rows = [&](int64_t s) {
      return static_cast<int>(std::min<int64_t>(MR, mc - s * MR));
    };
    float* c = direct ? static_cast<float*>(p.y) + mb * p.n + cols[0] : scratch + l.c;
    for (int64_t k0 = 0; k0 < kt; k0 += kcb) {
      const int64_t kc = kt - k0 < kcb ? kt - k0 : kcb;
      const int64_t lda = f32 ? p.k : p.xt ? p.ldt : kc;
      if (packs_a(p) && !in_place)
        for (int64_t s = 0; s < slivers; ++s)
          pack_a<T>(x, p.k, mb + s * MR, sliver_rows(s), rows + k0, kc, ap + s * MR * kc);
      const auto a_at = [&](int64_t s) {
        return packs_a(p) ? ap + s * MR * kc : xa + (mb + s * MR) * row_step;
      };
      if (in_place) {
        // Few rows, weights read where they are (bfloat16 widened in registers), in chunks
        // of KCI compact rows: every sliver uses a chunk of a panel while it is in L1, and
        // the chunk's micro-kernel calls prefetch the next chunk (contiguous rows), an even
        // share each, so the weights stream from memory while the slivers compute. float32
        // reads x in place; bfloat16 packs each chunk's activations first (float32 slivers,
        // one run of KCI per row of x).
        // Measured (2-vCPU AMD EPYC, kernel_ab, 16 x 4096 x 4096, 8 layers after a cache
        // flush): 75% 1.95 -> 1.22 ms per layer, 90% 0.86 -> 0.56 ms against whole-tile
        // passes per panel and sliver with the activations packed.
        // (No x^T here: see weights_in_place.)
        using AIn = typename std::conditional<std::is_same<T, float>::value, RowsOfX,
                                              PackedA>::type;
        const int64_t calls = panels * slivers;
        for (int64_t kk = 0; kk < kc; kk += KCI) {
          const int64_t kn = kc - kk < KCI ? kc - kk : KCI, next = k0 + kk + kn;
          const int64_t next_rows = kt - next < KCI ? kt - next : KCI;
          const char* pf = reinterpret_cast<const char*>(w + next * g);
          const int64_t lines = (next_rows * g * static_cast<int64_t>(sizeof(T)) + 63) / 64;
          if (!f32)  // bfloat16: this chunk's slivers, packed (KCI per row of x)
            for (int64_t s = 0; s < slivers; ++s)
              pack_a<T>(x, p.k, mb + s * MR, sliver_rows(s), rows + k0 + kk, kn,
                        ap + s * MR * kn);
          int64_t q = 0;
          for (int64_t j = 0; j < panels; ++j)
            for (int64_t s = 0; s < slivers; ++s, ++q) {
              const int r = sliver_rows(s);  // the next chunk's lines: an even share each
              const int64_t lo = lines * q / calls, hi = lines * (q + 1) / calls;
              kMicro<AIn, true, T>[r](kn, f32 ? a_at(s) : ap + s * MR * kn, f32 ? lda : kn,
                                      rows + k0 + kk, w + (k0 + kk) * g + j * NR, g,
                                      c + s * MR * ldc + j * NR, ldc, k0 + kk > 0,
                                      pf + lo * 64, hi - lo);
            }
        }
        continue;
      }
      for (int64_t s = 0; s < slivers; ++s) {
        const int r = sliver_rows(s);
        for (int64_t j = 0; j < panels; ++j)
          table[r](kc, a_at(s), lda, rows + k0, bp + j * kt * NR + k0 * NR, NR,
                   c + s * MR * ldc + j * NR, ldc, k0 > 0, nullptr, 0);
      }
    }
    if (!direct) write_rows<T>(p, tile, mb, mc, c, gp);
  }
}

template <typename T>
static void zero_rows(const TwProblem& p, int64_t tile, int64_t m0, int64_t m1) {
  T* y = static_cast<T*>(p.y);
  const int32_t* cols = p.cols + tile * p.g;
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t g = 0; g < p.real_cols[tile]; ++g) y[m * p.n + cols[g]] = T{};
}

template <typename T>
static void item_t(const TwProblem& p, int64_t tile, int64_t m0, int64_t m1, float* scratch) {
  if (p.counts[tile] == 0) return zero_rows<T>(p, tile, m0, m1);
  if (m1 - m0 == 1) return gemv<T>(p, tile, m0, scratch);
  gemm<T>(p, tile, m0, m1, scratch);
}

static void item(const TwProblem& p, int64_t tile, int64_t m0, int64_t m1, float* scratch) {
  if (p.dtype == DType::kF32)
    item_t<float>(p, tile, m0, m1, scratch);
  else
    item_t<uint16_t>(p, tile, m0, m1, scratch);
}

// ---- the row tables ------------------------------------------------------------------------
// Compiled per instruction set so that it vectorises: a scalar pass cost about 1 us per
// 1024-row tile, between every two items of an M = 1 call (3% of its time at 4096 x 4096).
static bool rows_valid(const TwProblem& p, int64_t t) {
  const int32_t* __restrict rows = p.rows + t * p.kp;
  const int64_t kt = p.counts[t];
  // As unsigned, negatives are >= 2^31: one compare rejects them and rows >= K alike.
  const uint32_t k = p.k > INT32_MAX ? 0x80000000u : static_cast<uint32_t>(p.k);
  uint32_t bad = 0;
  for (int64_t r = 0; r < kt; ++r) bad |= static_cast<uint32_t>(rows[r]) >= k;
  return bad == 0;
}

// ---- the output-column tables --------------------------------------------------------------
static int scan_cols(const TwProblem& p, int32_t* real_cols, uint8_t* col_run) {
  // Integer arithmetic only and no early exit, so the compiler vectorises the inner loop.
  // n beyond int32 (no padding value fits in the table then) makes every column real.
  const int32_t n = p.n > INT32_MAX ? INT32_MAX : static_cast<int32_t>(p.n);
  const int32_t all_real = p.n > INT32_MAX;
  const int32_t g = static_cast<int32_t>(p.g);
  int status = 0;
  for (int64_t t = 0; t < p.t; ++t) {
    const int32_t* cols = p.cols + t * p.g;
    const int32_t c0 = g > 0 ? cols[0] : 0;
    int32_t real = 0, bad = 0, broken = 0;
    int64_t index_sum = 0;  // of the real columns' positions
    for (int32_t j = 0; j < g; ++j) {
      const int32_t c = cols[j];
      const int32_t r = all_real | (c < n);
      bad |= (c < 0) | (c > n);
      real += r;
      index_sum += r * j;
      // c == c0 + j, in wrap-around arithmetic (no signed overflow on a corrupt table)
      broken |= r & (static_cast<uint32_t>(c) - static_cast<uint32_t>(j) !=
                     static_cast<uint32_t>(c0));
    }
    if (bad) return 1;
    // `real` distinct positions in [0, g) sum to real (real - 1) / 2 only if they are the
    // first `real`: the real columns come first.
    if (index_sum != static_cast<int64_t>(real) * (real - 1) / 2) status = 2;
    real_cols[t] = real;
    col_run[t] = real > 0 && !broken;
  }
  return status;
}

extern const TwKernel kKernel = {TWK_NAME, MR,         &scratch_floats, &item,
                                 &scan_cols, &rows_valid, &transpose};

}  // namespace TWK_NS
}  // namespace tvwjax
