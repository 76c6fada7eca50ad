// Shared by every kernel file: includes, build macros, the float row helpers, Snake on rows, and the
// row-major GEMM (MKL or oneDNN). Internal linkage (an unnamed namespace): each file gets its own copy.
#pragma once


#include <torch/extension.h>

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include "ops.h"
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if AT_MKL_ENABLED()
// Exported by libtorch_cpu (static MKL). n is MKL_INT (int in LP64, int64 in ILP64): passing it as a
// 64-bit value with n < 2^31 is correct under either ABI.
extern "C" void vmsSin(long long n, const float* a, float* r, long long mode);
// C-ABI (by value) thread-local MKL thread count; weak, so a build without it still loads.
extern "C" int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));
#define XCODEC_SIN_MKL 1
#else
#define XCODEC_SIN_MKL 0
#endif

#define XCODEC_STRINGIFY_(x) #x
#define XCODEC_STRINGIFY(x) XCODEC_STRINGIFY_(x)
#ifndef XCODEC_SOURCE_DIGEST
#define XCODEC_SOURCE_DIGEST unknown
#endif
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define XCODEC_CPU_CAPABILITY XCODEC_STRINGIFY(CPU_CAPABILITY)
#else
#define XCODEC_CPU_CAPABILITY "DEFAULT"
#endif

