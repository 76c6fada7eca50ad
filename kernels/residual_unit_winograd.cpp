#include "common.h"
#include "ops.h"

// Residual unit with the k-tap dilated conv as Winograd F(m, k) (xcodec_fast/ops/winograd.py
// derives the transforms and documents their error).
//
// Dilation d splits time into d phases; within a phase a tile is m consecutive outputs, so with
// time t = q·m·d + i·d + res (block q, output i < m, phase res < d) tile (q, res) reads the
// α = m + k - 1 inputs S[(q·m + p)·d + res], p < α. Per (batch, chunk) task, single-threaded:
//   S  = snake(x) over the chunk and its halo, split by phase of the m-stride,
//        R[s][j·d + res] = S[(j·m + s)·d + res], so that with tiles ordered t = q·d + res every
//        tile's p-th input is R[p % m][t + (p / m)·d]: contiguous over all tiles of the chunk
//   V[a] = Σ_p Bᵀ[a][p] · input p            (vectors over tiles)
//   M[a] = U[a] · V[a]                       (α channel GEMMs, U = G·W1 packed once)
//   H  = b1 + Σ_a Aᵀ[i][a] · M[a]            (in the order (i, t): a permutation of time)
//   out = x + b2 + W2 · snake(H, α2)         (Snake and the 1x1 conv do not care about time order)
// Every GEMM is as wide as a full chunk, the last chunk padded with zero inputs, so an item's
// results do not depend on what it is batched with (frames past its length are zero either way).

namespace {

// Frames per task, rounded up to whole blocks. Measured (2-core Xeon, fp32, ms, F(2,7)/F(4,7)):
// C=512 × 4000: chunk 128: 48/41, 512: 37/28, 1024: 36/27; C=64 × 160000: 512: 58/53, 1024: 60/51.
int64_t winograd_chunk_frames(int64_t channels) {
  return std::clamp<int64_t>((int64_t{1} << 18) / std::max<int64_t>(channels, 1), 512, 1024);
}

// dst[q] (+)= coef · src[q] for q < n.
inline void axpy(float coef, const float* src, float* dst, int64_t n, bool first) {
  const fVec vc(coef);
  int64_t q = 0;
  for (; q + fVec::size() <= n; q += fVec::size()) {
    const fVec v = vc * fVec::loadu(src + q);
    (first ? v : fVec::loadu(dst + q) + v).store(dst + q);
  }
  if (q < n) {
    const int64_t rest = n - q;
    const fVec v = vc * fVec::loadu(src + q, rest);
    (first ? v : fVec::loadu(dst + q, rest) + v).store(dst + q, rest);
  }
}

}  // namespace

