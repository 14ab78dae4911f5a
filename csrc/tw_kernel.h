// The tile-wise (TW) compressed matmul y = x @ W on the CPU: shared declarations.
//
// Layout (pallas_kernels/layout.py): W is K x N; T tiles of G output columns each.
//   values (T, Kp, G)  each tile's compact block, kept rows first, zeros after;
//   rows   (T, Kp)     int32 original K row of each compact row (padding rows: 0);
//   cols   (T, G)      int32 original output column of each tile column (padding: N);
//   counts (T,)        int32 kept rows k_t of each tile.
// Every output column belongs to at most one tile; columns of no tile are zero.
//
// One kernel source (tw_kernel_impl.h) is compiled once per instruction set (generic
// SSE2, AVX2+FMA, AVX-512) and the FFI handler picks one at run time.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tvwjax {

enum class DType : int { kF32 = 0, kBF16 = 1 };

struct TwProblem {
  DType dtype;            // of x, values and y (same for all three)
  int64_t m, k, n;        // x (m, k), y (m, n)
  int64_t t, kp, g;       // values (t, kp, g)
  const void* x;
  const void* values;
  const int32_t* rows;
  const int32_t* cols;
  const int32_t* counts;
  void* y;
  // Optional: x transposed to float32, (k, m) row-major (set by the handler for bfloat16 x
  // with many rows: the micro-kernel reads contiguous runs of rows of x^T instead of
  // converting each value of x it broadcasts).
  const float* xt;
  int64_t ldt;  // row stride of xt in floats (>= m)
  // Per tile, from the handler's one pass over `cols`: how many of its columns are real
  // (< n; they come first) and whether those are one contiguous run of output columns.
  const int32_t* real_cols;
  const uint8_t* col_run;
};

// One instruction-set variant of the kernel.
struct TwKernel {
  const char* name;
  int mr;  // rows of the register block (M work is split in multiples of it)
  // Floats of scratch one call of `item` needs (per thread).
  size_t (*scratch_floats)(const TwProblem& p, int64_t rows);
  // y[m0:m1, cols of tile] = x[m0:m1] @ W_tile; `scratch` is 64-byte aligned.
  void (*item)(const TwProblem& p, int64_t tile, int64_t m0, int64_t m1, float* scratch);
  // The output-column tables in one pass (vectorised): real_cols[t] and col_run[t] for
  // every tile (see TwProblem). Returns 0, or 1 if a column lies outside [0, n], or 2 if a
  // tile has padding (n) before a real column.
  int (*scan_cols)(const TwProblem& p, int32_t* real_cols, uint8_t* col_run);
  // Whether tile t's first counts[t] row indices lie in [0, K) (one vectorised pass, run by
  // the thread that computes the tile, before its item reads any of them).
  bool (*rows_valid)(const TwProblem& p, int64_t t);
  // xt[k0:k1, m0:m1] = x[m0:m1, k0:k1]^T as float32 (row stride p.ldt).
  void (*transpose)(const TwProblem& p, int64_t m0, int64_t m1, int64_t k0, int64_t k1,
                    float* xt);
};

namespace generic { extern const TwKernel kKernel; }
namespace avx2 { extern const TwKernel kKernel; }
namespace avx512 { extern const TwKernel kKernel; }

}  // namespace tvwjax
