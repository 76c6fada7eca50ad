// The kernels' entry points, one declaration each: snake.cpp, residual_unit.cpp, residual_unit_winograd.cpp,
// conv.cpp and bf16_brgemm.cpp define them, bindings.cpp exposes them to Python.
#pragma once

#include <torch/extension.h>

#include <optional>
#include <string>
#include <tuple>

// The library that runs a GEMM path's fp32 products. MKL's sgemm and oneDNN's brgemm ukernel (ATen's
// at::native::cpublas::brgemm) differ by CPU: single-threaded at the residual units' shapes, MKL
// ran at ~105 GFLOP/s on a Zen 5 EPYC and brgemm at ~240. The measured dispatch times both.
enum class Gemm { mkl, onednn };

at::Tensor snake(const at::Tensor& x_in, const at::Tensor& alpha);

at::Tensor& snake_(at::Tensor& x, const at::Tensor& alpha);

std::tuple<at::Tensor, at::Tensor> add_snake(const at::Tensor& x_in, const at::Tensor& h_in, const at::Tensor& alpha);

at::Tensor residual_unit_gemm(const at::Tensor& x, const at::Tensor& alpha1, const at::Tensor& weight1,
                              const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                              const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int64_t chunk,
                              const std::optional<at::Tensor>& packed1, const std::optional<at::Tensor>& packed2,
                              Gemm engine);

// filter: G·W1 as (α, C, C) fp32 (xcodec_fast/ops/winograd.py); the transforms Bᵀ (α, α), Aᵀ (m, α).
at::Tensor residual_unit_winograd(const at::Tensor& x, const at::Tensor& alpha1, const at::Tensor& weight1,
                                  const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                                  const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int64_t chunk,
                                  const at::Tensor& filter, const std::optional<at::Tensor>& packed2,
                                  const at::Tensor& input_transform, const at::Tensor& output_transform,
                                  Gemm engine);
// bf16 storage on bf16 matrix units (oneDNN brgemm): W1, W2 packed by pack_residual_weight_bf16.
at::Tensor residual_unit_brgemm(const at::Tensor& x, const at::Tensor& alpha1, const at::Tensor& weight1,
                                const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                                const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int64_t chunk,
                                const std::optional<at::Tensor>& packed1, const std::optional<at::Tensor>& packed2);
bool brgemm_bf16_available();
at::Tensor pack_residual_weight_bf16(const at::Tensor& weight);
at::Tensor snake_conv_transpose1d_brgemm(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                         int64_t output_padding, int64_t chunk, const std::optional<at::Tensor>& packed);
at::Tensor pack_conv_transpose1d_weight_bf16(const at::Tensor& weight);
at::Tensor snake_conv1d_brgemm(const at::Tensor& x, const std::optional<at::Tensor>& alpha, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding, int64_t chunk,
                               const std::optional<at::Tensor>& packed);
at::Tensor pack_conv1d_weight_bf16(const at::Tensor& weight, int64_t stride);

// Weights in the layouts the GEMM paths read (float32): the caller packs once per weight and passes
// them in, or the kernel packs per call.
at::Tensor pack_residual_weight(const at::Tensor& weight);
at::Tensor pack_conv1d_weight(const at::Tensor& weight, int64_t stride);
at::Tensor pack_conv_transpose1d_weight(const at::Tensor& weight);
// Wᵀ as (C_out, k, C_in): the oneDNN GEMM engine's layout.
at::Tensor pack_conv_transpose1d_weight_rows(const at::Tensor& weight);

at::Tensor residual_unit(const at::Tensor& x_in, const at::Tensor& alpha1, const at::Tensor& weight1,
                         const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                         const at::Tensor& weight2, const std::optional<at::Tensor>& bias2);

at::Tensor residual_unit_onednn(const at::Tensor& x_in, const at::Tensor& alpha1, const at::Tensor& weight1,
                                const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                                const at::Tensor& weight2, const std::optional<at::Tensor>& bias2);

at::Tensor snake_conv1d_gemm(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding, int64_t chunk,
                             const std::optional<at::Tensor>& packed, Gemm engine);

at::Tensor snake_conv_transpose1d_gemm(const at::Tensor& x_in, const at::Tensor& alpha, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                       int64_t output_padding, int64_t chunk, const std::optional<at::Tensor>& packed,
                                       Gemm engine);

at::Tensor snake_conv1d(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding);

at::Tensor snake_conv_transpose1d(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                  int64_t output_padding);

std::string build_info();
