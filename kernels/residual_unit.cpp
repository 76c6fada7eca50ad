#include "common.h"
#include "defaults.h"
#include "ops.h"

// Residual unit as chunked implicit GEMM
//
// oneDNN's 1-D convolution is far from the matmul rate at small channel counts. Here T is split into
// chunks; each (batch, chunk) task, single-threaded inside at::parallel_for, computes
//   S = snake(x[:, t0 - 3d : t0 + L + 3d], α1)          (zeros outside [0, T): snake(0) = 0)
//   H = b1 + Σ_k W1[:, :, k] · S[:, k·d : k·d + L]      (7 GEMMs on shifted views of S: no im2col copy)
//   H = snake(H, α2);  out = x + b2 + W2 · H            (one more GEMM)
// so every intermediate stays in L2. fp32 results differ from eager in summation order only (within
// ~1e-6 of the output scale); reduced-precision storage is computed in fp32 and rounded once.

// Frames per task: the im2col tile (7·C × L floats) stays under ~1 MB, within this Xeon's 2 MB L2.
// Measured best (2 threads, ms at 64×160000 / 128×80000 / 256×20000): L=256-512 / 512 / 128.
int64_t residual_chunk_frames(int64_t channels) {
  return std::clamp<int64_t>((int64_t{1} << 15) / std::max<int64_t>(channels, 1), 128, 512);
}

at::Tensor pack_residual_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 3, "pack_residual_weight: expected a (C_out, C_in, k) weight, got ", weight.sizes());
  return weight.detach().to(at::kFloat).permute({0, 2, 1}).contiguous();
}

at::Tensor residual_unit_gemm(const at::Tensor& x, const at::Tensor& alpha1, const at::Tensor& weight1,
                              const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                              const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int64_t chunk,
                              const std::optional<at::Tensor>& packed1, const std::optional<at::Tensor>& packed2,
                              Gemm engine) {
  check_input(x, alpha1, "residual_unit");
  TORCH_CHECK(x.stride(2) == 1, "residual_unit: x needs a unit-stride time axis");
  const int64_t batch = x.size(0), channels = x.size(1), frames = x.size(2);
  const int64_t kernel = weight1.size(2);
  const int64_t pad = (kernel - 1) * dilation / 2;
  auto out = at::empty({batch, channels, frames}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto [a1, inv1] = snake_coefficients(alpha1);
  const auto [a2, inv2] = snake_coefficients(alpha2);
  // W1 as (c_out, k · c_in), matching the im2col rows; W2 as (c_out, c_in): packed once by the caller,
  // or here.
  const at::Tensor w1 = packed_weight(packed1, weight1, {channels, kernel, channels}, pack_residual_weight, "residual_unit");
  const at::Tensor w2 = packed_weight(packed2, weight2, {channels, 1, channels}, pack_residual_weight, "residual_unit");
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

  for_each_task(x, out, "residual_unit", batch * chunks, [&](const auto& xr, auto* outp, int64_t begin, int64_t end) {
    using scalar_t = std::remove_pointer_t<decltype(outp)>;
    constexpr bool kFloatOut = std::is_same_v<scalar_t, float>;
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
      gemm_rm(engine, channels, cols, kernel * channels, w1p, kernel * channels, false, im, cols, 1.0f, h, cols);
      // Columns past n keep b1: they only feed output columns that are dropped.
      for (int64_t c = 0; c < channels; ++c) snake_floats(h + c * cols, h + c * cols, scratch.data(), n, a2[c], inv2[c]);
      // out = (x + b2) + W2 · H, written straight into the output for a full fp32 chunk.
      const bool direct = kFloatOut && n == cols;
      float* o = direct ? reinterpret_cast<float*>(outp) + b * channels * frames + t0 : o_buf.data();
      const int64_t ldo = direct ? frames : cols;
      // x + b2 from S's source rows: reread x (still in cache from the first pass).
      for (int64_t c = 0; c < channels; ++c) {
        shortcut_plus_bias(xr.row(b * channels + c) + t0, b2[c], o + c * ldo, n, direct ? n : cols);
      }
      gemm_rm(engine, channels, cols, channels, w2p, channels, false, h, cols, 1.0f, o, ldo);
      if (!direct) store_rows(o, ldo, outp + b * channels * frames + t0, frames, channels, n);
    }
  });
  return out;
}

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
    return residual_unit_gemm(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2, 0, std::nullopt,
                              std::nullopt, Gemm::mkl);
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
