// Native CPU kernels for xcodec_fast (see xcodec_fast/ops/native.py for build, dispatch and timings).
//
// Snake is `x + (α + 1e-9)⁻¹ · sin(αx)²`. Eager torch makes five passes over memory for it; here
// each (batch, channel) row is processed in L1-sized chunks in one pass. For fp32 every step is
// rounded exactly as eager rounds it (same operation order, no FMA contraction: build with
// -ffp-contract=off, and the same sin as torch.sin: MKL VML in HA mode on x86 builds, otherwise
// ATen's Vectorized::sin), so fp32 results are bit-identical to the eager reference.
// bf16/fp16 are stored reduced and computed in fp32 (one rounding at the end, unlike eager).
// The residual unit at C <= 256, snake + strided conv at C_in <= 256 and snake + transposed conv are
// chunked implicit GEMMs on MKL sgemm (not bit-identical to eager, within ~1e-6 of the output scale);
// the other convolutions stay on ATen (oneDNN).
// Built with -fopenmp (build_config.py): at::parallel_for is serial without it.

#include <torch/extension.h>

#include <ATen/Config.h>
#include <ATen/Parallel.h>
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

// dst[0, n) = snake(x[lo, lo + n)) for one row of `frames` samples, zeros outside [0, frames)
// (the convolutions' zero padding: snake(0) = 0). scratch holds n floats.
template <typename scalar_t>
void snake_window(const scalar_t* xs, int64_t frames, int64_t lo, int64_t n, float a, float inv, float* dst,
                  float* scratch) {
  const int64_t v0 = std::clamp<int64_t>(lo, 0, frames), v1 = std::clamp<int64_t>(lo + n, 0, frames);
  if (v1 <= v0) {
    std::fill(dst, dst + n, 0.0f);
    return;
  }
  std::fill(dst, dst + (v0 - lo), 0.0f);
  std::fill(dst + (v1 - lo), dst + n, 0.0f);
  float* dv = dst + (v0 - lo);
  if constexpr (std::is_same_v<scalar_t, float>) {
    snake_floats(xs + v0, dv, scratch, v1 - v0, a, inv);
  } else {
    load_floats(xs + v0, dv, v1 - v0);
    snake_floats(dv, dv, scratch, v1 - v0, a, inv);
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

at::Tensor unit_stride_time(const at::Tensor& t) { return t.stride(2) == 1 ? t : t.contiguous(); }

void check_input(const at::Tensor& x, const at::Tensor& alpha, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && alpha.device().is_cpu(), op, ": native kernels take CPU tensors");
  TORCH_CHECK(x.dim() == 3, op, ": x must be (batch, channels, frames)");
  TORCH_CHECK(alpha.numel() == x.size(1), op, ": alpha needs one value per channel");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              op, ": x must be float32, bfloat16 or float16");
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

}  // namespace

at::Tensor snake(const at::Tensor& x_in, const at::Tensor& alpha) {
  check_input(x_in, alpha, "snake");
  const at::Tensor x = unit_stride_time(x_in);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  snake_into(x, alpha, out);
  return out;
}

// In place: x must not be needed afterwards (and must not be a view that others read).
at::Tensor& snake_(at::Tensor& x, const at::Tensor& alpha) {
  check_input(x, alpha, "snake_");
  if (x.stride(2) == 1) {
    snake_into(x, alpha, x);
  } else {
    x.copy_(snake(x, alpha));
  }
  return x;
}