at::Tensor residual_unit_winograd(const at::Tensor& x, const at::Tensor& alpha1, const at::Tensor& weight1,
                                  const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                                  const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int64_t chunk,
                                  const at::Tensor& filter, const std::optional<at::Tensor>& packed2,
                                  const at::Tensor& input_transform, const at::Tensor& output_transform,
                                  Gemm engine) {
  check_input(x, alpha1, "residual_unit_winograd");
  TORCH_CHECK(x.stride(2) == 1, "residual_unit_winograd: x needs a unit-stride time axis");
  const int64_t batch = x.size(0), channels = x.size(1), frames = x.size(2);
  TORCH_CHECK(weight1.dim() == 3 && weight1.size(0) == channels && weight1.size(1) == channels &&
                  weight1.size(2) % 2 == 1,
              "residual_unit_winograd: weight1 must be (C, C, k) with odd k for C = ", channels, ", got ",
              weight1.sizes());
  TORCH_CHECK(dilation >= 1, "residual_unit_winograd: dilation must be >= 1, got ", dilation);
  const int64_t kernel = weight1.size(2);
  TORCH_CHECK(output_transform.dim() == 2 && output_transform.scalar_type() == at::kFloat,
              "residual_unit_winograd: the output transform must be a float32 (m, α) matrix");
  const int64_t m = output_transform.size(0), alpha = output_transform.size(1);
  TORCH_CHECK(m >= 1 && alpha == m + kernel - 1, "residual_unit_winograd: output transform ", output_transform.sizes(),
              " does not fit a ", kernel, "-tap filter");
  TORCH_CHECK(input_transform.scalar_type() == at::kFloat && input_transform.sizes() == at::IntArrayRef({alpha, alpha}),
              "residual_unit_winograd: the input transform must be float32 (", alpha, ", ", alpha, "), got ",
              input_transform.sizes());
  TORCH_CHECK(filter.scalar_type() == at::kFloat && filter.is_contiguous() &&
                  filter.sizes() == at::IntArrayRef({alpha, channels, channels}),
              "residual_unit_winograd: the transformed filter must be contiguous float32 (", alpha, ", ", channels,
              ", ", channels, "), got ", filter.scalar_type(), " ", filter.sizes());
  TORCH_CHECK(alpha2.numel() == channels, "residual_unit_winograd: alpha2 needs one value per channel");
  const int64_t pad = (kernel - 1) * dilation / 2;
  auto out = at::empty({batch, channels, frames}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const auto [a1, inv1] = snake_coefficients(alpha1);
  const auto [a2, inv2] = snake_coefficients(alpha2);
  const at::Tensor w2 = packed_weight(packed2, weight2, {channels, 1, channels}, pack_residual_weight,
                                      "residual_unit_winograd");
  const std::vector<float> b1 = bias_values(bias1, channels), b2 = bias_values(bias2, channels);
  const at::Tensor bt_c = input_transform.contiguous(), at_c = output_transform.contiguous();
  const float* bt = bt_c.data_ptr<float>();
  const float* at_m = at_c.data_ptr<float>();
  const float* up = filter.data_ptr<float>();
  const float* w2p = w2.data_ptr<float>();

  const int64_t block = m * dilation;
  if (chunk <= 0) chunk = winograd_chunk_frames(channels);
  const int64_t blocks = (chunk + block - 1) / block;  // per chunk
  chunk = blocks * block;
  const int64_t tiles = blocks * dilation;
  const int64_t phase_len = blocks + (alpha - 1) / m;  // m-blocks of S per chunk, halo included
  const int64_t s_len = phase_len * block;             // S samples read per chunk, halo included
  const int64_t chunks = (frames + chunk - 1) / chunk;

  for_each_task(x, out, "residual_unit_winograd", batch * chunks,
                [&](const auto& xr, auto* outp, int64_t begin, int64_t end) {
    using scalar_t = std::remove_pointer_t<decltype(outp)>;
    std::vector<float> s_row(s_len), scratch(std::max(s_len, chunk)), r_buf(channels * s_len),
        v_buf(alpha * channels * tiles), m_buf(alpha * channels * tiles), h_buf(channels * chunk),
        o_buf(channels * chunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, t0 = (task % chunks) * chunk;
      const int64_t n = std::min(chunk, frames - t0);
      // S split by phase of the m-stride: R[s][j·d + res] = S[(j·m + s)·d + res], zeros outside the signal.
      for (int64_t c = 0; c < channels; ++c) {
        snake_window(xr.row(b * channels + c), frames, t0 - pad, s_len, a1[c], inv1[c], s_row.data(),
                     scratch.data());
        float* rc = r_buf.data() + c * s_len;
        for (int64_t s = 0; s < m; ++s) {
          for (int64_t res = 0; res < dilation; ++res) {
            float* dst = rc + s * phase_len * dilation + res;
            const float* src = s_row.data() + s * dilation + res;
            for (int64_t j = 0; j < phase_len; ++j) dst[j * dilation] = src[j * block];
          }
        }
      }
      // Tile t = q·d + res reads input p at R[p % m][t + (p / m)·d]: V[a][c][t] = Σ_p Bᵀ[a][p] · that.
      for (int64_t c = 0; c < channels; ++c) {
        const float* rc = r_buf.data() + c * s_len;
        for (int64_t a = 0; a < alpha; ++a) {
          float* dst = v_buf.data() + (a * channels + c) * tiles;
          bool first = true;
          for (int64_t p = 0; p < alpha; ++p) {
            const float coef = bt[a * alpha + p];
            if (coef == 0.0f) continue;
            axpy(coef, rc + (p % m) * phase_len * dilation + (p / m) * dilation, dst, tiles, first);
            first = false;
          }
          if (first) std::fill(dst, dst + tiles, 0.0f);
        }
      }
      for (int64_t a = 0; a < alpha; ++a) {
        gemm_rm(engine, channels, tiles, channels, up + a * channels * channels, channels, false,
                v_buf.data() + a * channels * tiles, tiles, 0.0f, m_buf.data() + a * channels * tiles, tiles);
      }
      // H[c][i · tiles + t] = b1 + Σ_a Aᵀ[i][a] · M[a][c][t] (output i of tile t); then snake.
      for (int64_t c = 0; c < channels; ++c) {
        float* hc = h_buf.data() + c * chunk;
        for (int64_t i = 0; i < m; ++i) {
          float* hi = hc + i * tiles;
          std::fill(hi, hi + tiles, b1[c]);
          for (int64_t a = 0; a < alpha; ++a) {
            const float coef = at_m[i * alpha + a];
            if (coef != 0.0f) axpy(coef, m_buf.data() + (a * channels + c) * tiles, hi, tiles, false);
          }
        }
        snake_floats(hc, hc, scratch.data(), chunk, a2[c], inv2[c]);
      }
      gemm_rm(engine, channels, chunk, channels, w2p, channels, false, h_buf.data(), chunk, 0.0f, o_buf.data(), chunk);
      // out[t0 + q·m·d + i·d + res] = x + b2 + O[i · tiles + q·d + res], back in time order.
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* xs = xr.row(b * channels + c) + t0;
        scalar_t* os = outp + (b * channels + c) * frames + t0;
        const float* oc = o_buf.data() + c * chunk;
        const float bias = b2[c];
        // One strided stream per (i, res): times i·d + res + q·m·d read O at i·tiles + res + q·d.
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t res = 0; res < dilation; ++res) {
            const int64_t first = i * dilation + res;
            if (first >= n) break;
            const int64_t count = (n - first + block - 1) / block;
            const float* src = oc + i * tiles + res;
            for (int64_t q = 0; q < count; ++q) {
              const int64_t t = first + q * block;
              os[t] = static_cast<scalar_t>(static_cast<float>(xs[t]) + (bias + src[q * dilation]));
            }
          }
        }
      }
    }
  });
  return out;
}
