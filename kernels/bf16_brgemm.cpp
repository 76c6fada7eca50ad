#include "common.h"
#include "ops.h"

#include <cstdint>
#include <cstdlib>

// bfloat16 storage on bf16 matrix units (AMX / AVX512-BF16 through oneDNN's brgemm ukernel, which
// ATen exports as at::native::cpublas::brgemm): the residual unit and the transposed conv, the
// decoder's two costly ops, as the chunked implicit GEMMs of residual_unit.cpp and conv.cpp with
// bf16 GEMM operands and fp32 accumulation.
//
// Residual unit, per (batch, chunk) task, single-threaded:
//   S = snake(x, α1) in fp32, rounded to bf16 once, stored pairwise-interleaved (the VNNI layout
//       brgemm reads B in: rows 2q and 2q + 1 of a K × N matrix as one row of N bf16 pairs)
//   H = b1 + W1 · im2col(S)         (fp32 accumulator, K = k·C; im2col copies whole pair rows)
//   out = x + b2 + W2 · vnni(snake(H, α2))     (fp32 accumulator, rounded to bf16 once)
// The operands are bf16 where eager's bf16 path also rounds them (its conv inputs are bf16), so the
// error is of the same order as eager's; the weights are the model's bf16 values exactly.
// C must be even (pairs of channel rows); the model's channel counts are.
//
// Strided conv: the phase rows P of snake_conv1d_gemm, paired into VNNI rows, then im2col of whole
// pair rows and one GEMM; C_in · stride must be even. Without α it is a plain conv (the semantic
// model's feature encoder).
//
// Transposed conv: Z = Wᵀ · vnni(snake(x)) (bf16 operands, fp32 Z), then the per-phase gather of
// snake_conv_transpose1d_gemm in fp32, rounded to bf16 once. C_in must be even.

namespace {

// c10::BFloat16's rounding (round to nearest even, NaN to the quiet NaN), in a form the compiler
// vectorizes.
inline uint32_t bf16_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  return (bits & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded;
}

// dst[i] = (bf16(second[i]) << 16) | bf16(first[i]): two rows as one row of VNNI pairs.
inline void pack_pair(const float* first, const float* second, uint32_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_bits(first[i]) | (bf16_bits(second[i]) << 16);
}

// A 64-byte-aligned buffer of n values (zeroed): the matrix-unit tile loads of brgemm's operands
// and accumulators run slower from rows that straddle cache lines.
template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t n) : size_(static_cast<size_t>(std::max<int64_t>(n, 1))) {
    const size_t bytes = (size_ * sizeof(T) + 63) / 64 * 64;
    data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(data_ != nullptr, "bf16 brgemm: cannot allocate ", bytes, " bytes of scratch");
    std::memset(data_, 0, bytes);
  }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* data() { return data_; }
  T& operator[](int64_t i) { return data_[i]; }

 private:
  size_t size_;
  T* data_;
};

// Releases the thread's matrix-unit state when its tasks are done.
struct BrgemmScope {
  BrgemmScope() = default;
  ~BrgemmScope() { at::native::cpublas::brgemm_release(true); }
  BrgemmScope(const BrgemmScope&) = delete;
  BrgemmScope& operator=(const BrgemmScope&) = delete;
};

// Frames per task: bf16 operands halve the im2col tile of the fp32 path, so chunks run twice as long.
// Measured (2-core Xeon with AMX, ms, chunk 128 / 256 / 512): C=512 × 4000: 17.0 / 14.9 / 31.8;
// C=256 × 20000: 22.9 / 23.3 / 32.1; C=128 × 80000: 32.8 / 28.1 / 25.9; C=64 × 160000: 27.5 / 20.5 / 20.2.
int64_t brgemm_chunk_frames(int64_t channels) {
  return std::clamp<int64_t>((int64_t{1} << 16) / std::max<int64_t>(channels, 1), 256, 512);
}

}  // namespace

