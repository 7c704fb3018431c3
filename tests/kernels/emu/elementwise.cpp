// Elementwise kernels, the fused residual + norm forward and the bias gradient vs the CPU reference,
// fp32 and bf16 storage, awkward lengths, aligned (128-bit packs) and misaligned (scalar) pointers.
#include "kernels/cpu/elementwise.h"

#include <cstdio>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cpu/norm.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/norm.h"
#include "tests/kernels/emu/kernel_test.h"

namespace {

using kt::bf16;
using Vd = std::vector<double>;

Vd to_d(const std::vector<float>& v) { return Vd(v.begin(), v.end()); }
template <class T>
std::vector<float> bits(const std::vector<T>& v) {  // compare stored values exactly
  return kt::to_floats(v);
}

// The elementwise ops do one fp32 operation per element and round once to T, as the CPU reference in
// float followed by rounding to T does: results must be bit-identical, in both storage types.
// `off` shifts every pointer by that many elements (1: misaligned, the scalar path).
template <class T>
void check_map(int64_t n, int off) {
  const std::string tag = std::string(kt::type_name<T>()) + " n=" + std::to_string(n) + " off=" + std::to_string(off);
  std::vector<float> a = kt::to_floats(kt::store_as<T>(kt::random_vec(n, 11 + n, -3.f, 3.f)));
  std::vector<float> b = kt::to_floats(kt::store_as<T>(kt::random_vec(n, 12 + n, -3.f, 3.f)));
  auto dev = [&](const std::vector<float>& v) {
    std::vector<float> p(off, 0.f);
    p.insert(p.end(), v.begin(), v.end());
    return kt::store_as<T>(p);
  };
  auto down = [&](const kt::Buf<T>& buf) {
    std::vector<T> v = buf.download();
    return bits(std::vector<T>(v.begin() + off, v.end()));
  };
  auto rounded = [](std::vector<float> v) { return kt::to_floats(kt::store_as<T>(v)); };
  std::vector<float> want(n);
  kt::Buf<T> da(dev(a)), db(dev(b)), out(n + off);

  scmoe::cuda::add(out.get() + off, da.get() + off, db.get() + off, n, nullptr);
  kt::sync();
  scmoe::cpu::add(want.data(), a.data(), b.data(), n);
  kt::expect_equal("add " + tag, down(out), rounded(want));

  scmoe::cuda::add_inplace(da.get() + off, db.get() + off, n, nullptr);
  kt::sync();
  kt::expect_equal("add_inplace " + tag, down(da), rounded(want));

  scmoe::cuda::copy(out.get() + off, db.get() + off, n, nullptr);
  kt::sync();
  kt::expect_equal("copy " + tag, down(out), b);

  scmoe::cuda::scale(db.get() + off, -0.37f, n, nullptr);
  kt::sync();
  for (int64_t i = 0; i < n; i++) want[i] = b[i] * -0.37f;
  kt::expect_equal("scale " + tag, down(db), rounded(want));

  scmoe::cuda::fill(out.get() + off, 0.3f, n, nullptr);
  kt::sync();
  scmoe::cpu::fill(want.data(), 0.3f, n);
  kt::expect_equal("fill " + tag, down(out), rounded(want));
}

// Fused residual + norm: resid must equal add() bit for bit, and out/mean/rstd must equal the norm
// family's forward on that residual bit for bit (same row code); both are also checked against the
// float64 CPU reference with the norm suite's tolerances (fp32: 2e-5; bf16: 2^-7 relative).
template <class T>
void check_fused(int N, int C, bool rms) {
  const std::string tag = std::string(rms ? "fused residual rmsnorm " : "fused residual layernorm ") +
                          kt::type_name<T>() + " N=" + std::to_string(N) + " C=" + std::to_string(C);
  const size_t n = size_t(N) * C;
  const uint64_t seed = 77 * N + C;
  std::vector<float> a = kt::to_floats(kt::store_as<T>(kt::random_vec(n, seed, 0.f, 3.f)));
  std::vector<float> b = kt::to_floats(kt::store_as<T>(kt::random_vec(n, seed + 1, 0.f, 3.f)));
  std::vector<float> w = kt::to_floats(kt::store_as<T>(kt::random_vec(C, seed + 2, 0.5f, 1.5f)));
  std::vector<float> bias = kt::to_floats(kt::store_as<T>(kt::random_vec(C, seed + 3)));
  kt::Buf<T> da(kt::store_as<T>(a)), db(kt::store_as<T>(b)), dw(kt::store_as<T>(w)), dbias(kt::store_as<T>(bias));
  kt::Buf<T> resid(n), out(n), resid2(n), out2(n);
  kt::Buf<float> mean(N), rstd(N), mean2(N), rstd2(N);
  if (rms) {
    scmoe::cuda::fused_residual_rmsnorm_forward(resid.get(), out.get(), rstd.get(), da.get(), db.get(),
                                                dw.get(), N, C, nullptr);
    scmoe::cuda::add(resid2.get(), da.get(), db.get(), int64_t(n), nullptr);
    scmoe::cuda::rmsnorm_forward(out2.get(), rstd2.get(), resid2.get(), dw.get(), N, C, nullptr);
  } else {
    scmoe::cuda::fused_residual_layernorm_forward(resid.get(), out.get(), mean.get(), rstd.get(), da.get(),
                                                  db.get(), dw.get(), dbias.get(), N, C, nullptr);
    scmoe::cuda::add(resid2.get(), da.get(), db.get(), int64_t(n), nullptr);
    scmoe::cuda::layernorm_forward(out2.get(), mean2.get(), rstd2.get(), resid2.get(), dw.get(), dbias.get(),
                                   N, C, nullptr);
  }
  kt::sync();
  std::vector<float> r = bits(resid.download());
  kt::expect_equal(tag + " resid == add", r, bits(resid2.download()));
  kt::expect_equal(tag + " out == norm forward", bits(out.download()), bits(out2.download()));
  kt::expect_equal(tag + " rstd == norm forward", rstd.download(), rstd2.download());
  if (!rms) kt::expect_equal(tag + " mean == norm forward", mean.download(), mean2.download());

  std::vector<float> sum(n);
  for (size_t i = 0; i < n; i++) sum[i] = a[i] + b[i];
  kt::expect_equal(tag + " resid", r, kt::to_floats(kt::store_as<T>(sum)));
  Vd y(n), m(N), s(N);
  if (rms)
    scmoe::cpu::rmsnorm_forward(y.data(), s.data(), to_d(r).data(), to_d(w).data(), N, C);
  else
    scmoe::cpu::layernorm_forward(y.data(), m.data(), s.data(), to_d(r).data(), to_d(w).data(),
                                  to_d(bias).data(), N, C);
  const bool f32 = std::is_same<T, float>::value;
  kt::expect_close(tag + " out", out.download(), y, f32 ? 2e-5 : 1.0 / 128, f32 ? 2e-5 : 1e-4);
  kt::expect_close(tag + " rstd", rstd.download(), s, 1e-5, 0);
  if (!rms) kt::expect_close(tag + " mean", mean.download(), m, 1e-6, 1e-6);
}

// dbias += column sums of dout, fp32, against a float64 sum of the same (T-rounded) values: relative
// 1e-5 plus 1e-6 per summed row absolute. Bit-identical across schedules/runs.
template <class T>
void check_bias(int N, int OC, std::vector<float>& first, int sched) {
  const std::string tag =
      std::string("bias_backward ") + kt::type_name<T>() + " N=" + std::to_string(N) + " OC=" + std::to_string(OC);
  std::vector<float> d = kt::to_floats(kt::store_as<T>(kt::random_vec(size_t(N) * OC, 5 * N + OC)));
  std::vector<float> g0 = kt::random_vec(OC, 9 * OC);
  Vd want(OC);
  for (int c = 0; c < OC; c++) {
    double s = g0[c];
    for (int i = 0; i < N; i++) s += d[size_t(i) * OC + c];
    want[c] = s;
  }
  kt::Buf<T> dd(kt::store_as<T>(d));
  kt::Buf<float> g(g0);
  const size_t ws_bytes = scmoe::cuda::bias_backward_workspace_bytes(N, OC);
  kt::Buf<float> ws(ws_bytes / sizeof(float));
  scmoe::cuda::bias_backward(g.get(), dd.get(), N, OC, ws.get(), ws_bytes, nullptr);
  kt::sync();
  std::vector<float> got = g.download();
  kt::expect_close(tag, got, want, 1e-5, 1e-6 * N);
  if (sched == 0)
    first = got;
  else
    kt::expect_equal(tag + " bit-identical across runs", got, first);
}

}  // namespace