std::tuple<at::Tensor, at::Tensor> add_snake(const at::Tensor& x_in, const at::Tensor& h_in, const at::Tensor& alpha) {
  check_input(x_in, alpha, "add_snake");
  TORCH_CHECK(h_in.sizes() == x_in.sizes() && h_in.scalar_type() == x_in.scalar_type(),
              "add_snake: h must match x in shape and dtype");
  const at::Tensor x = unit_stride_time(x_in), h = unit_stride_time(h_in);
  const auto options = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor y = at::empty(x.sizes(), options), s = at::empty(x.sizes(), options);
  const auto [a, inv] = snake_coefficients(alpha);
  const int64_t rows = x.size(0) * x.size(1), frames = x.size(2);
  dispatch_storage_type(x.scalar_type(), "add_snake", [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto xr = rows_of<scalar_t>(x), hr = rows_of<scalar_t>(h);
    const auto yr = rows_of<scalar_t>(y), sr = rows_of<scalar_t>(s);
    for_each_chunk(rows, frames, [&](int64_t row, int64_t t0, int64_t n) {
      const int64_t c = row % xr.channels;
      alignas(64) float scratch[kChunk];
      if constexpr (std::is_same_v<scalar_t, float>) {
        float* ys = yr.row(row) + t0;
        add_floats(xr.row(row) + t0, hr.row(row) + t0, ys, n);
        snake_floats(ys, sr.row(row) + t0, scratch, n, a[c], inv[c]);
      } else {
        // y is rounded to storage precision first, so that s == snake(y) for the y returned.
        alignas(64) float xf[kChunk];
        alignas(64) float hf[kChunk];
        load_floats(xr.row(row) + t0, xf, n);
        load_floats(hr.row(row) + t0, hf, n);
        add_floats(xf, hf, xf, n);
        store_floats(xf, yr.row(row) + t0, n);
        load_floats(yr.row(row) + t0, xf, n);
        snake_floats(xf, xf, scratch, n, a[c], inv[c]);
        store_floats(xf, sr.row(row) + t0, n);
      }
    });
  });
  return {y, s};
}

// ---- Residual unit as chunked implicit GEMM -------------------------------------------------------
//
// oneDNN's 1-D convolution is far from the matmul rate at small channel counts. Here T is split into
// chunks; each (batch, chunk) task, single-threaded inside at::parallel_for, computes
//   S = snake(x[:, t0 - 3d : t0 + L + 3d], α1)          (zeros outside [0, T): snake(0) = 0)
//   H = b1 + Σ_k W1[:, :, k] · S[:, k·d : k·d + L]      (7 GEMMs on shifted views of S: no im2col copy)
//   H = snake(H, α2);  out = x + b2 + W2 · H            (one more GEMM)
// so every intermediate stays in L2. fp32 results differ from eager in summation order only (within
// ~1e-6 of the output scale); reduced-precision storage is computed in fp32 and rounded once.

#if AT_MKL_ENABLED()
// Fortran BLAS from libtorch_cpu's MKL (LP64, as ATen itself declares it). Inside an OpenMP parallel
// region MKL runs sequentially, which is what the per-chunk tasks want.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));
#endif