// oneDNN's bf16 brgemm reads the VNNI layout on AMX (could_pack) and on AVX512-BF16 (Zen 4 / Zen 5 and
// Cooper Lake: VDPBF16PS); on other AVX-512 CPUs it would emulate bf16 dot products in fp32.
bool brgemm_bf16_available() {
  return at::native::cpublas::could_pack(at::kBFloat16) || __builtin_cpu_supports("avx512bf16");
}

// Every bf16 brgemm kernel's input: bfloat16 storage with a unit-stride time axis, on a CPU that has it.
static void check_brgemm_input(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16, op, ": x must be bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.stride(2) == 1, op, ": x needs a unit-stride time axis");
  TORCH_CHECK(brgemm_bf16_available(), op, ": this CPU or torch build has no bf16 brgemm");
}

at::Tensor pack_residual_weight_bf16(const at::Tensor& weight) {
  return pack_residual_weight(weight).to(at::kBFloat16);  // bf16 -> fp32 -> bf16 is exact
}

at::Tensor residual_unit_brgemm(const at::Tensor& x, const at::Tensor& alpha1, const at::Tensor& weight1,
                                const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                                const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int64_t chunk,
                                const std::optional<at::Tensor>& packed1, const std::optional<at::Tensor>& packed2) {
  check_input(x, alpha1, "residual_unit_brgemm");
  check_brgemm_input(x, "residual_unit_brgemm");
  const int64_t batch = x.size(0), channels = x.size(1), frames = x.size(2);
  TORCH_CHECK(channels % 2 == 0, "residual_unit_brgemm: needs an even channel count, got ", channels);
  TORCH_CHECK(weight1.dim() == 3 && weight1.size(0) == channels && weight1.size(1) == channels &&
                  weight1.size(2) % 2 == 1,
              "residual_unit_brgemm: weight1 must be (C, C, k) with odd k for C = ", channels, ", got ",
              weight1.sizes());
  TORCH_CHECK(weight2.dim() == 3 && weight2.size(0) == channels && weight2.size(1) == channels &&
                  weight2.size(2) == 1,
              "residual_unit_brgemm: weight2 must be (C, C, 1) for C = ", channels, ", got ", weight2.sizes());
  TORCH_CHECK(alpha2.numel() == channels, "residual_unit_brgemm: alpha2 needs one value per channel");
  TORCH_CHECK(dilation >= 1, "residual_unit_brgemm: dilation must be >= 1, got ", dilation);
  const int64_t kernel = weight1.size(2);
  const int64_t pad = (kernel - 1) * dilation / 2;
  auto out = at::empty({batch, channels, frames}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto [a1, inv1] = snake_coefficients(alpha1);
  const auto [a2, inv2] = snake_coefficients(alpha2);
  const at::Tensor w1 = packed_weight(packed1, weight1, {channels, kernel, channels}, pack_residual_weight_bf16,
                                      "residual_unit_brgemm", at::kBFloat16);
  const at::Tensor w2 = packed_weight(packed2, weight2, {channels, 1, channels}, pack_residual_weight_bf16,
                                      "residual_unit_brgemm", at::kBFloat16);
  const std::vector<float> b1 = bias_values(bias1, channels), b2 = bias_values(bias2, channels);
  const auto* w1p = w1.data_ptr<at::BFloat16>();
  const auto* w2p = w2.data_ptr<at::BFloat16>();
  if (chunk <= 0) chunk = brgemm_chunk_frames(channels);
  const int64_t chunks = (frames + chunk - 1) / chunk;
  const int64_t span = chunk + 2 * pad;
  const int64_t cols = chunk;  // every GEMM a full chunk wide: an item's results do not depend on its batch
  const int64_t pairs = channels / 2;
  const auto xr = rows_of<at::BFloat16>(x);
  auto* outp = out.data_ptr<at::BFloat16>();

  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    const BrgemmScope scope;
    AlignedBuffer<float> s_rows(2 * span), scratch(std::max(span, cols)), h_buf(channels * cols),
        o_buf(channels * cols);
    AlignedBuffer<uint32_t> s_vnni(pairs * span), i_vnni(kernel * pairs * cols), h_vnni(pairs * cols);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, t0 = (task % chunks) * chunk;
      const int64_t n = std::min(chunk, frames - t0);
      const int64_t lo = t0 - pad, width = n + 2 * pad;
      for (int64_t q = 0; q < pairs; ++q) {
        for (int64_t r = 0; r < 2; ++r) {
          snake_window(xr.row(b * channels + 2 * q + r), frames, lo, width, a1[2 * q + r], inv1[2 * q + r],
                       s_rows.data() + r * span, scratch.data());
        }
        pack_pair(s_rows.data(), s_rows.data() + span, s_vnni.data() + q * span, width);
      }
      // im2col: K row k·C + c is S[c] shifted by k·d, so pair row k·C/2 + q is S's pair row q shifted.
      for (int64_t k = 0; k < kernel; ++k) {
        for (int64_t q = 0; q < pairs; ++q) {
          uint32_t* row = i_vnni.data() + (k * pairs + q) * cols;
          std::memcpy(row, s_vnni.data() + q * span + k * dilation, n * sizeof(uint32_t));
          std::fill(row + n, row + cols, 0u);
        }
      }
      float* h = h_buf.data();
      for (int64_t c = 0; c < channels; ++c) std::fill(h + c * cols, h + (c + 1) * cols, b1[c]);
      at::native::cpublas::brgemm(channels, cols, kernel * channels, kernel * channels, cols, cols, true, w1p,
                                  reinterpret_cast<const at::BFloat16*>(i_vnni.data()), h, true);
      // Columns past n keep b1: they only feed output columns that are dropped.
      for (int64_t c = 0; c < channels; ++c) snake_floats(h + c * cols, h + c * cols, scratch.data(), n, a2[c], inv2[c]);
      for (int64_t q = 0; q < pairs; ++q) {
        pack_pair(h + 2 * q * cols, h + (2 * q + 1) * cols, h_vnni.data() + q * cols, cols);
      }
      float* o = o_buf.data();
      for (int64_t c = 0; c < channels; ++c) shortcut_plus_bias(xr.row(b * channels + c) + t0, b2[c], o + c * cols, n, cols);
      at::native::cpublas::brgemm(channels, cols, channels, channels, cols, cols, true, w2p,
                                  reinterpret_cast<const at::BFloat16*>(h_vnni.data()), o, true);
      store_rows(o, cols, outp + b * channels * frames + t0, frames, channels, n);
    }
  });
  return out;
}

