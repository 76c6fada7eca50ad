// Native CPU kernels for xcodec_fast (see xcodec_fast/ops/native.py for build, dispatch and timings).
//
// Snake is `x + (α + 1e-9)⁻¹ · sin(αx)²`. Eager torch makes five passes over memory for it; here
// each (batch, channel) row is processed in L1-sized chunks in one pass. For fp32 every step is
// rounded exactly as eager rounds it (same operation order, no FMA contraction: build with
// -ffp-contract=off, and the same sin as torch.sin: MKL VML in HA mode on x86 builds, otherwise
// ATen's Vectorized::sin), so fp32 results are bit-identical to the eager reference.
// bf16/fp16 are stored reduced and computed in fp32 (one rounding at the end, unlike eager).
// Convolutions stay on ATen (oneDNN); the fused ops save passes, allocations and Python overhead.

#include <torch/extension.h>

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>
#include <string>

#if AT_MKL_ENABLED()
// Exported by libtorch_cpu (static MKL). n is MKL_INT (int in LP64, int64 in ILP64): passing it as a
// 64-bit value with n < 2^31 is correct under either ABI.
extern "C" void vmsSin(long long n, const float* a, float* r, long long mode);
#define XCODEC_SIN_MKL 1
#else
#define XCODEC_SIN_MKL 0
#endif

#define XCODEC_STRINGIFY_(x) #x
#define XCODEC_STRINGIFY(x) XCODEC_STRINGIFY_(x)
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define XCODEC_CPU_CAPABILITY XCODEC_STRINGIFY(CPU_CAPABILITY)
#else
#define XCODEC_CPU_CAPABILITY "DEFAULT"
#endif

namespace {

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

// Runs body(row, t0, n) over every (row, chunk of ≤ kChunk frames) in parallel.
template <typename F>
void for_each_chunk(int64_t rows, int64_t frames, const F& body) {
  if (rows == 0 || frames == 0) return;
  const int64_t chunks_per_row = (frames + kChunk - 1) / kChunk;
  const int64_t chunk_len = std::min(frames, kChunk);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / chunk_len);
  at::parallel_for(0, rows * chunks_per_row, grain, [&](int64_t begin, int64_t end) {
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

at::Tensor residual_unit(const at::Tensor& x_in, const at::Tensor& alpha1, const at::Tensor& weight1,
                         const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                         const at::Tensor& weight2, const std::optional<at::Tensor>& bias2) {
  const at::Tensor x = unit_stride_time(x_in);
  const int64_t padding = (weight1.size(-1) - 1) * dilation / 2;
  at::Tensor h = at::conv1d(snake(x, alpha1), weight1, bias1, {1}, {padding}, {dilation});
  snake_(h, alpha2);  // h is ours alone
  at::Tensor out = at::conv1d(h, weight2, bias2);
  const int64_t trim = (x.size(2) - out.size(2)) / 2;
  // x + h == h + x bit for bit; adding in place saves the output allocation.
  out.add_(trim > 0 ? x.narrow(2, trim, out.size(2)) : x);
  return out;
}

at::Tensor snake_conv1d(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding) {
  return at::conv1d(snake(x, alpha), weight, bias, {stride}, {padding});
}

at::Tensor snake_conv_transpose1d(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                  int64_t output_padding) {
  return at::conv_transpose1d(snake(x, alpha), weight, bias, {stride}, {padding}, {output_padding});
}

std::string build_info() {
  return std::string("capability=") + XCODEC_CPU_CAPABILITY + ";sin=" + (XCODEC_SIN_MKL ? "mkl-vml-ha" : "aten-vec") +
         ";torch=" + std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xcodec_fast native CPU kernels";
  m.def("snake", &snake, "snake(x, alpha) in one pass");
  m.def("snake_", &snake_, "snake in place on x");
  m.def("add_snake", &add_snake, "(x + h, snake(x + h)) in one pass");
  m.def("residual_unit", &residual_unit, "DAC residual unit with fused snakes");
  m.def("snake_conv1d", &snake_conv1d, "conv1d(snake(x))");
  m.def("snake_conv_transpose1d", &snake_conv_transpose1d, "conv_transpose1d(snake(x))");
  m.def("build_info", &build_info, "how this binary was built");
}