// Row-major c (m × n, ldc) = op(a) · b + beta · c, b stored as (k × n, ldb); op(a) = a stored as
// (m × k, lda), or with a_transposed = aᵀ for a stored as (k × m, lda).
void gemm_rm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, bool a_transposed, const float* b,
             int64_t ldb, float beta, float* c, int64_t ldc) {
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

// Frames per task: the im2col tile (7·C × L floats) stays under ~1 MB, within this Xeon's 2 MB L2.
// Measured best (2 threads, ms at 64×160000 / 128×80000 / 256×20000): L=256-512 / 512 / 128.
int64_t residual_chunk_frames(int64_t channels) {
  return std::clamp<int64_t>((int64_t{1} << 15) / std::max<int64_t>(channels, 1), 128, 512);
}

// Where the GEMM path beats oneDNN (fp32, 2 threads, 2-core AVX-512 Xeon, torch 2.13, ms, d=1/d=9):
//   C×T          oneDNN path   GEMM path
//   64×160000    134 / 130      60 / 61
//   128×80000    175 / 168      97 / 89
//   128×20000     34 /  33      19 / 19
//   256×20000     90 /  92      76 / 75
//   256×4000      16 /  15      15 / 16
//   512×4000      59 /  57      58 / 58
//   512×1000      15 /  15      14 / 16
// so C ≤ 256 takes the GEMM path and wider units stay on oneDNN (a tie there, and oneDNN is what
// eager runs).
constexpr int64_t kGemmMaxChannels = 256;

at::Tensor residual_unit_gemm(const at::Tensor& x, const at::Tensor& alpha1, const at::Tensor& weight1,
                              const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                              const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int64_t chunk) {
  check_input(x, alpha1, "residual_unit");
  TORCH_CHECK(x.stride(2) == 1, "residual_unit: x needs a unit-stride time axis");
  const int64_t batch = x.size(0), channels = x.size(1), frames = x.size(2);
  const int64_t kernel = weight1.size(2);
  const int64_t pad = (kernel - 1) * dilation / 2;
  auto out = at::empty({batch, channels, frames}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto [a1, inv1] = snake_coefficients(alpha1);
  const auto [a2, inv2] = snake_coefficients(alpha2);
  // W1 as (c_out, k · c_in), matching the im2col rows; W2 as (c_out, c_in).
  const at::Tensor w1 = weight1.detach().to(at::kFloat).permute({0, 2, 1}).contiguous();
  const at::Tensor w2 = weight2.detach().to(at::kFloat).reshape({channels, channels}).contiguous();
  const std::vector<float> b1 = bias_values(bias1, channels), b2 = bias_values(bias2, channels);
  const float* w1p = w1.data_ptr<float>();
  const float* w2p = w2.data_ptr<float>();
  if (chunk <= 0) chunk = residual_chunk_frames(channels);
  const int64_t chunks = (frames + chunk - 1) / chunk;
  const int64_t span = chunk + 2 * pad;  // S row length, halo included
  // Every GEMM runs chunk columns wide, a partial last chunk padded with zero columns: MKL's result
  // for a column depends on the call's N, and an item's last chunk must be computed alike whether
  // the item is alone or in a longer padded batch (codes equal alone).
  const int64_t cols = chunk;

  dispatch_storage_type(x.scalar_type(), "residual_unit", [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto xr = rows_of<scalar_t>(x);
    scalar_t* outp = out.data_ptr<scalar_t>();
    constexpr bool kFloatOut = std::is_same_v<scalar_t, float>;
    at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
      const SequentialMkl sequential;
      std::vector<float> s_buf(channels * span), h_buf(channels * cols), i_buf(kernel * channels * cols),
          scratch(std::max(span, cols)), o_buf(channels * cols);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / chunks, t0 = (task % chunks) * chunk;
        const int64_t n = std::min(chunk, frames - t0);
        const int64_t lo = t0 - pad, width = n + 2 * pad;  // S covers [lo, lo + width)
        // S = snake(x) over the chunk and its halo; zero padding outside the signal.
        for (int64_t c = 0; c < channels; ++c) {
          snake_window(xr.row(b * channels + c), frames, lo, width, a1[c], inv1[c], s_buf.data() + c * span,
                       scratch.data());
        }
        // H = b1 + Σ_k W1_k · S shifted by k·d.
        float* h = h_buf.data();
        for (int64_t c = 0; c < channels; ++c) std::fill(h + c * cols, h + (c + 1) * cols, b1[c]);
        // im2col: row k·C + c of I is S[c] shifted by k·d; one GEMM with K = 7C runs ~3.5x faster than
        // seven K = C GEMMs on shifted views of S.
        float* im = i_buf.data();
        for (int64_t k = 0; k < kernel; ++k) {
          for (int64_t c = 0; c < channels; ++c) {
            float* row = im + (k * channels + c) * cols;
            std::memcpy(row, s_buf.data() + c * span + k * dilation, n * sizeof(float));
            std::fill(row + n, row + cols, 0.0f);
          }
        }
        gemm_rm(channels, cols, kernel * channels, w1p, kernel * channels, false, im, cols, 1.0f, h, cols);
        // Columns past n keep b1: they only feed output columns that are dropped.
        for (int64_t c = 0; c < channels; ++c) snake_floats(h + c * cols, h + c * cols, scratch.data(), n, a2[c], inv2[c]);
        // out = (x + b2) + W2 · H, written straight into the output for a full fp32 chunk.
        const bool direct = kFloatOut && n == cols;
        float* o = direct ? reinterpret_cast<float*>(outp) + b * channels * frames + t0 : o_buf.data();
        const int64_t ldo = direct ? frames : cols;
        for (int64_t c = 0; c < channels; ++c) {
          // x + b2 from S's source row: reread x (still in cache from the first pass).
          const scalar_t* xs = xr.row(b * channels + c) + t0;
          float* oc = o + c * ldo;
          if constexpr (kFloatOut) {
            std::memcpy(oc, xs, n * sizeof(float));
          } else {
            load_floats(xs, oc, n);
          }
          const fVec vb(b2[c]);
          int64_t i = 0;
          for (; i + fVec::size() <= n; i += fVec::size()) (fVec::loadu(oc + i) + vb).store(oc + i);
          if (i < n) (fVec::loadu(oc + i, n - i) + vb).store(oc + i, n - i);
          std::fill(oc + n, oc + (direct ? n : cols), 0.0f);
        }
        gemm_rm(channels, cols, channels, w2p, channels, false, h, cols, 1.0f, o, ldo);
        if (!direct) store_rows(o, ldo, outp + b * channels * frames + t0, frames, channels, n);
      }
    });
  });
  return out;
}