at::Tensor pack_conv_transpose1d_weight_bf16(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 3, "pack_conv_transpose1d_weight_bf16: expected a (C_in, C_out, k) weight, got ",
              weight.sizes());
  return pack_conv_transpose1d_weight_rows(weight).to(at::kBFloat16);  // exact, as above
}

at::Tensor snake_conv_transpose1d_brgemm(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                         int64_t output_padding, int64_t chunk,
                                         const std::optional<at::Tensor>& packed) {
  check_input(x, alpha, "snake_conv_transpose1d_brgemm");
  check_brgemm_input(x, "snake_conv_transpose1d_brgemm");
  const int64_t batch = x.size(0), in_channels = x.size(1), frames = x.size(2);
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) == in_channels,
              "snake_conv_transpose1d_brgemm: weight must be (C_in, C_out, k) with C_in = ", in_channels, ", got ",
              weight.sizes());
  TORCH_CHECK(in_channels % 2 == 0, "snake_conv_transpose1d_brgemm: needs an even input channel count, got ",
              in_channels);
  TORCH_CHECK(stride >= 1 && padding >= 0 && output_padding >= 0,
              "snake_conv_transpose1d_brgemm: stride must be >= 1, padding and output_padding >= 0");
  const int64_t out_channels = weight.size(1), kernel = weight.size(2);
  auto out = transposed_conv_output(x, out_channels, kernel, stride, padding, output_padding,
                                    "snake_conv_transpose1d_brgemm");
  if (out.numel() == 0) return out;
  const int64_t out_frames = out.size(2);
  const at::Tensor wt = packed_weight(packed, weight, {out_channels, kernel, in_channels},
                                      pack_conv_transpose1d_weight_bf16, "snake_conv_transpose1d_brgemm", at::kBFloat16);
  const auto* wp = wt.data_ptr<at::BFloat16>();
  const std::vector<float> b = bias_values(bias, out_channels);
  const auto [a, inv] = snake_coefficients(alpha);
  const int64_t z_rows = out_channels * kernel, pairs = in_channels / 2;
  // Chunks of q (output frames q·s .. q·s + s - 1), as in snake_conv_transpose1d_gemm.
  const int64_t steps = (out_frames + stride - 1) / stride;
  const int64_t reach = (kernel + stride - 1) / stride + 1;
  if (chunk <= 0) {
    const int64_t threads = std::max<int64_t>(at::get_num_threads(), 1);
    chunk = std::clamp<int64_t>((batch * steps + threads - 1) / threads, 64, 512);
  }
  chunk = std::min(chunk, steps);
  const int64_t chunks = (steps + chunk - 1) / chunk;
  const int64_t span = chunk + reach;  // every GEMM this wide: the kernel is JIT-compiled once per shape
  const int64_t ld = (span + 15) / 16 * 16;  // row stride of S and Z: rows start on cache lines
  const auto xr = rows_of<at::BFloat16>(x);
  auto* outp = out.data_ptr<at::BFloat16>();

  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    const BrgemmScope scope;
    AlignedBuffer<float> s_rows(2 * span), scratch(span), z_buf(z_rows * ld), phase(chunk), line(chunk * stride);
    AlignedBuffer<uint32_t> s_vnni(pairs * ld);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / chunks, q0 = (task % chunks) * chunk;
      const int64_t n = std::min(chunk, steps - q0);
      const TransposedTask span_of = transposed_task(q0, n, stride, padding, kernel, out_frames);
      const int64_t t_first = span_of.t_first, width = span_of.width;
      for (int64_t q = 0; q < pairs; ++q) {
        for (int64_t r = 0; r < 2; ++r) {
          snake_window(xr.row(bi * in_channels + 2 * q + r), frames, t_first, width, a[2 * q + r], inv[2 * q + r],
                       s_rows.data() + r * span, scratch.data());
        }
        uint32_t* row = s_vnni.data() + q * ld;
        pack_pair(s_rows.data(), s_rows.data() + span, row, width);
        std::fill(row + width, row + span, 0u);
      }
      float* z = z_buf.data();
      at::native::cpublas::brgemm(z_rows, span, in_channels, in_channels, ld, ld, false, wp,
                                  reinterpret_cast<const at::BFloat16*>(s_vnni.data()), z, true);
      for (int64_t o = 0; o < out_channels; ++o) {
        gather_transposed(z, ld, o, kernel, stride, padding, q0, span_of, b[o], phase.data(), line.data());
        store_floats(line.data(), outp + (bi * out_channels + o) * out_frames + span_of.first, span_of.len);
      }
    }
  });
  return out;
}

