// GELU kernels vs the CPU reference (fp32 and bf16 storage), awkward lengths.
#include <cstdio>

#include "kernels/cpu/gelu.h"
#include "kernels/cuda/gelu.h"
#include "tests/kernels/emu/kernel_test.h"

int main() {
  kt::require_device();
  for (int64_t n : {1, 31, 257, 1000, 5003}) {
    std::vector<float> x = kt::random_vec(n, 1 + n, -6.f, 6.f), dy = kt::random_vec(n, 2 + n);
    std::vector<float> y_ref(n), dx_ref(n);
    scmoe::cpu::gelu_forward(y_ref.data(), x.data(), n);
    scmoe::cpu::gelu_backward(dx_ref.data(), x.data(), dy.data(), n);
    kt::for_each_schedule(2, [&](int) {
      kt::Buf<float> dx_in(x), ddy(dy), y(n), dxo(n);
      scmoe::cuda::gelu_forward(y.get(), dx_in.get(), n, nullptr);
      scmoe::cuda::gelu_backward(dxo.get(), dx_in.get(), ddy.get(), n, nullptr);
      kt::sync();
      kt::expect_close("gelu_forward fp32 n=" + std::to_string(n), y.download(), y_ref, 1e-5, 1e-6);
      kt::expect_close("gelu_backward fp32 n=" + std::to_string(n), dxo.download(), dx_ref, 1e-5, 1e-6);
    });
    // bf16 storage: inputs rounded to bf16 first, so the reference sees the same inputs; the
    // output's rounding to bf16 (8 bits of mantissa) bounds the error at 2^-8 relative.
    std::vector<float> xb = kt::to_floats(kt::to_bf16(x)), dyb = kt::to_floats(kt::to_bf16(dy));
    scmoe::cpu::gelu_forward(y_ref.data(), xb.data(), n);
    scmoe::cpu::gelu_backward(dx_ref.data(), xb.data(), dyb.data(), n);
    kt::Buf<kt::bf16> bx(kt::to_bf16(x)), bdy(kt::to_bf16(dy)), by(n), bdx(n);
    scmoe::cuda::gelu_forward(by.get(), bx.get(), n, nullptr);
    scmoe::cuda::gelu_backward(bdx.get(), bx.get(), bdy.get(), n, nullptr);
    kt::sync();
    kt::expect_close("gelu_forward bf16 n=" + std::to_string(n), by.download(), y_ref, 1.0 / 128, 1e-3);
    kt::expect_close("gelu_backward bf16 n=" + std::to_string(n), bdx.download(), dx_ref, 1.0 / 128, 1e-3);
  }
  TEST_MAIN_END();
}
