#include "common.h"
#include "defaults.h"
#include "ops.h"

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
at::Tensor pack_conv1d_weight(const at::Tensor& weight, int64_t stride) {
  TORCH_CHECK(weight.dim() == 3 && stride >= 1, "pack_conv1d_weight: expected a (C_out, C_in, k) weight and stride >= 1");
  const int64_t out_channels = weight.size(0), in_channels = weight.size(1), kernel = weight.size(2);
  const int64_t taps = (kernel + stride - 1) / stride;
  return at::constant_pad_nd(weight.detach().to(at::kFloat), {0, taps * stride - kernel})
      .view({out_channels, in_channels, taps, stride})
      .permute({0, 2, 1, 3})
      .contiguous();
}

at::Tensor pack_conv_transpose1d_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 3, "pack_conv_transpose1d_weight: expected a (C_in, C_out, k) weight");
  return weight.detach().to(at::kFloat).contiguous();
}

at::Tensor pack_conv_transpose1d_weight_rows(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 3, "pack_conv_transpose1d_weight_rows: expected a (C_in, C_out, k) weight, got ",
              weight.sizes());
  return weight.detach().to(at::kFloat).permute({1, 2, 0}).contiguous();
}

at::Tensor snake_conv1d_gemm(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding, int64_t chunk,
                             const std::optional<at::Tensor>& packed, Gemm engine) {
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
  const at::Tensor w = packed_weight(packed, weight, {out_channels, taps, in_channels, stride},
                                     [stride](const at::Tensor& v) { return pack_conv1d_weight(v, stride); },
                                     "snake_conv1d");
  const float* wp = w.data_ptr<float>();
  const std::vector<float> b = bias_values(bias, out_channels);
  const auto [a, inv] = snake_coefficients(alpha);
  if (chunk <= 0) chunk = conv_chunk_frames(rows);
  const int64_t chunks = (out_frames + chunk - 1) / chunk;
  const int64_t span = chunk + taps - 1;  // P row length
  const int64_t cols = chunk;             // full-width GEMMs, as in residual_unit_gemm (codes equal alone)

  for_each_task(x, out, "snake_conv1d", batch * chunks, [&](const auto& xr, auto* outp, int64_t begin, int64_t end) {
    using scalar_t = std::remove_pointer_t<decltype(outp)>;
    constexpr bool kFloatOut = std::is_same_v<scalar_t, float>;
    std::vector<float> line(span * stride), scratch(span * stride), p_buf(phase_rows * span), i_buf(rows * cols),
        o_buf(out_channels * cols);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / chunks, t0 = (task % chunks) * chunk;
      const int64_t n = std::min(chunk, out_frames - t0), width = n + taps - 1;
      for (int64_t c = 0; c < in_channels; ++c) {
        snake_window(xr.row(bi * in_channels + c), frames, t0 * stride - padding, width * stride, a[c], inv[c],
                     stride == 1 ? p_buf.data() + c * span : line.data(), scratch.data());
        if (stride > 1) split_phases(line.data(), width, stride, p_buf.data() + c * stride * span, span);
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
      gemm_rm(engine, out_channels, cols, rows, wp, rows, false, im, cols, 1.0f, o, ldo);
      if (!direct) store_rows(o, ldo, outp + bi * out_channels * out_frames + t0, out_frames, out_channels, n);
    }
  });
  return out;
}