at::Tensor pack_conv1d_weight_bf16(const at::Tensor& weight, int64_t stride) {
  return pack_conv1d_weight(weight, stride).to(at::kBFloat16);
}

at::Tensor snake_conv1d_brgemm(const at::Tensor& x, const std::optional<at::Tensor>& alpha, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding, int64_t chunk,
                               const std::optional<at::Tensor>& packed) {
  const bool with_snake = alpha.has_value() && alpha->defined();
  if (with_snake) {
    check_input(x, *alpha, "snake_conv1d_brgemm");
  } else {
    check_x(x, "snake_conv1d_brgemm");
  }
  check_brgemm_input(x, "snake_conv1d_brgemm");
  const int64_t batch = x.size(0), in_channels = x.size(1), frames = x.size(2);
  TORCH_CHECK(weight.dim() == 3 && weight.size(1) == in_channels,
              "snake_conv1d_brgemm: weight must be (C_out, C_in, k) with C_in = ", in_channels, ", got ",
              weight.sizes());
  TORCH_CHECK(stride >= 1 && padding >= 0, "snake_conv1d_brgemm: stride must be >= 1 and padding >= 0");
  TORCH_CHECK(in_channels * stride % 2 == 0, "snake_conv1d_brgemm: needs an even C_in · stride, got ", in_channels,
              " · ", stride);
  const int64_t out_channels = weight.size(0), kernel = weight.size(2);
  TORCH_CHECK(frames + 2 * padding >= kernel, "snake_conv1d_brgemm: ", frames, " frames (padded by ", padding,
              ") are fewer than the kernel's ", kernel);
  const int64_t out_frames = (frames + 2 * padding - kernel) / stride + 1;
  auto out = at::empty({batch, out_channels, out_frames}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const int64_t taps = (kernel + stride - 1) / stride, phase_rows = in_channels * stride, rows = taps * phase_rows;
  const at::Tensor w = packed_weight(packed, weight, {out_channels, taps, in_channels, stride},
                                     [stride](const at::Tensor& v) { return pack_conv1d_weight_bf16(v, stride); },
                                     "snake_conv1d_brgemm", at::kBFloat16);
  const auto* wp = w.data_ptr<at::BFloat16>();
  const std::vector<float> b = bias_values(bias, out_channels);
  const auto [a, inv] = with_snake ? snake_coefficients(*alpha)
                                   : std::pair<std::vector<float>, std::vector<float>>{};
  // Frames per task: the bf16 im2col tile (rows × frames) near 1 MB, as in conv_chunk_frames.
  if (chunk <= 0) chunk = std::clamp<int64_t>((int64_t{1} << 19) / std::max<int64_t>(rows, 1), 64, 512);
  const int64_t chunks = (out_frames + chunk - 1) / chunk;
  const int64_t span = chunk + taps - 1;
  const int64_t cols = chunk;  // full-width GEMMs: an item's results do not depend on its batch
  const int64_t pair_rows = phase_rows / 2;
  const auto xr = rows_of<at::BFloat16>(x);
  auto* outp = out.data_ptr<at::BFloat16>();

  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    const BrgemmScope scope;
    AlignedBuffer<float> line(span * stride), scratch(span * stride), p_buf(phase_rows * span),
        o_buf(out_channels * cols);
    AlignedBuffer<uint32_t> p_vnni(pair_rows * span), i_vnni(taps * pair_rows * cols);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / chunks, t0 = (task % chunks) * chunk;
      const int64_t n = std::min(chunk, out_frames - t0), width = n + taps - 1;
      for (int64_t c = 0; c < in_channels; ++c) {
        float* dst = stride == 1 ? p_buf.data() + c * span : line.data();
        if (with_snake) {
          snake_window(xr.row(bi * in_channels + c), frames, t0 * stride - padding, width * stride, a[c], inv[c], dst,
                       scratch.data());
        } else {
          input_window(xr.row(bi * in_channels + c), frames, t0 * stride - padding, width * stride, dst);
        }
        if (stride > 1) split_phases(line.data(), width, stride, p_buf.data() + c * stride * span, span);
      }
      for (int64_t j = 0; j < pair_rows; ++j) {
        pack_pair(p_buf.data() + 2 * j * span, p_buf.data() + (2 * j + 1) * span, p_vnni.data() + j * span, width);
      }
      for (int64_t m = 0; m < taps; ++m) {
        for (int64_t j = 0; j < pair_rows; ++j) {
          uint32_t* dst = i_vnni.data() + (m * pair_rows + j) * cols;
          std::memcpy(dst, p_vnni.data() + j * span + m, n * sizeof(uint32_t));
          std::fill(dst + n, dst + cols, 0u);
        }
      }
      float* o = o_buf.data();
      for (int64_t oc = 0; oc < out_channels; ++oc) std::fill(o + oc * cols, o + (oc + 1) * cols, b[oc]);
      at::native::cpublas::brgemm(out_channels, cols, rows, rows, cols, cols, true, wp,
                                  reinterpret_cast<const at::BFloat16*>(i_vnni.data()), o, true);
      store_rows(o, cols, outp + bi * out_channels * out_frames + t0, out_frames, out_channels, n);
    }
  });
  return out;
}