namespace {

// torch turns MKL's dynamic threading off, so MKL calls (VML sin, sgemm) made inside at::parallel_for
// would start nested teams of at::get_num_threads() threads each: on 2 cores that made the 2-thread
// snake ~2.5x slower than 1 thread. Tasks run MKL single-threaded under this guard.
struct SequentialMkl {
#if XCODEC_SIN_MKL
  int previous = 0;
  SequentialMkl() {
    if (MKL_Set_Num_Threads_Local) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialMkl() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
  }
#endif
  SequentialMkl(const SequentialMkl&) = delete;
  SequentialMkl& operator=(const SequentialMkl&) = delete;
};

using fVec = at::vec::Vectorized<float>;
// Floats per chunk: three scratch buffers of this size stay in L1.
constexpr int64_t kChunk = 1024;
// Below this many elements per task, threading costs more than it saves.
constexpr int64_t kGrainElements = 32768;

// sin of n floats in place, exactly as torch.sin computes it for contiguous fp32 on this build.
inline void sin_inplace(float* v, int64_t n) {
#if XCODEC_SIN_MKL
  constexpr long long kVmlHaFtzDazOffIgnore = 0x2 | 0x140000 | 0x100;  // VML_HA|VML_FTZDAZ_OFF|VML_ERRMODE_IGNORE
  vmsSin(n, v, v, kVmlHaFtzDazOffIgnore);
#else
  int64_t i = 0;
  for (; i + fVec::size() <= n; i += fVec::size()) fVec::loadu(v + i).sin().store(v + i);
  if (i < n) fVec::loadu(v + i, n - i).sin().store(v + i, n - i);
#endif
}

// out = x + inv * sin(a*x)^2 on n floats; out may alias x; scratch holds n floats.
inline void snake_floats(const float* x, float* out, float* scratch, int64_t n, float a, float inv) {
  const fVec va(a), vinv(inv);
  const int64_t full = n - n % fVec::size();
  for (int64_t i = 0; i < full; i += fVec::size()) (fVec::loadu(x + i) * va).store(scratch + i);
  if (full < n) (fVec::loadu(x + full, n - full) * va).store(scratch + full, n - full);
  sin_inplace(scratch, n);
  for (int64_t i = 0; i < full; i += fVec::size()) {
    const fVec s = fVec::loadu(scratch + i);
    (fVec::loadu(x + i) + vinv * (s * s)).store(out + i);
  }
  if (full < n) {
    const int64_t rest = n - full;
    const fVec s = fVec::loadu(scratch + full, rest);
    (fVec::loadu(x + full, rest) + vinv * (s * s)).store(out + full, rest);
  }
}

inline void add_floats(const float* x, const float* h, float* y, int64_t n) {
  const int64_t full = n - n % fVec::size();
  for (int64_t i = 0; i < full; i += fVec::size()) (fVec::loadu(x + i) + fVec::loadu(h + i)).store(y + i);
  if (full < n) (fVec::loadu(x + full, n - full) + fVec::loadu(h + full, n - full)).store(y + full, n - full);
}

// Reduced-precision storage <-> fp32 compute buffers.
template <typename scalar_t>
inline void load_floats(const scalar_t* src, float* dst, int64_t n) {
  using rVec = at::vec::Vectorized<scalar_t>;
  int64_t i = 0;
  for (; i + rVec::size() <= n; i += rVec::size()) {
    auto [lo, hi] = at::vec::convert_to_float<scalar_t>(rVec::loadu(src + i));
    lo.store(dst + i);
    hi.store(dst + i + fVec::size());
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename scalar_t>
inline void store_floats(const float* src, scalar_t* dst, int64_t n) {
  using rVec = at::vec::Vectorized<scalar_t>;
  int64_t i = 0;
  for (; i + rVec::size() <= n; i += rVec::size()) {
    at::vec::convert_from_float<scalar_t>(fVec::loadu(src + i), fVec::loadu(src + i + fVec::size())).store(dst + i);
  }
  for (; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// The part [v0, v1) of the window [lo, lo + n) that lies inside a row of `frames` samples; zeroes
// dst (the window, n floats) outside it: the convolutions' zero padding.
inline std::pair<int64_t, int64_t> zero_outside(int64_t frames, int64_t lo, int64_t n, float* dst) {
  const int64_t v0 = std::clamp<int64_t>(lo, 0, frames), v1 = std::clamp<int64_t>(lo + n, 0, frames);
  if (v1 <= v0) {
    std::fill(dst, dst + n, 0.0f);
    return {v0, v0};
  }
  std::fill(dst, dst + (v0 - lo), 0.0f);
  std::fill(dst + (v1 - lo), dst + n, 0.0f);
  return {v0, v1};
}

// dst[0, n) = x[lo, lo + n) of one row in fp32, zeros outside [0, frames).
template <typename scalar_t>
void input_window(const scalar_t* xs, int64_t frames, int64_t lo, int64_t n, float* dst) {
  const auto [v0, v1] = zero_outside(frames, lo, n, dst);
  if (v1 <= v0) return;
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::memcpy(dst + (v0 - lo), xs + v0, (v1 - v0) * sizeof(float));
  } else {
    load_floats(xs + v0, dst + (v0 - lo), v1 - v0);
  }
}

// dst[0, n) = x[0, n) + bias in fp32 (a residual unit's shortcut plus its last conv's bias, which
// that conv's GEMM then accumulates onto); dst[n, width) = 0.
template <typename scalar_t>
void shortcut_plus_bias(const scalar_t* xs, float bias, float* dst, int64_t n, int64_t width) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::memcpy(dst, xs, n * sizeof(float));
  } else {
    load_floats(xs, dst, n);
  }
  const fVec vb(bias);
  int64_t i = 0;
  for (; i + fVec::size() <= n; i += fVec::size()) (fVec::loadu(dst + i) + vb).store(dst + i);
  if (i < n) (fVec::loadu(dst + i, n - i) + vb).store(dst + i, n - i);
  std::fill(dst + n, dst + width, 0.0f);
}

// dst[0, n) = snake(x[lo, lo + n)) for one row of `frames` samples, zeros outside [0, frames)
// (snake(0) = 0). scratch holds n floats.
template <typename scalar_t>
void snake_window(const scalar_t* xs, int64_t frames, int64_t lo, int64_t n, float a, float inv, float* dst,
                  float* scratch) {
  const auto [v0, v1] = zero_outside(frames, lo, n, dst);
  if (v1 <= v0) return;
  float* dv = dst + (v0 - lo);
  if constexpr (std::is_same_v<scalar_t, float>) {
    snake_floats(xs + v0, dv, scratch, v1 - v0, a, inv);
  } else {
    load_floats(xs + v0, dv, v1 - v0);
    snake_floats(dv, dv, scratch, v1 - v0, a, inv);
  }
}

// A strided conv's window line (width · stride samples) split by phase: row r of dst (stride rows,
// leading dimension ld) holds line[u · stride + r] for u < width.
inline void split_phases(const float* line, int64_t width, int64_t stride, float* dst, int64_t ld) {
  for (int64_t r = 0; r < stride; ++r) {
    float* pr = dst + r * ld;
    for (int64_t u = 0; u < width; ++u) pr[u] = line[u * stride + r];
  }
}

// Stores n fp32 values from each of `rows` rows (src, leading dimension ld) into dst rows (dst_ld).
template <typename scalar_t>
void store_rows(const float* src, int64_t ld, scalar_t* dst, int64_t dst_ld, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      std::memcpy(dst + r * dst_ld, src + r * ld, n * sizeof(float));
    } else {
      store_floats(src + r * ld, dst + r * dst_ld, n);
    }
  }
}

