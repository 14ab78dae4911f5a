// XLA FFI handler of the CPU TW matmul, its thread scheduling and the nanobind module
// `tvwjax._tw_cpu` (the FFI capsules for jax.ffi.register_ffi_target, and which
// instruction-set variant runs).
//
// Work is split into items (tile, rows of x) ordered by cost, taken from one atomic counter
// by the calling thread and by tasks scheduled on XLA's intra-op thread pool (the
// ffi::ThreadPool context). Tasks that start late find no work and return at once; they
// hold the shared state by shared_ptr, so the call may have returned by then.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "nanobind/nanobind.h"
#include "nanobind/stl/string.h"
#include "nanobind/stl/vector.h"
#include "tw_kernel.h"
#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace tvwjax {
namespace {

bool CpuHas(const char* feature) {
  __builtin_cpu_init();
  if (std::string(feature) == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::string(feature) == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return std::string(feature) == "generic";
}

std::vector<const TwKernel*> Supported() {
  std::vector<const TwKernel*> out;
  if (CpuHas("avx512")) out.push_back(&avx512::kKernel);
  if (CpuHas("avx2")) out.push_back(&avx2::kKernel);
  out.push_back(&generic::kKernel);
  return out;
}

constexpr int64_t kTransposeMinM = 48;  // bfloat16 x from this many rows: x^T first
constexpr int64_t kTransposeBlock = 64;  // rows and columns of x per transpose item
// A call's single-thread time is estimated from the bytes of weights it streams and its
// FLOPs at these rates (one core, conservative); under kMinParallelUs it runs on the calling
// thread alone. Waking an idle pool thread takes 20-40 us on the 2-vCPU VMs measured, but
// inside a model the pool's threads are often still spinning from the previous op: MiniLM's
// 384 x 384 layers at 32 tokens (about 30 us) ran faster with a helper than without.
constexpr double kStreamBytesPerUs = 16e3;  // 16 GB/s
constexpr double kFlopsPerUs = 100e3;       // 100 GFLOP/s
constexpr double kMinParallelUs = 10.0;
std::atomic<const TwKernel*> g_kernel{nullptr};
std::atomic<int> g_max_threads{0};  // 0: the pool's size
std::atomic<int64_t> g_pool_threads{-1};  // what the last call's pool reported
std::atomic<int64_t> g_workers{0};        // threads the last call used (caller + helpers)
std::atomic<int64_t> g_helper_items{0};   // items of the last call run on pool threads
std::atomic<int64_t> g_helper_start_ns{-1};  // last call: its first pool-thread item began
                                             // this long after the call (-1: none ran)
std::atomic<int64_t> g_call_ns{0};           // last call: its duration
using Clock = std::chrono::steady_clock;

const TwKernel* Kernel() {
  const TwKernel* k = g_kernel.load(std::memory_order_acquire);
  if (!k) {
    k = Supported().front();
    g_kernel.store(k, std::memory_order_release);
  }
  return k;
}

// A per-thread scratch buffer that grows (XLA's pool threads live long: no page faults
// per call once warm).
float* ThreadScratch(size_t floats, int slot = 0) {
  struct Buf {
    float* p = nullptr;
    size_t n = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf bufs[2];
  Buf& buf = bufs[slot];
  if (buf.n < floats) {
    std::free(buf.p);
    const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    buf.p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!buf.p) throw std::bad_alloc();
    buf.n = floats;
  }
  return buf.p;
}

struct Item {
  int64_t tile, m0, m1;
  int64_t k0 = 0, k1 = 0;  // transpose items: columns of x
};

struct Shared {
  TwProblem p;
  const TwKernel* kernel;
  std::vector<Item> items;
  size_t scratch;
  int64_t n_transpose = 0;  // items [0, n_transpose) fill p.xt; the rest wait for them
  float* xt = nullptr;
  // The item counter every thread takes from, on a line of its own (the threads' other
  // writes to this struct do not bounce it); `done` likewise.
  alignas(64) std::atomic<int64_t> next{0};
  alignas(64) std::atomic<int64_t> done{0};
  alignas(64) std::atomic<int64_t> transposed{0};
  std::atomic<int64_t> helper_items{0};
  std::atomic<bool> ready{false};     // items built (helpers are scheduled before that)
  Clock::time_point start;                 // when the call began
  std::atomic<int64_t> first_helper_ns{-1};  // when a pool thread began its first item
  std::thread::id caller;             // the thread that runs the call
  std::atomic<bool> failed{false};    // scratch allocation failed
  std::atomic<bool> bad_rows{false};  // a tile's row table points outside [0, K)
  std::vector<int32_t> real_cols;     // TwProblem::real_cols
  std::vector<uint8_t> col_run;       // TwProblem::col_run
};

void Work(Shared& s, bool helper) {
  // A pool may run a scheduled task inline, on the caller's thread, before the items exist
  // (the caller then does the work itself); a helper on another thread waits for them.
  if (helper && !s.ready.load(std::memory_order_acquire) &&
      std::this_thread::get_id() == s.caller)
    return;
  while (!s.ready.load(std::memory_order_acquire)) std::this_thread::yield();
  const int64_t n = static_cast<int64_t>(s.items.size());
  float* scratch = nullptr;
  int64_t ran = 0;  // counted once at the end: the shared counters' line is not bounced per item
  for (int64_t i; (i = s.next.fetch_add(1, std::memory_order_relaxed)) < n; ++ran) {
    if (helper && s.first_helper_ns.load(std::memory_order_relaxed) < 0) {
      int64_t none = -1;
      s.first_helper_ns.compare_exchange_strong(
          none,
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - s.start).count());
    }
    try {
      const Item& it = s.items[i];
      if (i < s.n_transpose) {
        s.kernel->transpose(s.p, it.m0, it.m1, it.k0, it.k1, s.xt);
        s.transposed.fetch_add(1, std::memory_order_acq_rel);
      } else {
        // Items are taken in order, so every transpose item is already being run.
        while (s.transposed.load(std::memory_order_acquire) < s.n_transpose)
          std::this_thread::yield();
        if (!s.kernel->rows_valid(s.p, it.tile)) {
          s.bad_rows.store(true, std::memory_order_relaxed);
        } else {
          if (!scratch) scratch = ThreadScratch(s.scratch);
          s.kernel->item(s.p, it.tile, it.m0, it.m1, scratch);
        }
      }
    } catch (...) {
      s.failed.store(true, std::memory_order_relaxed);
    }
  }
  if (helper && ran) s.helper_items.fetch_add(ran, std::memory_order_relaxed);
  s.done.fetch_add(ran, std::memory_order_acq_rel);
}

ffi::Error Check(bool ok, const std::string& what) {
  return ok ? ffi::Error::Success() : ffi::Error::InvalidArgument("tw_matmul_cpu: " + what);
}

ffi::Error TwMatmulImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer values,
                        ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::S32> cols,
                        ffi::Buffer<ffi::S32> counts, ffi::Result<ffi::AnyBuffer> y) {
  // Shapes and dtypes (the Python side checked them; a cheap second look).
  auto xd = x.dimensions(), vd = values.dimensions(), rd = rows.dimensions(),
       cd = cols.dimensions(), nd = counts.dimensions(), yd = y->dimensions();
  if (auto e = Check(xd.size() == 2 && vd.size() == 3 && rd.size() == 2 && cd.size() == 2 &&
                         nd.size() == 1 && yd.size() == 2,
                     "expected x (M, K), values (T, Kp, G), rows (T, Kp), cols (T, G), "
                     "counts (T,), y (M, N)");
      e.failure())
    return e;
  TwProblem p;
  p.m = xd[0], p.k = xd[1], p.n = yd[1], p.t = vd[0], p.kp = vd[1], p.g = vd[2];
  if (auto e = Check(yd[0] == p.m && rd[0] == p.t && rd[1] == p.kp && cd[0] == p.t &&
                         cd[1] == p.g && nd[0] == p.t,
                     "inconsistent shapes");
      e.failure())
    return e;
  const auto dt = x.element_type();
  if (auto e = Check((dt == ffi::F32 || dt == ffi::BF16) && values.element_type() == dt &&
                         y->element_type() == dt,
                     "x, values and y must all be float32 or all bfloat16");
      e.failure())
    return e;
  p.dtype = dt == ffi::F32 ? DType::kF32 : DType::kBF16;
  p.x = x.untyped_data();
  p.values = values.untyped_data();
  p.rows = rows.typed_data();
  p.cols = cols.typed_data();
  p.counts = counts.typed_data();
  p.y = y->untyped_data();
  if (p.m == 0 || p.n == 0) return ffi::Error::Success();

  // Tables: counts, then the output columns in one vectorised pass that also records each
  // tile's real columns for the items; each tile's row indices are checked by the item that
  // computes it, in parallel and before use (TwKernel::rows_valid).
  auto s = std::make_shared<Shared>();
  s->kernel = Kernel();
  int64_t kept = 0;
  for (int64_t t = 0; t < p.t; ++t) {
    const int32_t kt = p.counts[t];
    if (kt < 0 || kt > p.kp) return Check(false, "counts out of [0, Kp]");
    kept += kt;
  }
  s->real_cols.resize(static_cast<size_t>(p.t));
  s->col_run.resize(static_cast<size_t>(p.t));
  switch (s->kernel->scan_cols(p, s->real_cols.data(), s->col_run.data())) {
    case 1: return Check(false, "cols out of [0, N]");
    case 2: return Check(false, "cols: a tile's padding (N) before a real column");
    default: break;
  }
  int64_t covered = 0;
  for (int32_t r : s->real_cols) covered += r;
  p.real_cols = s->real_cols.data();
  p.col_run = s->col_run.data();
  const size_t esize = p.dtype == DType::kF32 ? 4 : 2;
  if (covered < p.n) std::memset(p.y, 0, static_cast<size_t>(p.m * p.n) * esize);
  if (p.t == 0) return ffi::Error::Success();

  s->start = Clock::now();
  s->caller = std::this_thread::get_id();
  const int64_t pool_threads = pool.num_threads();
  g_pool_threads.store(pool_threads, std::memory_order_relaxed);
  int64_t threads = std::max<int64_t>(1, pool_threads);
  if (const int cap = g_max_threads.load(std::memory_order_relaxed); cap > 0)
    threads = std::min<int64_t>(threads, cap);

  // Items: tiles, split along M when there are too few tiles to keep every thread busy;
  // for bfloat16 x with many rows, transposes of x first (float32 x is read in place).
  const int64_t mr = s->kernel->mr;
  int64_t chunks = 1;
  if (p.m > mr && p.t < 4 * threads)
    chunks = std::min<int64_t>((4 * threads + p.t - 1) / p.t, (p.m + mr - 1) / mr);
  const int64_t step = (p.m + chunks - 1) / chunks;
  const int64_t rows_per_item = p.m == 1 ? 1 : (step + mr - 1) / mr * mr;
  const bool transpose = p.dtype == DType::kBF16 && p.m >= kTransposeMinM;
  const int64_t n_items =
      p.t * ((p.m + rows_per_item - 1) / rows_per_item) +
      (transpose ? ((p.m + kTransposeBlock - 1) / kTransposeBlock) *
                       ((p.k + kTransposeBlock - 1) / kTransposeBlock)
                 : 0);

  // Helpers are scheduled before the items are built, so waking them overlaps that work;
  // a call too small to repay a wake-up runs on the calling thread alone.
  const double work_us = static_cast<double>(kept) * p.g * esize / kStreamBytesPerUs +
                         2.0 * static_cast<double>(p.m) * kept * p.g / kFlopsPerUs;
  const int64_t helpers =
      work_us < kMinParallelUs ? 0 : std::min<int64_t>(threads, n_items) - 1;
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([s] { Work(*s, true); });

  p.xt = nullptr;
  p.ldt = 0;
  s->items.reserve(static_cast<size_t>(n_items));
  if (transpose) {
    // bfloat16 x, many rows: x^T (converted to float32 once) first, in parallel; the
    // micro-kernel then reads each compact row's activations as contiguous runs of x^T.
    // Row stride: an odd number of 64-byte lines, so consecutive rows of x^T fall in
    // different L1 sets (a stride of 4 KiB multiples put them all in one).
    p.ldt = ((p.m + 15) / 16) | 1;
    p.ldt *= 16;
    try {
      s->xt = ThreadScratch(static_cast<size_t>(p.ldt * p.k), 1);
    } catch (...) {
      s->ready.store(true, std::memory_order_release);  // let the helpers return
      return ffi::Error::Internal("tw_matmul_cpu: out of memory for x^T");
    }
    p.xt = s->xt;
    for (int64_t m0 = 0; m0 < p.m; m0 += kTransposeBlock)
      for (int64_t k0 = 0; k0 < p.k; k0 += kTransposeBlock)
        s->items.push_back({-1, m0, std::min(p.m, m0 + kTransposeBlock), k0,
                            std::min(p.k, k0 + kTransposeBlock)});
    s->n_transpose = static_cast<int64_t>(s->items.size());
  }
  s->p = p;
  std::vector<int64_t> order(p.t);
  for (int64_t t = 0; t < p.t; ++t) order[t] = t;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return p.counts[a] > p.counts[b]; });
  for (int64_t t : order)
    for (int64_t m0 = 0; m0 < p.m; m0 += rows_per_item)
      s->items.push_back({t, m0, std::min(p.m, m0 + rows_per_item)});
  s->scratch = s->kernel->scratch_floats(p, std::min(p.m, rows_per_item));
  s->ready.store(true, std::memory_order_release);

  Work(*s, false);
  const int64_t n = static_cast<int64_t>(s->items.size());
  while (s->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
  g_helper_items.store(s->helper_items.load(), std::memory_order_relaxed);
  g_workers.store(helpers + 1, std::memory_order_relaxed);
  g_helper_start_ns.store(s->first_helper_ns.load(), std::memory_order_relaxed);
  g_call_ns.store(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - s->start).count(),
      std::memory_order_relaxed);
  if (s->bad_rows.load()) return Check(false, "rows out of [0, K)");
  if (s->failed.load()) return ffi::Error::Internal("tw_matmul_cpu: out of memory for scratch");
  return ffi::Error::Success();
}

}  // namespace
}  // namespace tvwjax