int main() {
  kt::require_device();
  kt::for_each_schedule(3, [&](int) {
    for (int64_t n : {1, 7, 257, 1000, 4099})
      for (int off : {0, 1}) {
        check_map<float>(n, off);
        check_map<bf16>(n, off);
      }
    // (1,7) one row, scalar; (37,64) and (20,520) 128-bit packs, several rows per block; (9,333) scalar.
    for (auto [N, C] : std::vector<std::pair<int, int>>{{1, 7}, {37, 64}, {9, 333}, {20, 520}})
      for (bool rms : {false, true}) {
        check_fused<float>(N, C, rms);
        check_fused<bf16>(N, C, rms);
      }
  });
  // Bias gradient: one row; odd OC (scalar); OC a multiple of the pack width with several row chunks
  // (300 rows = 5 chunks of 64); natively also a large case (more chunks than kBiasMaxChunks allows).
  std::vector<std::pair<int, int>> bias_shapes = {{1, 1}, {37, 77}, {300, 264}, {5, 40}};
  if (!kt::kEmulated) bias_shapes.push_back({20000, 768});
  for (auto [N, OC] : bias_shapes) {
    std::vector<float> f32, f16;
    kt::for_each_schedule(3, [&](int sched) {
      check_bias<float>(N, OC, f32, sched);
      check_bias<bf16>(N, OC, f16, sched);
    });
  }
  {
    kt::Buf<float> g(8), d(16), ws(1);
    CHECK_THROWS_WITH(scmoe::cuda::bias_backward(g.get(), d.get(), 2, 8, ws.get(), sizeof(float), nullptr),
                      "workspace");
  }
  TEST_MAIN_END();
}