// A (B, C, T) tensor whose time axis is unit-stride, addressed row by row.
template <typename T>
struct Rows {
  T* data;
  int64_t channels, stride_b, stride_c;
  T* row(int64_t r) const { return data + (r / channels) * stride_b + (r % channels) * stride_c; }
};

template <typename T>
Rows<T> rows_of(const at::Tensor& t) {
  return Rows<T>{t.data_ptr<T>(), t.size(1), t.stride(0), t.stride(1)};
}

// Per-channel α and (α + 1e-9)⁻¹ in fp32, computed as eager computes them for fp32 α.
std::pair<std::vector<float>, std::vector<float>> snake_coefficients(const at::Tensor& alpha) {
  auto a = alpha.detach().to(at::kFloat).contiguous().view(-1);
  std::vector<float> values(a.data_ptr<float>(), a.data_ptr<float>() + a.numel());
  std::vector<float> inverse(values.size());
  for (size_t c = 0; c < values.size(); ++c) inverse[c] = 1.0f / (values[c] + 1e-9f);
  return {std::move(values), std::move(inverse)};
}

// A bias as n fp32 values (zeros when there is none).
std::vector<float> bias_values(const std::optional<at::Tensor>& bias, int64_t n) {
  std::vector<float> values(n, 0.0f);
  if (bias && bias->defined()) {
    auto b = bias->detach().to(at::kFloat).contiguous();
    std::copy(b.data_ptr<float>(), b.data_ptr<float>() + n, values.begin());
  }
  return values;
}

// Runs body(row, t0, n) over every (row, chunk of ≤ kChunk frames) in parallel.
template <typename F>
void for_each_chunk(int64_t rows, int64_t frames, const F& body) {
  if (rows == 0 || frames == 0) return;
  const int64_t chunks_per_row = (frames + kChunk - 1) / kChunk;
  const int64_t chunk_len = std::min(frames, kChunk);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / chunk_len);
  at::parallel_for(0, rows * chunks_per_row, grain, [&](int64_t begin, int64_t end) {
    const SequentialMkl sequential;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / chunks_per_row;
      const int64_t t0 = (item % chunks_per_row) * kChunk;
      body(row, t0, std::min(kChunk, frames - t0));
    }
  });
}

// Calls body(scalar_t{}) for the storage types the kernels support (compute is always fp32).
template <typename F>
void dispatch_storage_type(at::ScalarType type, const char* op, const F& body) {
  switch (type) {
    case at::kFloat: return body(float{});
    case at::kBFloat16: return body(c10::BFloat16{});
    case at::kHalf: return body(c10::Half{});
    default: TORCH_CHECK(false, op, ": unsupported dtype ", type);
  }
}