XLA_FFI_DEFINE_HANDLER_SYMBOL(TvwjaxTwMatmulCpu, tvwjax::TwMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()           // x (M, K)
                                  .Arg<ffi::AnyBuffer>()           // values (T, Kp, G)
                                  .Arg<ffi::Buffer<ffi::S32>>()    // rows (T, Kp)
                                  .Arg<ffi::Buffer<ffi::S32>>()    // cols (T, G)
                                  .Arg<ffi::Buffer<ffi::S32>>()    // counts (T,)
                                  .Ret<ffi::AnyBuffer>()           // y (M, N)
);

NB_MODULE(_tw_cpu, m) {
  m.doc() = "tvwjax CPU TW matmul: XLA FFI handlers (see tvwjax.cpu_kernel)";
  m.def("registrations", []() {
    nb::dict d;
    d["tvwjax_tw_matmul_cpu"] = nb::capsule(reinterpret_cast<void*>(TvwjaxTwMatmulCpu));
    return d;
  });
  m.def("isa", []() { return std::string(tvwjax::Kernel()->name); },
        "The instruction-set variant the kernel runs.");
  m.def("supported_isas", []() {
    std::vector<std::string> out;
    for (auto* k : tvwjax::Supported()) out.emplace_back(k->name);
    return out;
  }, "Variants this CPU can run, fastest first.");
  m.def("set_isa", [](const std::string& name) {
    for (auto* k : tvwjax::Supported())
      if (name == k->name) {
        tvwjax::g_kernel.store(k, std::memory_order_release);
        return;
      }
    throw nb::value_error(("instruction set not supported on this CPU: " + name).c_str());
  }, "Force a variant (tests); the default is the fastest supported.");
  m.def("last_call", []() {
    nb::dict d;
    d["pool_threads"] = tvwjax::g_pool_threads.load();
    d["workers"] = tvwjax::g_workers.load();
    d["helper_items"] = tvwjax::g_helper_items.load();
    const int64_t start_ns = tvwjax::g_helper_start_ns.load();
    d["helper_start_us"] = start_ns < 0 ? -1.0 : start_ns / 1e3;
    d["call_us"] = tvwjax::g_call_ns.load() / 1e3;
    return d;
  }, "Threads of XLA's pool seen by the last call (-1: none yet), workers it used, how many "
     "work items ran on pool threads (not the calling one), when the first of them began "
     "(microseconds after the call began; -1: none ran) and the call's duration.");
  m.def("set_max_threads", [](int n) { tvwjax::g_max_threads.store(n); },
        "Cap the worker threads (0: XLA's intra-op pool size).");
}
