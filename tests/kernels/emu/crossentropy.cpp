// Fused softmax cross-entropy vs the CPU reference (float64 on the same, T-rounded, logits), fp32 and
// bf16 storage; V awkward (1, 65, 1001: scalar path, 1001 with 16 warps so the block merge's barrier
// matters; 1024: 128-bit packs), N including 1; a row with huge logits (stability), want_grad off, an
// invalid target, and the deterministic device mean.
#include "kernels/cpu/crossentropy.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/crossentropy.h"
#include "tests/kernels/emu/kernel_test.h"

namespace {

using kt::bf16;
using Vd = std::vector<double>;


template <class T>
void check(int N, int V, float& mean_first, int sched) {
  const bool f32 = std::is_same<T, float>::value;
  const std::string tag =
      std::string(f32 ? "fp32" : "bf16") + " N=" + std::to_string(N) + " V=" + std::to_string(V);
  const size_t n = size_t(N) * V;
  std::vector<float> logits = kt::random_vec(n, 31 * N + V, -8.f, 8.f);
  for (int v = 0; v < V; v++) logits[v] += 1000.f;  // row 0: large logits, lse must not overflow
  logits = kt::to_floats(kt::store_as<T>(logits));      // the reference sees what the kernel sees
  std::vector<int32_t> targets(N);
  for (int i = 0; i < N; i++) targets[i] = int32_t((i * 7919 + 3) % V);
  const float grad_scale = 1.f / float(N);

  Vd ref(logits.begin(), logits.end()), loss_ref(N);
  const double mean_ref = scmoe::cpu::crossentropy_forward_backward(
      ref.data(), loss_ref.data(), targets.data(), N, V, double(grad_scale), true);

  kt::Buf<T> lg(kt::store_as<T>(logits)), lg2(kt::store_as<T>(logits));
  kt::Buf<float> losses(N), losses2(N), mean(1);
  kt::Buf<int32_t> tg(targets);
  scmoe::cuda::crossentropy_forward_backward(lg.get(), losses.get(), tg.get(), N, V, grad_scale, true,
                                             nullptr);
  scmoe::cuda::crossentropy_forward_backward(lg2.get(), losses2.get(), tg.get(), N, V, grad_scale, false,
                                             nullptr);
  scmoe::cuda::crossentropy_mean_loss(mean.get(), losses.get(), N, nullptr);
  kt::sync();
  // Losses are fp32 in both storage modes: fp32 rounding of lse (~|logit|) and of the row sum.
  kt::expect_close(tag + " losses", losses.download(), loss_ref, 1e-5, 1e-5);
  kt::expect_equal(tag + " losses without grad", losses2.download(), losses.download());
  kt::expect_equal(tag + " logits untouched without grad", kt::to_floats(lg2.download()), logits);
  // dlogits: fp32 exp of (x - lse) with lse's fp32 error (~1e-6 at |lse| ~ 1000, relative error
  // ~1e-6 of each probability) -> 2e-5 relative plus 2e-6 * grad_scale absolute (the p - 1 at the
  // target cancels); bf16 storage adds its 2^-8 relative rounding (2^-7 allowed).
  kt::expect_close(tag + " dlogits", lg.download(), ref, f32 ? 2e-5 : 1.0 / 128, 2e-6 * grad_scale);
  const std::vector<float> m = mean.download();
  kt::expect_close(tag + " mean loss", m, Vd{mean_ref}, 1e-5, 1e-6);
  if (sched == 0)
    mean_first = m[0];
  else
    kt::expect_equal(tag + " mean loss bit-identical across runs", m, std::vector<float>{mean_first});
}

}  // namespace

int main() {
  kt::require_device();
  struct Shape {
    int N, V;
  };
  std::vector<Shape> shapes = {{1, 1}, {3, 1}, {1, 65}, {7, 65}, {5, 1001}, {3, 1024}, {1, 1001}};
  if (!kt::kEmulated) shapes.push_back({300, 50257}), shapes.push_back({64, 50304});
  for (const Shape& s : shapes) {
    float m32 = 0, m16 = 0;
    kt::for_each_schedule(3, [&](int sched) {
      check<float>(s.N, s.V, m32, sched);
      check<bf16>(s.N, s.V, m16, sched);
    });
  }
  // Many rows through the mean (several per thread of its block).
  {
    const int N = 1000;
    std::vector<float> l = kt::random_vec(N, 5, 0.f, 10.f);
    double s = 0;
    for (float x : l) s += x;
    kt::Buf<float> dl(l), mean(1);
    scmoe::cuda::crossentropy_mean_loss(mean.get(), dl.get(), N, nullptr);
    kt::sync();
    kt::expect_close("mean loss N=1000", mean.download(), Vd{s / N}, 1e-6, 0);
  }
  // An out-of-range target gives a NaN loss rather than reading outside the row.
  {
    std::vector<float> lg = kt::random_vec(2 * 33, 8);
    kt::Buf<float> dlg(lg), losses(2);
    kt::Buf<int32_t> tg(std::vector<int32_t>{33, 4});
    scmoe::cuda::crossentropy_forward_backward(dlg.get(), losses.get(), tg.get(), 2, 33, 1.f, true, nullptr);
    kt::sync();
    std::vector<float> got = losses.download();
    CHECK(std::isnan(got[0]));
    CHECK(std::isfinite(got[1]));
  }
  TEST_MAIN_END();
}
