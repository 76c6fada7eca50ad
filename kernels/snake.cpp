// Snake and add + Snake in one pass per (batch, channel) row (see common.h for the row helpers).
#include "common.h"
#include "ops.h"

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