at::Tensor residual_unit_onednn(const at::Tensor& x_in, const at::Tensor& alpha1, const at::Tensor& weight1,
                                const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                                const at::Tensor& weight2, const std::optional<at::Tensor>& bias2);

// The untuned default (XCODEC_FAST_TUNE=off, or a shape not measured yet under torch.compile):
// the crossover below was measured on one Intel VM; with tuning on, xcodec_fast.ops.tuning times
// every implementation on the machine at hand and this choice is not used.
at::Tensor residual_unit(const at::Tensor& x_in, const at::Tensor& alpha1, const at::Tensor& weight1,
                         const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                         const at::Tensor& weight2, const std::optional<at::Tensor>& bias2) {
  const at::Tensor x = unit_stride_time(x_in);
  const int64_t channels = x.size(1), kernel = weight1.size(-1);
  const bool square = weight1.dim() == 3 && weight1.size(0) == channels && weight1.size(1) == channels &&
                      weight2.dim() == 3 && weight2.size(0) == channels && weight2.size(1) == channels &&
                      weight2.size(2) == 1 && kernel % 2 == 1 && alpha2.numel() == channels;
  if (square && channels <= kGemmMaxChannels && x.device().is_cpu() && weight1.scalar_type() == x.scalar_type() &&
      weight2.scalar_type() == x.scalar_type()) {
    return residual_unit_gemm(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2, 0);
  }
  return residual_unit_onednn(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2);
}

at::Tensor residual_unit_onednn(const at::Tensor& x_in, const at::Tensor& alpha1, const at::Tensor& weight1,
                                const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                                const at::Tensor& weight2, const std::optional<at::Tensor>& bias2) {
  const at::Tensor x = unit_stride_time(x_in);
  const int64_t kernel = weight1.size(-1);
  const int64_t padding = (kernel - 1) * dilation / 2;
  at::Tensor h = at::conv1d(snake(x, alpha1), weight1, bias1, {1}, {padding}, {dilation});
  snake_(h, alpha2);  // h is ours alone
  at::Tensor out = at::conv1d(h, weight2, bias2);
  const int64_t trim = (x.size(2) - out.size(2)) / 2;
  // x + h == h + x bit for bit; adding in place saves the output allocation.
  out.add_(trim > 0 ? x.narrow(2, trim, out.size(2)) : x);
  return out;
}

// ---- Strided and transposed convolutions as chunked implicit GEMMs --------------------------------
//
// Both are rewritten over phases (time index mod stride) so that every im2col row is a contiguous
// copy, then each (batch, chunk of output frames) task runs snake -> im2col -> one MKL sgemm per
// phase group, single-threaded inside at::parallel_for, with every buffer sized for L2. fp32 results
// differ from eager (oneDNN) in summation order only.

// Output frames per task, so that the im2col tile (rows × frames floats) stays near 1 MB.
int64_t conv_chunk_frames(int64_t im2col_rows) {
  return std::clamp<int64_t>((int64_t{1} << 18) / std::max<int64_t>(im2col_rows, 1), 64, 512);
}

void check_conv_args(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight, int64_t in_channels,
                     int64_t stride, int64_t padding, const char* op) {
  check_input(x, alpha, op);
  TORCH_CHECK(weight.dim() == 3 && in_channels == x.size(1), op, ": weight does not match x's ", x.size(1),
              " channels");
  TORCH_CHECK(stride >= 1 && padding >= 0, op, ": stride must be >= 1 and padding >= 0");
}