// y = conv_transpose1d(snake(x), W (C_in, C_out, k), b, stride s, padding p, output_padding): input frame t
// adds W[:, o, k]·snake(x)[:, t] to output frame t·s + k - p. Per task (a chunk of output frames):
//   S = snake(x) over the input frames that reach the chunk        (C_in × width)
//   Z = Wᵀ · S, W viewed as (C_in, C_out·k) as it is stored       (C_out·k × width: one GEMM, no repacking)
//   y[o, f] = b[o] + Σ_{k ≡ f + p (mod s)} Z[(o, k), (f + p - k)/s]  (each output gathers ⌈k/s⌉ rows)
// Repacking W per phase instead cost more than the convolution for 1024 × 512 × 16 weights.
at::Tensor snake_conv_transpose1d_gemm(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                       int64_t output_padding, int64_t chunk, const std::optional<at::Tensor>& packed,
                                       Gemm engine) {
  const at::Tensor x = unit_stride_time(x_in);
  check_conv_args(x, alpha, weight, weight.size(0), stride, padding, "snake_conv_transpose1d");
  const int64_t batch = x.size(0), in_channels = x.size(1), frames = x.size(2);
  const int64_t out_channels = weight.size(1), kernel = weight.size(2);
  auto out = transposed_conv_output(x, out_channels, kernel, stride, padding, output_padding, "snake_conv_transpose1d");
  if (out.numel() == 0) return out;
  const int64_t out_frames = out.size(2);
  const std::vector<float> b = bias_values(bias, out_channels);
  // MKL reads W as stored (C_in, C_out·k), transposed; oneDNN reads Wᵀ (C_out·k, C_in).
  const bool rows_first = engine == Gemm::onednn;
  const at::Tensor wf = rows_first
      ? packed_weight(packed, weight, {out_channels, kernel, in_channels}, pack_conv_transpose1d_weight_rows,
                      "snake_conv_transpose1d")
      : packed_weight(packed, weight, {in_channels, out_channels, kernel}, pack_conv_transpose1d_weight,
                      "snake_conv_transpose1d");
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

  for_each_task(x, out, "snake_conv_transpose1d", batch * chunks,
                [&](const auto& xr, auto* outp, int64_t begin, int64_t end) {
    using scalar_t = std::remove_pointer_t<decltype(outp)>;
    constexpr bool kFloatOut = std::is_same_v<scalar_t, float>;
    std::vector<float> s_buf(in_channels * span), scratch(span), z_buf(z_rows * span), phase(chunk);
    std::vector<float> line(kFloatOut ? 0 : chunk * stride);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / chunks, q0 = (task % chunks) * chunk;
      const int64_t n = std::min(chunk, steps - q0);
      const TransposedTask span_of = transposed_task(q0, n, stride, padding, kernel, out_frames);
      const int64_t first = span_of.first, len = span_of.len, t_first = span_of.t_first, width = span_of.width;
      for (int64_t c = 0; c < in_channels; ++c) {
        snake_window(xr.row(bi * in_channels + c), frames, t_first, width, a[c], inv[c], s_buf.data() + c * width,
                     scratch.data());
      }
      float* z = z_buf.data();
      gemm_rm(engine, z_rows, width, in_channels, wp, rows_first ? in_channels : z_rows, !rows_first, s_buf.data(), width, 0.0f, z, width);
      for (int64_t o = 0; o < out_channels; ++o) {
        scalar_t* yrow = outp + (bi * out_channels + o) * out_frames + first;
        float* dst;
        if constexpr (kFloatOut) {
          dst = yrow;
        } else {
          dst = line.data();
        }
        gather_transposed(z, width, o, kernel, stride, padding, q0, span_of, b[o], phase.data(), dst);
        if constexpr (!kFloatOut) store_floats(line.data(), yrow, len);
      }
    }
  });
  return out;
}

at::Tensor snake_conv1d(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding) {
  if (x.scalar_type() == weight.scalar_type() && weight.dim() == 3 && weight.size(1) == x.size(1) &&
      x.size(1) <= kConvGemmMaxInChannels) {
    return snake_conv1d_gemm(x, alpha, weight, bias, stride, padding, 0, std::nullopt, Gemm::mkl);
  }
  return at::conv1d(snake(x, alpha), weight, bias, {stride}, {padding});
}

at::Tensor snake_conv_transpose1d(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                  int64_t output_padding) {
  if (x.scalar_type() == weight.scalar_type() && weight.dim() == 3 && weight.size(0) == x.size(1)) {
    return snake_conv_transpose1d_gemm(x, alpha, weight, bias, stride, padding, output_padding, 0, std::nullopt,
                                       Gemm::mkl);
  }
  return at::conv_transpose1d(snake(x, alpha), weight, bias, {stride}, {padding}, {output_padding});
}
