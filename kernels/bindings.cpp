// Native CPU kernels for xcodec_fast: the Python module (see xcodec_fast/ops/native.py for build, dispatch and timings).
//
// Snake is `x + (α + 1e-9)⁻¹ · sin(αx)²`. Eager torch makes five passes over memory for it; here
// each (batch, channel) row is processed in L1-sized chunks in one pass. For fp32 every step is
// rounded exactly as eager rounds it (same operation order, no FMA contraction: build with
// -ffp-contract=off, and the same sin as torch.sin: MKL VML in HA mode on x86 builds, otherwise
// ATen's Vectorized::sin), so fp32 results are bit-identical to the eager reference.
// bf16/fp16 are stored reduced and computed in fp32 (one rounding at the end, unlike eager).
// The residual unit at C <= 256, snake + strided conv at C_in <= 256 and snake + transposed conv are
// chunked implicit GEMMs on MKL's or oneDNN's sgemm (not bit-identical to eager, within ~1e-6 of the output scale);
// the other convolutions stay on ATen (oneDNN).
// Built with -fopenmp (build_config.py): at::parallel_for is serial without it.

#include "common.h"
#include "ops.h"

std::string build_info() {
  return std::string("capability=") + XCODEC_CPU_CAPABILITY + ";source=" + XCODEC_STRINGIFY(XCODEC_SOURCE_DIGEST) +
         ";sin=" + (XCODEC_SIN_MKL ? "mkl-vml-ha" : "aten-vec") +
         ";torch=" + std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

namespace {
Gemm engine(bool onednn) { return onednn ? Gemm::onednn : Gemm::mkl; }
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xcodec_fast native CPU kernels";
  m.def("snake", &snake, "snake(x, alpha) in one pass");
  m.def("add_snake", &add_snake, "(x + h, snake(x + h)) in one pass");
  m.def("residual_unit", &residual_unit, "DAC residual unit with fused snakes");
  // The GEMM paths take weights packed once by the caller (pack_*), or pack them per call.
  m.def("residual_unit_gemm", [](const at::Tensor& x, const at::Tensor& alpha1, const at::Tensor& weight1,
                                 const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                                 const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int64_t chunk,
                                 const std::optional<at::Tensor>& packed1, const std::optional<at::Tensor>& packed2,
                                 bool onednn) {
    return residual_unit_gemm(unit_stride_time(x), alpha1, weight1, bias1, dilation, alpha2, weight2, bias2, chunk,
                              packed1, packed2, engine(onednn));
  }, "residual unit as chunked implicit GEMM (chunk <= 0: default; onednn: oneDNN's GEMM, else MKL's)",
        py::arg("x"), py::arg("alpha1"), py::arg("weight1"), py::arg("bias1"), py::arg("dilation"), py::arg("alpha2"),
        py::arg("weight2"), py::arg("bias2"), py::arg("chunk") = 0, py::arg("packed1") = py::none(),
        py::arg("packed2") = py::none(), py::arg("onednn") = false);
  m.def("residual_unit_winograd", [](const at::Tensor& x, const at::Tensor& alpha1, const at::Tensor& weight1,
                                     const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                                     const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int64_t chunk,
                                     const at::Tensor& filter, const std::optional<at::Tensor>& packed2,
                                     const at::Tensor& input_transform, const at::Tensor& output_transform,
                                     bool onednn) {
    return residual_unit_winograd(unit_stride_time(x), alpha1, weight1, bias1, dilation, alpha2, weight2, bias2, chunk,
                                  filter, packed2, input_transform, output_transform, engine(onednn));
  }, "residual unit with its dilated conv as Winograd F(m, k) (chunk <= 0: default; onednn: oneDNN's GEMM)",
        py::arg("x"), py::arg("alpha1"), py::arg("weight1"), py::arg("bias1"), py::arg("dilation"), py::arg("alpha2"),
        py::arg("weight2"), py::arg("bias2"), py::arg("chunk"), py::arg("filter"), py::arg("packed2"),
        py::arg("input_transform"), py::arg("output_transform"), py::arg("onednn") = false);
  m.def("residual_unit_brgemm", [](const at::Tensor& x, const at::Tensor& alpha1, const at::Tensor& weight1,
                                   const std::optional<at::Tensor>& bias1, int64_t dilation, const at::Tensor& alpha2,
                                   const at::Tensor& weight2, const std::optional<at::Tensor>& bias2, int64_t chunk,
                                   const std::optional<at::Tensor>& packed1, const std::optional<at::Tensor>& packed2) {
    return residual_unit_brgemm(unit_stride_time(x), alpha1, weight1, bias1, dilation, alpha2, weight2, bias2, chunk,
                                packed1, packed2);
  }, "bf16 residual unit on bf16 matrix units (oneDNN brgemm; chunk <= 0: default)", py::arg("x"),
        py::arg("alpha1"), py::arg("weight1"), py::arg("bias1"), py::arg("dilation"), py::arg("alpha2"),
        py::arg("weight2"), py::arg("bias2"), py::arg("chunk") = 0, py::arg("packed1") = py::none(),
        py::arg("packed2") = py::none());
  m.def("brgemm_bf16_available", &brgemm_bf16_available, "whether residual_unit_brgemm can run here");
  m.def("pack_residual_weight_bf16", &pack_residual_weight_bf16,
        "a residual unit conv's weight as residual_unit_brgemm reads it");
  m.def("snake_conv_transpose1d_brgemm", [](const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                            int64_t output_padding, int64_t chunk,
                                            const std::optional<at::Tensor>& packed) {
    return snake_conv_transpose1d_brgemm(unit_stride_time(x), alpha, weight, bias, stride, padding, output_padding,
                                         chunk, packed);
  }, "bf16 snake_conv_transpose1d on bf16 matrix units (oneDNN brgemm; chunk <= 0: default)", py::arg("x"),
        py::arg("alpha"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
        py::arg("output_padding"), py::arg("chunk") = 0, py::arg("packed") = py::none());
  m.def("pack_conv_transpose1d_weight_bf16", &pack_conv_transpose1d_weight_bf16,
        "a transposed conv's weight as snake_conv_transpose1d_brgemm reads it");
  m.def("snake_conv1d_brgemm", [](const at::Tensor& x, const std::optional<at::Tensor>& alpha, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding, int64_t chunk,
                                  const std::optional<at::Tensor>& packed) {
    return snake_conv1d_brgemm(unit_stride_time(x), alpha, weight, bias, stride, padding, chunk, packed);
  }, "bf16 snake_conv1d on bf16 matrix units (oneDNN brgemm; alpha None: plain conv1d; chunk <= 0: default)", py::arg("x"), py::arg("alpha"),
        py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"), py::arg("chunk") = 0,
        py::arg("packed") = py::none());
  m.def("pack_conv1d_weight_bf16", &pack_conv1d_weight_bf16, "a strided conv's weight as snake_conv1d_brgemm reads it");
  m.def("pack_residual_weight", &pack_residual_weight, "a residual unit conv's weight as residual_unit_gemm reads it");
  m.def("pack_conv1d_weight", &pack_conv1d_weight, "a strided conv's weight as snake_conv1d_gemm reads it");
  m.def("pack_conv_transpose1d_weight", &pack_conv_transpose1d_weight,
        "a transposed conv's weight as snake_conv_transpose1d_gemm reads it");
  m.def("pack_conv_transpose1d_weight_rows", &pack_conv_transpose1d_weight_rows,
        "a transposed conv's weight as snake_conv_transpose1d_gemm(onednn=True) reads it");
  m.def("residual_unit_onednn", &residual_unit_onednn, "residual unit as snake + oneDNN convolutions");
  m.def("snake_conv1d", &snake_conv1d, "conv1d(snake(x))");
  m.def("snake_conv_transpose1d", &snake_conv_transpose1d, "conv_transpose1d(snake(x))");
  m.def("snake_conv1d_gemm", [](const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding, int64_t chunk,
                                const std::optional<at::Tensor>& packed, bool onednn) {
    return snake_conv1d_gemm(x, alpha, weight, bias, stride, padding, chunk, packed, engine(onednn));
  }, "snake_conv1d as chunked implicit GEMM (chunk <= 0: default; onednn: oneDNN's GEMM, else MKL's)",
        py::arg("x"), py::arg("alpha"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
        py::arg("chunk") = 0, py::arg("packed") = py::none(), py::arg("onednn") = false);
  m.def("snake_conv_transpose1d_gemm", [](const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding,
                                          int64_t output_padding, int64_t chunk, const std::optional<at::Tensor>& packed,
                                          bool onednn) {
    return snake_conv_transpose1d_gemm(x, alpha, weight, bias, stride, padding, output_padding, chunk, packed,
                                       engine(onednn));
  }, "snake_conv_transpose1d as chunked implicit GEMM (chunk <= 0: default; onednn: oneDNN's GEMM reading "
     "pack_conv_transpose1d_weight_rows, else MKL's reading pack_conv_transpose1d_weight)", py::arg("x"),
        py::arg("alpha"), py::arg("weight"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
        py::arg("output_padding"), py::arg("chunk") = 0, py::arg("packed") = py::none(), py::arg("onednn") = false);
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