// y = conv1d(snake(x), W, b, stride s, padding p). With k = m·s + r and P[(c, r)][u] = snake(x)[c, u·s + r - p]:
//   y[o, t] = b[o] + Σ_m Σ_(c, r) W[o, c, m·s + r] · P[(c, r)][t + m]
// so the im2col rows (m, c, r) are P's rows shifted by m, and the GEMM's K is ⌈k/s⌉·s·C_in.
at::Tensor snake_conv1d_gemm(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding, int64_t chunk) {
  const at::Tensor x = unit_stride_time(x_in);
  check_conv_args(x, alpha, weight, weight.size(1), stride, padding, "snake_conv1d");
  const int64_t batch = x.size(0), in_channels = x.size(1), frames = x.size(2);
  const int64_t out_channels = weight.size(0), kernel = weight.size(2);
  const int64_t out_frames = (frames + 2 * padding - kernel) / stride + 1;
  TORCH_CHECK(frames + 2 * padding >= kernel, "snake_conv1d: ", frames, " frames (padded by ", padding,
              ") are fewer than the kernel's ", kernel);
  auto out = at::empty({batch, out_channels, out_frames}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const int64_t taps = (kernel + stride - 1) / stride, phase_rows = in_channels * stride, rows = taps * phase_rows;
  // W as (C_out, taps, C_in, s) with zeros for k >= kernel, matching the im2col rows.
  const at::Tensor w = at::constant_pad_nd(weight.detach().to(at::kFloat), {0, taps * stride - kernel})
                           .view({out_channels, in_channels, taps, stride})
                           .permute({0, 2, 1, 3})
                           .contiguous();
  const float* wp = w.data_ptr<float>();
  const std::vector<float> b = bias_values(bias, out_channels);
  const auto [a, inv] = snake_coefficients(alpha);
  if (chunk <= 0) chunk = conv_chunk_frames(rows);
  const int64_t chunks = (out_frames + chunk - 1) / chunk;
  const int64_t span = chunk + taps - 1;  // P row length
  const int64_t cols = chunk;             // full-width GEMMs, as in residual_unit_gemm (codes equal alone)

  dispatch_storage_type(x.scalar_type(), "snake_conv1d", [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr bool kFloatOut = std::is_same_v<scalar_t, float>;
    const auto xr = rows_of<scalar_t>(x);
    scalar_t* outp = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
      const SequentialMkl sequential;
      std::vector<float> line(span * stride), scratch(span * stride), p_buf(phase_rows * span), i_buf(rows * cols),
          o_buf(out_channels * cols);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / chunks, t0 = (task % chunks) * chunk;
        const int64_t n = std::min(chunk, out_frames - t0), width = n + taps - 1;
        for (int64_t c = 0; c < in_channels; ++c) {
          snake_window(xr.row(bi * in_channels + c), frames, t0 * stride - padding, width * stride, a[c], inv[c],
                       stride == 1 ? p_buf.data() + c * span : line.data(), scratch.data());
          if (stride > 1) {
            for (int64_t r = 0; r < stride; ++r) {
              float* pr = p_buf.data() + (c * stride + r) * span;
              for (int64_t u = 0; u < width; ++u) pr[u] = line[u * stride + r];
            }
          }
        }
        float* im = i_buf.data();
        for (int64_t m = 0; m < taps; ++m) {
          for (int64_t row = 0; row < phase_rows; ++row) {
            float* dst = im + (m * phase_rows + row) * cols;
            std::memcpy(dst, p_buf.data() + row * span + m, n * sizeof(float));
            std::fill(dst + n, dst + cols, 0.0f);
          }
        }
        const bool direct = kFloatOut && n == cols;
        float* o = direct ? reinterpret_cast<float*>(outp) + bi * out_channels * out_frames + t0 : o_buf.data();
        const int64_t ldo = direct ? out_frames : cols;
        for (int64_t oc = 0; oc < out_channels; ++oc) std::fill(o + oc * ldo, o + oc * ldo + cols, b[oc]);
        gemm_rm(out_channels, cols, rows, wp, rows, false, im, cols, 1.0f, o, ldo);
        if (!direct) store_rows(o, ldo, outp + bi * out_channels * out_frames + t0, out_frames, out_channels, n);
      }
    });
  });
  return out;
}

// Floor division for possibly negative numerators.
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// y = conv_transpose1d(snake(x), W (C_in, C_out, k), b, stride s, padding p, output_padding): input frame t
// adds W[:, o, k]·snake(x)[:, t] to output frame t·s + k - p. Per task (a chunk of output frames):
//   S = snake(x) over the input frames that reach the chunk        (C_in × width)
//   Z = Wᵀ · S, W viewed as (C_in, C_out·k) as it is stored       (C_out·k × width: one GEMM, no repacking)
//   y[o, f] = b[o] + Σ_{k ≡ f + p (mod s)} Z[(o, k), (f + p - k)/s]  (each output gathers ⌈k/s⌉ rows)
// Repacking W per phase instead cost more than the convolution for 1024 × 512 × 16 weights.
at::Tensor snake_conv_transpose1d_gemm(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                       int64_t output_padding, int64_t chunk) {
  const at::Tensor x = unit_stride_time(x_in);
  check_conv_args(x, alpha, weight, weight.size(0), stride, padding, "snake_conv_transpose1d");
  const int64_t batch = x.size(0), in_channels = x.size(1), frames = x.size(2);
  const int64_t out_channels = weight.size(1), kernel = weight.size(2);
  const int64_t out_frames = (frames - 1) * stride - 2 * padding + kernel + output_padding;
  TORCH_CHECK(out_frames > 0 || frames == 0, "snake_conv_transpose1d: ", frames, " frames give no output frames");
  auto out = at::empty({batch, out_channels, std::max<int64_t>(out_frames, 0)},
                       x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const std::vector<float> b = bias_values(bias, out_channels);
  const at::Tensor wf = weight.detach().to(at::kFloat).contiguous();
  const float* wp = wf.data_ptr<float>();
  const int64_t z_rows = out_channels * kernel;
  const auto [a, inv] = snake_coefficients(alpha);
  // Chunks of q (output frames q·s .. q·s + s - 1); input frames reaching q0..q1 are
  // floor_div(q0·s + p - k + 1 + s - 1, s) .. floor_div(q1·s + s - 1 + p, s).
  const int64_t steps = (out_frames + stride - 1) / stride;
  const int64_t reach = (kernel + stride - 1) / stride + 1;  // input frames per q beyond one, at most
  // Larger chunks run the GEMM faster (2 threads, ms at 512-step vs 128-step chunks: 256 -> 128 channels
  // × 20000 frames 58 vs 63, 512 -> 256 × 4000 41 vs 48), as long as every thread gets a task. So the
  // chunk follows batch, length and thread count, and decoded audio may differ in the last bits
  // between batch compositions or thread counts (decode only: no codes depend on it).
  if (chunk <= 0) {
    const int64_t threads = std::max<int64_t>(at::get_num_threads(), 1);
    chunk = std::clamp<int64_t>((batch * steps + threads - 1) / threads, 64, 512);
  }
  chunk = std::min(chunk, steps);
  const int64_t chunks = (steps + chunk - 1) / chunk;
  const int64_t span = chunk + reach;

  dispatch_storage_type(x.scalar_type(), "snake_conv_transpose1d", [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr bool kFloatOut = std::is_same_v<scalar_t, float>;
    const auto xr = rows_of<scalar_t>(x);
    scalar_t* outp = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
      const SequentialMkl sequential;
      std::vector<float> s_buf(in_channels * span), scratch(span), z_buf(z_rows * span), phase(chunk);
      std::vector<float> line(kFloatOut ? 0 : chunk * stride);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / chunks, q0 = (task % chunks) * chunk;
        const int64_t n = std::min(chunk, steps - q0);
        const int64_t first = q0 * stride, len = std::min((q0 + n) * stride, out_frames) - first;
        const int64_t t_first = floor_div(first + padding - kernel + stride, stride);
        const int64_t t_last = floor_div(first + len - 1 + padding, stride);
        const int64_t width = t_last - t_first + 1;
        for (int64_t c = 0; c < in_channels; ++c) {
          snake_window(xr.row(bi * in_channels + c), frames, t_first, width, a[c], inv[c], s_buf.data() + c * width,
                       scratch.data());
        }
        float* z = z_buf.data();
        gemm_rm(z_rows, width, in_channels, wp, z_rows, true, s_buf.data(), width, 0.0f, z, width);
        for (int64_t o = 0; o < out_channels; ++o) {
          scalar_t* yrow = outp + (bi * out_channels + o) * out_frames + first;
          float* dst;
          if constexpr (kFloatOut) {
            dst = yrow;
          } else {
            dst = line.data();
          }
          // Phase r (frames first + q·s + r) takes taps k = β + j·s from input frames q0 + q + α - j,
          // where r + p = α·s + β: summed contiguously per phase, then interleaved.
          for (int64_t r = 0; r < std::min(stride, len); ++r) {
            const int64_t count = (len - r + stride - 1) / stride;
            const int64_t al = (r + padding) / stride, be = (r + padding) % stride;
            const fVec vb(b[o]);
            int64_t q = 0;
            for (; q + fVec::size() <= count; q += fVec::size()) vb.store(phase.data() + q);
            for (; q < count; ++q) phase[q] = b[o];
            for (int64_t k = be, j = 0; k < kernel; k += stride, ++j) {
              const float* zk = z + (o * kernel + k) * width + (q0 + al - j - t_first);
              add_floats(phase.data(), zk, phase.data(), count);
            }
            for (q = 0; q < count; ++q) dst[q * stride + r] = phase[q];
          }
          if constexpr (!kFloatOut) store_floats(line.data(), yrow, len);
        }
      }
    });
  });
  return out;
}

