// ScMoE combine-coefficient kernels (cg1, cg2) vs the CPU reference (kernels/cpu/gates.h) on awkward
// sizes, logits far into both tails of the sigmoid included; fp32 and bf16 storage.
#include "kernels/cpu/gates.h"

#include <cstdio>
#include <string>
#include <type_traits>

#include "kernels/cuda/gates.h"
#include "tests/kernels/emu/kernel_test.h"

namespace {
using F = std::vector<float>;
namespace cu = scmoe::cuda;
namespace cpu = scmoe::cpu;

F rounded(const F& v) { return kt::to_floats(kt::to_bf16(v)); }

// Logits in [-8, 8], with a few at +-40 and +-100 (sigmoid saturates; the small side is denormal).
F logits(size_t n, uint64_t seed) {
  F z = kt::random_vec(n, seed, -8.f, 8.f);
  const float tails[] = {40.f, -40.f, 100.f, -100.f};
  for (size_t i = 0; i < n; i += 7) z[i] = tails[(i / 7) % 4];
  return z;
}

struct Ref {
  F out1, coef, dse1, dz1, out2, alpha, dse2, dmoe, dz2;
};
Ref reference(const F& z1, const F& z2, const F& se, const F& moe, const F& dout, int N, int C) {
  const size_t NC = (size_t)N * C;
  Ref r{F(NC), F(N), F(NC), F(N), F(NC), F(2 * N), F(NC), F(NC), F(2 * N)};
  cpu::cg1_forward(r.out1.data(), r.coef.data(), z1.data(), se.data(), N, C);
  cpu::cg1_backward(r.dse1.data(), r.dz1.data(), dout.data(), r.coef.data(), se.data(), N, C);
  cpu::cg2_forward(r.out2.data(), r.alpha.data(), z2.data(), se.data(), moe.data(), N, C);
  cpu::cg2_backward(r.dse2.data(), r.dmoe.data(), r.dz2.data(), dout.data(), r.alpha.data(), se.data(),
                    moe.data(), N, C);
  return r;
}

template <class T>
Ref device(const F& z1, const F& z2, const F& se, const F& moe, const F& dout, int N, int C) {
  auto up = [](const F& v) {
    if constexpr (std::is_same_v<T, float>)
      return v;
    else
      return kt::to_bf16(v);
  };
  const size_t NC = (size_t)N * C;
  kt::Buf<T> dz1(up(z1)), dz2(up(z2)), dse(up(se)), dmoe(up(moe)), ddout(up(dout)), out1(NC), dse1(NC),
      gz1(N), out2(NC), dse2(NC), dmoe2(NC), gz2(2 * N);
  kt::Buf<float> coef(N), alpha(2 * N);
  cu::cg1_forward(out1.get(), coef.get(), dz1.get(), dse.get(), N, C, nullptr);
  cu::cg1_backward(dse1.get(), gz1.get(), ddout.get(), coef.get(), dse.get(), N, C, nullptr);
  cu::cg2_forward(out2.get(), alpha.get(), dz2.get(), dse.get(), dmoe.get(), N, C, nullptr);
  cu::cg2_backward(dse2.get(), dmoe2.get(), gz2.get(), ddout.get(), alpha.get(), dse.get(), dmoe.get(), N, C,
                   nullptr);
  kt::sync();
  return {kt::to_floats(out1.download()), coef.download(),
          kt::to_floats(dse1.download()), kt::to_floats(gz1.download()),
          kt::to_floats(out2.download()), alpha.download(),
          kt::to_floats(dse2.download()), kt::to_floats(dmoe2.download()),
          kt::to_floats(gz2.download())};
}

// rel: elementwise products (a few ulps of fp32 sigmoid, or the bf16 output rounding); dz: fp32 dot
// of C terms against the CPU's double one, so an absolute slack that grows with C.
void compare(const std::string& t, const Ref& g, const Ref& r, double rel, int C) {
  const double dzabs = 1e-6 + 1e-7 * C;
  kt::expect_close("cg1_forward out " + t, g.out1, r.out1, rel, 1e-7);
  kt::expect_close("cg1_forward coef " + t, g.coef, r.coef, 2e-6, 1e-30);
  kt::expect_close("cg1_backward dse " + t, g.dse1, r.dse1, rel, 1e-7);
  kt::expect_close("cg1_backward dz " + t, g.dz1, r.dz1, std::max(rel, 1e-5), dzabs);
  kt::expect_close("cg2_forward out " + t, g.out2, r.out2, rel, 1e-6);
  kt::expect_close("cg2_forward alpha " + t, g.alpha, r.alpha, 2e-6, 1e-30);
  kt::expect_close("cg2_backward dse " + t, g.dse2, r.dse2, rel, 1e-7);
  kt::expect_close("cg2_backward dmoe " + t, g.dmoe, r.dmoe, rel, 1e-7);
  kt::expect_close("cg2_backward dz " + t, g.dz2, r.dz2, std::max(rel, 1e-5), dzabs);
}

void test_case(int N, int C) {
  const std::string t = "N=" + std::to_string(N) + " C=" + std::to_string(C);
  const size_t NC = (size_t)N * C;
  const uint64_t s = 31 * N + C;
  const F z1 = logits(N, s), z2 = logits(2 * N, s + 1), se = kt::random_vec(NC, s + 2, -2.f, 2.f),
          moe = kt::random_vec(NC, s + 3, -2.f, 2.f), dout = kt::random_vec(NC, s + 4);
  const Ref ref = reference(z1, z2, se, moe, dout, N, C);
  kt::for_each_schedule(
      3, [&](int) { compare("fp32 " + t, device<float>(z1, z2, se, moe, dout, N, C), ref, 2e-6, C); });
  // bf16 storage: the reference runs on the rounded inputs; bf16 outputs within 2^-9 relative
  // (tolerance 2^-8), coefficients stay fp32.
  const F z1b = rounded(z1), z2b = rounded(z2), seb = rounded(se), moeb = rounded(moe), doutb = rounded(dout);
  compare("bf16 " + t, device<kt::bf16>(z1b, z2b, seb, moeb, doutb, N, C),
          reference(z1b, z2b, seb, moeb, doutb, N, C), 1.0 / 256, C);
}
}  // namespace

int main() {
  kt::require_device();
  test_case(1, 1);
  test_case(37, 33);
  test_case(130, 100);  // several blocks of 8 rows, 4 columns per lane
  test_case(9, 300);
  TEST_MAIN_END();
}