// Runs body(x_rows, out_data, begin, end) over tasks [0, tasks) in parallel, typed by x's storage
// type (out has the same), MKL single-threaded inside each task.
template <typename F>
void for_each_task(const at::Tensor& x, const at::Tensor& out, const char* op, int64_t tasks, const F& body) {
  dispatch_storage_type(x.scalar_type(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto xr = rows_of<scalar_t>(x);
    scalar_t* outp = out.data_ptr<scalar_t>();
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      const SequentialMkl sequential;
      body(xr, outp, begin, end);
    });
  });
}

// Floor division for possibly negative numerators.
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// One task of a transposed conv (stride s, padding p, k taps): output steps q0 .. q0 + n - 1 are
// output frames [first, first + len), reached by input frames [t_first, t_first + width).
struct TransposedTask {
  int64_t first, len, t_first, width;
};

inline TransposedTask transposed_task(int64_t q0, int64_t n, int64_t stride, int64_t padding, int64_t kernel,
                                      int64_t out_frames) {
  const int64_t first = q0 * stride, len = std::min((q0 + n) * stride, out_frames) - first;
  const int64_t t_first = floor_div(first + padding - kernel + stride, stride);
  const int64_t t_last = floor_div(first + len - 1 + padding, stride);
  return {first, len, t_first, t_last - t_first + 1};
}

// dst[0, len) = output channel o of the task's frames: bias + the taps each frame gathers from
// Z = Wᵀ · S (rows (o, k) of ld floats, column 0 = input frame t_first). Phase r (frames
// first + q·s + r) takes taps k = β + j·s from input frames q0 + q + α - j, where r + p = α·s + β:
// summed contiguously per phase in `phase` (task steps floats), then interleaved.
inline void gather_transposed(const float* z, int64_t ld, int64_t o, int64_t kernel, int64_t stride, int64_t padding,
                              int64_t q0, const TransposedTask& task, float bias, float* phase, float* dst) {
  for (int64_t r = 0; r < std::min(stride, task.len); ++r) {
    const int64_t count = (task.len - r + stride - 1) / stride;
    const int64_t al = (r + padding) / stride, be = (r + padding) % stride;
    std::fill(phase, phase + count, bias);
    for (int64_t k = be, j = 0; k < kernel; k += stride, ++j) {
      add_floats(phase, z + (o * kernel + k) * ld + (q0 + al - j - task.t_first), phase, count);
    }
    for (int64_t q = 0; q < count; ++q) dst[q * stride + r] = phase[q];
  }
}

at::Tensor unit_stride_time(const at::Tensor& t) { return t.stride(2) == 1 ? t : t.contiguous(); }

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": native kernels take CPU tensors");
  TORCH_CHECK(x.dim() == 3, op, ": x must be (batch, channels, frames)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              op, ": x must be float32, bfloat16 or float16");
}

void check_input(const at::Tensor& x, const at::Tensor& alpha, const char* op) {
  check_x(x, op);
  TORCH_CHECK(alpha.device().is_cpu(), op, ": native kernels take CPU tensors");
  TORCH_CHECK(alpha.numel() == x.size(1), op, ": alpha needs one value per channel");
}

// Writes snake(x) into out (same shape, unit-stride time; may be x itself).
void snake_into(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& out) {
  const auto [a, inv] = snake_coefficients(alpha);
  const int64_t rows = x.size(0) * x.size(1), frames = x.size(2);
  dispatch_storage_type(x.scalar_type(), "snake", [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto src = rows_of<scalar_t>(x);
    const auto dst = rows_of<scalar_t>(out);
    for_each_chunk(rows, frames, [&](int64_t row, int64_t t0, int64_t n) {
      const int64_t c = row % src.channels;
      const scalar_t* xs = src.row(row) + t0;
      scalar_t* ys = dst.row(row) + t0;
      alignas(64) float scratch[kChunk];
      if constexpr (std::is_same_v<scalar_t, float>) {
        snake_floats(xs, ys, scratch, n, a[c], inv[c]);
      } else {
        alignas(64) float xf[kChunk];
        load_floats(xs, xf, n);
        snake_floats(xf, xf, scratch, n, a[c], inv[c]);
        store_floats(xf, ys, n);
      }
    });
  });
}