// Where the GEMM path beats snake + oneDNN (fp32, 2 threads, 2-core AVX-512 Xeon, torch 2.13, ms):
//   C_in -> C_out, frames, kernel/stride   oneDNN   GEMM
//   64 -> 128, 160000, 16/8                  64      27
//   128 -> 256, 20000, 10/5                  16      12
//   256 -> 512, 4000, 8/4                    9.5     8.7
//   512 -> 1024, 1000, 4/2                   8.5     10.4
//   1024 -> 256, 500, 3/1                    3.1     3.5
//   64 -> 1, 160000, 7/1                     39      13
constexpr int64_t kConvGemmMaxInChannels = 256;

at::Tensor snake_conv1d(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding) {
  if (x.scalar_type() == weight.scalar_type() && weight.dim() == 3 && weight.size(1) == x.size(1) &&
      x.size(1) <= kConvGemmMaxInChannels) {
    return snake_conv1d_gemm(x, alpha, weight, bias, stride, padding, 0);
  }
  return at::conv1d(snake(x, alpha), weight, bias, {stride}, {padding});
}

// The GEMM path wins at every decoder site (same machine, ms, oneDNN vs GEMM): 1024 -> 512 × 500
// frames ×8: 48 vs 39; 512 -> 256 × 4000 ×5: 76 vs 41; 256 -> 128 × 20000 ×4: 132 vs 58;
// 128 -> 64 × 80000 ×2: 124 vs 40.
at::Tensor snake_conv_transpose1d(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                  int64_t output_padding) {
  if (x.scalar_type() == weight.scalar_type() && weight.dim() == 3 && weight.size(0) == x.size(1)) {
    return snake_conv_transpose1d_gemm(x, alpha, weight, bias, stride, padding, output_padding, 0);
  }
  return at::conv_transpose1d(snake(x, alpha), weight, bias, {stride}, {padding}, {output_padding});
}

std::string build_info() {
  return std::string("capability=") + XCODEC_CPU_CAPABILITY + ";source=" + XCODEC_STRINGIFY(XCODEC_SOURCE_DIGEST) +
         ";sin=" + (XCODEC_SIN_MKL ? "mkl-vml-ha" : "aten-vec") +
         ";torch=" + std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xcodec_fast native CPU kernels";
  m.def("snake", &snake, "snake(x, alpha) in one pass");
  m.def("snake_", &snake_, "snake in place on x");
  m.def("add_snake", &add_snake, "(x + h, snake(x + h)) in one pass");
  m.def("residual_unit", &residual_unit, "DAC residual unit with fused snakes");
  m.def("residual_unit_gemm", [](const at::Tensor& x, const at::Tensor& alpha1, const at::Tensor& weight1,
                                 const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                                 const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int64_t chunk) {
    return residual_unit_gemm(unit_stride_time(x), alpha1, weight1, bias1, dilation, alpha2, weight2, bias2, chunk);
  }, "residual unit as chunked implicit GEMM (chunk <= 0: default); for tuning");
  m.def("residual_unit_onednn", &residual_unit_onednn, "residual unit as snake + oneDNN convolutions");
  m.def("snake_conv1d", &snake_conv1d, "conv1d(snake(x))");
  m.def("snake_conv_transpose1d", &snake_conv_transpose1d, "conv_transpose1d(snake(x))");
  m.def("snake_conv1d_gemm", &snake_conv1d_gemm, "snake_conv1d as chunked implicit GEMM (chunk <= 0: default)");
  m.def("snake_conv_transpose1d_gemm", &snake_conv_transpose1d_gemm,
        "snake_conv_transpose1d as chunked implicit GEMM (chunk <= 0: default)");
  m.def("snake_conv1d_onednn", [](const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding) {
    return at::conv1d(snake(x, alpha), weight, bias, {stride}, {padding});
  }, "snake then ATen conv1d; for tuning");
  m.def("snake_conv_transpose1d_onednn", [](const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                            int64_t output_padding) {
    return at::conv_transpose1d(snake(x, alpha), weight, bias, {stride}, {padding}, {output_padding});
  }, "snake then ATen conv_transpose1d; for tuning");
  m.def("build_info", &build_info, "how this binary was built");
}
