// Embedding kernels vs the CPU reference, fp32 and bf16 storage (fp32 gradients), awkward shapes:
// one position, odd C (scalar path), C a multiple of the pack width, a vocabulary larger than the
// scan block (several tokens per scan thread), skewed token ids (big buckets, unused tokens). The
// backward must add to what the gradient buffers held and be bit-identical across schedules (the
// emulated atomics scatter positions in a different order under each one).
#include "kernels/cpu/encoder.h"

#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "core/rng.h"
#include "kernels/cuda/encoder.h"
#include "tests/kernels/emu/kernel_test.h"

namespace {

using kt::bf16;


struct Shape {
  int B, Tn, C, V;
};

template <class T>
void check(const Shape& s, std::vector<float>& dwte_first, std::vector<float>& dwpe_first, int sched) {
  const auto [B, Tn, C, V] = s;
  const std::string tag = std::string(std::is_same<T, float>::value ? "fp32" : "bf16") +
                          " B=" + std::to_string(B) + " T=" + std::to_string(Tn) + " C=" + std::to_string(C) +
                          " V=" + std::to_string(V);
  const int N = B * Tn;
  const uint64_t seed = 131 * N + 7 * C + V;
  // Skewed ids: half the positions use the first few tokens, so buckets are large; others stay empty.
  scmoe::Rng r(seed);
  std::vector<int32_t> idx(N);
  for (auto& t : idx) t = int32_t(r.uniform() < 0.5 ? r.uniform() * std::min(V, 3) : r.uniform() * V) % V;
  auto round = [](const std::vector<float>& v) { return kt::to_floats(kt::store_as<T>(v)); };
  std::vector<float> wte = round(kt::random_vec(size_t(V) * C, seed + 1));
  std::vector<float> wpe = round(kt::random_vec(size_t(Tn) * C, seed + 2));
  std::vector<float> dout = round(kt::random_vec(size_t(N) * C, seed + 3));
  std::vector<float> dwte0 = kt::random_vec(size_t(V) * C, seed + 4),
                     dwpe0 = kt::random_vec(size_t(Tn) * C, seed + 5);

  std::vector<float> out_ref(size_t(N) * C), dwte_ref = dwte0, dwpe_ref = dwpe0;
  scmoe::cpu::encoder_forward(out_ref.data(), idx.data(), wte.data(), wpe.data(), B, Tn, C);
  scmoe::cpu::encoder_backward(dwte_ref.data(), dwpe_ref.data(), dout.data(), idx.data(), B, Tn, C);

  kt::Buf<int32_t> didx(idx);
  kt::Buf<T> dwt(kt::store_as<T>(wte)), dwp(kt::store_as<T>(wpe)), ddout(kt::store_as<T>(dout)), out(size_t(N) * C);
  kt::Buf<float> gte(dwte0), gpe(dwpe0);
  const size_t ws_bytes = scmoe::cuda::encoder_backward_workspace_bytes(B, Tn, V);
  kt::Buf<int> ws(ws_bytes / sizeof(int));
  scmoe::cuda::encoder_forward(out.get(), didx.get(), dwt.get(), dwp.get(), B, Tn, C, nullptr);
  scmoe::cuda::encoder_backward(gte.get(), gpe.get(), ddout.get(), didx.get(), B, Tn, C, V, ws.get(),
                                ws_bytes, nullptr);
  kt::sync();
  // Forward: one fp32 add of T-exact values rounded once to T, as the float reference then rounding.
  kt::expect_equal(tag + " forward", kt::to_floats(out.download()), round(out_ref));
  // Backward: the same fp32 additions in the same (position) order as the reference, but summed from
  // zero and then added to the old value, where the reference adds into the old value directly:
  // relative 1e-5 plus 1e-6 per summed row absolute (dout is in [-1, 1)).
  std::vector<float> te = gte.download(), pe = gpe.download();
  kt::expect_close(tag + " dwte", te, dwte_ref, 1e-5, 1e-6 * N);
  kt::expect_close(tag + " dwpe", pe, dwpe_ref, 1e-5, 1e-6 * B);
  if (sched == 0) {
    dwte_first = te, dwpe_first = pe;
  } else {
    kt::expect_equal(tag + " dwte bit-identical across runs", te, dwte_first);
    kt::expect_equal(tag + " dwpe bit-identical across runs", pe, dwpe_first);
  }
}

}  // namespace

int main() {
  kt::require_device();
  // (1,1,1,1): one position, one token. (3,37,70,50): odd-ish C (scalar path in both types), big
  // buckets. (2,19,64,7): 128-bit packs, 7 tokens for 38 positions. (2,45,40,3000): V > 1024 so each
  // scan thread owns several tokens, most of them unused.
  std::vector<Shape> shapes = {{1, 1, 1, 1}, {3, 37, 70, 50}, {2, 19, 64, 7}, {2, 45, 40, 3000}};
  if (!kt::kEmulated) shapes.push_back({8, 1024, 768, 50257});
  for (const Shape& s : shapes) {
    std::vector<float> te32, pe32, te16, pe16;
    kt::for_each_schedule(3, [&](int sched) {
      check<float>(s, te32, pe32, sched);
      check<bf16>(s, te16, pe16, sched);
    });
  }
  {
    kt::Buf<float> g(4), d(4);
    kt::Buf<int32_t> idx(std::vector<int32_t>{0, 1});
    kt::Buf<int> ws(1);
    CHECK_THROWS_WITH(scmoe::cuda::encoder_backward(g.get(), g.get(), d.get(), idx.get(), 1, 2, 2, 2,
                                                    ws.get(), sizeof(int), nullptr),
                      "workspace");
  }
  TEST_MAIN_END();
}