#if AT_MKL_ENABLED()
// Fortran BLAS from libtorch_cpu's MKL (LP64, as ATen itself declares it). Inside an OpenMP parallel
// region MKL runs sequentially, which is what the per-chunk tasks want.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));
#endif

// Row-major c (m × n, ldc) = op(a) · b + beta · c, b stored as (k × n, ldb); op(a) = a stored as
// (m × k, lda), or with a_transposed = aᵀ for a stored as (k × m, lda) (MKL only). beta is 0 or 1.
void gemm_rm(Gemm engine, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, bool a_transposed,
             const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  TORCH_CHECK(beta == 0.0f || beta == 1.0f, "gemm_rm: beta must be 0 or 1, got ", beta);
  if (engine == Gemm::onednn) {
    TORCH_CHECK(!a_transposed, "gemm_rm: the oneDNN engine reads a untransposed");
    at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, beta != 0.0f, a, b, c, false);
    return;
  }
#if AT_MKL_ENABLED()
  if (sgemm_) {
    // Column-major view: cᵀ (n × m) = bᵀ (n × k) · op(a)ᵀ (k × m).
    const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(k);
    const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
    const float one = 1.0f;
    sgemm_("N", a_transposed ? "T" : "N", &mi, &ni, &ki, &one, b, &la, a, &lb, &beta, c, &lc);
    return;
  }
#endif
  auto opts = at::TensorOptions().dtype(at::kFloat);
  auto A = a_transposed ? at::from_blob(const_cast<float*>(a), {k, m}, {lda, 1}, opts).t()
                        : at::from_blob(const_cast<float*>(a), {m, k}, {lda, 1}, opts);
  auto B = at::from_blob(const_cast<float*>(b), {k, n}, {ldb, 1}, opts);
  auto C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  at::addmm_out(C, C, A, B, beta, 1.0);
}

// "(a, b, c)", as the Python side prints a shape.
inline std::string shape_text(at::IntArrayRef sizes) {
  std::string text = "(";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + ")";
}

// A GEMM path's weight: the caller's packed copy (checked: `dtype`, contiguous, CPU, the expected shape),
// or pack(weight) now.
template <typename Pack>
at::Tensor packed_weight(const std::optional<at::Tensor>& packed, const at::Tensor& weight, at::IntArrayRef sizes,
                         const Pack& pack, const char* op, at::ScalarType dtype = at::kFloat) {
  if (!packed.has_value()) return pack(weight);
  const at::Tensor& p = *packed;
  TORCH_CHECK(p.scalar_type() == dtype && p.is_contiguous() && p.device().is_cpu() && p.sizes() == sizes, op,
              ": packed weight must be a contiguous CPU ", dtype == at::kFloat ? "float32" : "bfloat16",
              " tensor of shape ", shape_text(sizes), ", got ", p.scalar_type(), " ", shape_text(p.sizes()));
  return p;
}

// A transposed conv's output, (B, C_out, (T - 1)·s - 2p + k + output_padding), contiguous.
inline at::Tensor transposed_conv_output(const at::Tensor& x, int64_t out_channels, int64_t kernel, int64_t stride,
                                         int64_t padding, int64_t output_padding, const char* op) {
  const int64_t frames = x.size(2);
  const int64_t out_frames = (frames - 1) * stride - 2 * padding + kernel + output_padding;
  TORCH_CHECK(out_frames > 0 || frames == 0, op, ": ", frames, " frames give no output frames");
  return at::empty({x.size(0), out_channels, std::max<int64_t>(out_frames, 0)},
                   x.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace
