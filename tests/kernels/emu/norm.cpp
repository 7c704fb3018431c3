// LayerNorm / RMSNorm kernels vs the CPU reference (run in float64 on the same inputs), fp32 and bf16
// storage, awkward shapes: one row, odd C (scalar path), C a multiple of the pack width (128-bit path),
// several warps per block and several rows per block (so the cross-warp reductions' barriers matter).
// Also: dw/db accumulate into what was there, dinp accumulates on request, the gradients are
// bit-identical across runs and schedules, and a short workspace is refused.
#include "kernels/cpu/norm.h"

#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/norm.h"
#include "tests/kernels/emu/kernel_test.h"

namespace {

using kt::bf16;
using Vd = std::vector<double>;

Vd to_d(const std::vector<float>& v) { return Vd(v.begin(), v.end()); }
std::vector<float> to_f(const Vd& v) { return std::vector<float>(v.begin(), v.end()); }

// Tolerances (relative, absolute) for values stored as T. fp32: a few ulps of fp32 arithmetic against
// the float64 reference, times the length of the sums. bf16: the output's rounding to 8 mantissa
// bits, 2^-8 relative at worst (2^-7 allowed), plus fp32 arithmetic on top.
struct Tol {
  double rtol, atol;
};
template <class T>
Tol act_tol() {
  return std::is_same<T, float>::value ? Tol{2e-5, 2e-5} : Tol{1.0 / 128, 1e-4};
}

template <class T>
void check_shape(int N, int C, bool rms, std::vector<float>& dw_first, std::vector<float>& db_first,
                 int sched) {
  const std::string tag = std::string(rms ? "rmsnorm" : "layernorm") +
                          (std::is_same<T, float>::value ? " fp32" : " bf16") + " N=" + std::to_string(N) +
                          " C=" + std::to_string(C);
  const uint64_t seed = 1000 * N + C + (rms ? 7 : 0);
  // Inputs with a mean far from zero (the two-pass statistics must not cancel), rounded to T first so
  // the reference sees exactly what the kernel sees.
  auto round = [](const std::vector<float>& v) { return kt::to_floats(kt::store_as<T>(v)); };
  std::vector<float> x = round(kt::random_vec(size_t(N) * C, seed, 1.f, 4.f));
  std::vector<float> w = round(kt::random_vec(C, seed + 1, 0.5f, 1.5f));
  std::vector<float> b = round(kt::random_vec(C, seed + 2));
  std::vector<float> dy = round(kt::random_vec(size_t(N) * C, seed + 3));
  std::vector<float> dx0 = round(kt::random_vec(size_t(N) * C, seed + 4));  // for accumulate_dinp
  std::vector<float> dw0 = kt::random_vec(C, seed + 5), db0 = kt::random_vec(C, seed + 6);

  // Forward reference in float64.
  Vd y_ref(size_t(N) * C), mean_ref(N), rstd_ref(N);
  if (rms)
    scmoe::cpu::rmsnorm_forward(y_ref.data(), rstd_ref.data(), to_d(x).data(), to_d(w).data(), N, C);
  else
    scmoe::cpu::layernorm_forward(y_ref.data(), mean_ref.data(), rstd_ref.data(), to_d(x).data(),
                                  to_d(w).data(), to_d(b).data(), N, C);
  // Backward reference from the same fp32 statistics the device backward gets.
  std::vector<float> mean_f = to_f(mean_ref), rstd_f = to_f(rstd_ref);
  Vd dx_ref(size_t(N) * C), dxacc_ref = to_d(dx0), dw_ref = to_d(dw0), db_ref = to_d(db0);
  for (bool acc : {false, true}) {
    Vd& dst = acc ? dxacc_ref : dx_ref;
    Vd dwt = to_d(dw0), dbt = to_d(db0);
    if (rms)
      scmoe::cpu::rmsnorm_backward(dst.data(), dwt.data(), to_d(dy).data(), to_d(x).data(), to_d(w).data(),
                                   to_d(rstd_f).data(), N, C, acc);
    else
      scmoe::cpu::layernorm_backward(dst.data(), dwt.data(), dbt.data(), to_d(dy).data(), to_d(x).data(),
                                     to_d(w).data(), to_d(mean_f).data(), to_d(rstd_f).data(), N, C, acc);
    if (!acc) dw_ref = dwt, db_ref = dbt;
  }

  kt::Buf<T> dx(kt::store_as<T>(x)), dwb(kt::store_as<T>(w)), dbb(kt::store_as<T>(b)), dy_d(kt::store_as<T>(dy)),
      y(size_t(N) * C);
  kt::Buf<float> mean(N), rstd(N), mean_in(mean_f), rstd_in(rstd_f), gw(dw0), gb(db0);
  kt::Buf<T> gx(size_t(N) * C), gxacc(kt::store_as<T>(dx0));
  const size_t ws_bytes = scmoe::cuda::norm_backward_workspace_bytes(N, C);
  kt::Buf<float> ws(ws_bytes / sizeof(float));
  if (rms) {
    scmoe::cuda::rmsnorm_forward(y.get(), rstd.get(), dx.get(), dwb.get(), N, C, nullptr);
    scmoe::cuda::rmsnorm_backward(gx.get(), gw.get(), dy_d.get(), dx.get(), dwb.get(), rstd_in.get(), N, C,
                                  false, ws.get(), ws_bytes, nullptr);
    // Second call accumulates dinp and adds the same dw again (dw = dw0 + 2 * sum).
    scmoe::cuda::rmsnorm_backward(gxacc.get(), gw.get(), dy_d.get(), dx.get(), dwb.get(), rstd_in.get(), N, C,
                                  true, ws.get(), ws_bytes, nullptr);
  } else {
    scmoe::cuda::layernorm_forward(y.get(), mean.get(), rstd.get(), dx.get(), dwb.get(), dbb.get(), N, C,
                                   nullptr);
    scmoe::cuda::layernorm_backward(gx.get(), gw.get(), gb.get(), dy_d.get(), dx.get(), dwb.get(),
                                    mean_in.get(), rstd_in.get(), N, C, false, ws.get(), ws_bytes, nullptr);
    scmoe::cuda::layernorm_backward(gxacc.get(), gw.get(), gb.get(), dy_d.get(), dx.get(), dwb.get(),
                                    mean_in.get(), rstd_in.get(), N, C, true, ws.get(), ws_bytes, nullptr);
  }
  kt::sync();
  const Tol t = act_tol<T>();
  kt::expect_close(tag + " out", y.download(), y_ref, t.rtol, t.atol);
  // Statistics are fp32 in both storage modes, computed from the same (rounded) inputs.
  kt::expect_close(tag + " rstd", rstd.download(), rstd_ref, 1e-5, 0);
  if (!rms) kt::expect_close(tag + " mean", mean.download(), mean_ref, 1e-6, 1e-6);
  kt::expect_close(tag + " dinp", gx.download(), dx_ref, t.rtol, 10 * t.atol);
  kt::expect_close(tag + " dinp accumulated", gxacc.download(), dxacc_ref, t.rtol, 10 * t.atol);
  // dw/db: fp32 sums over N rows of products of exactly representable inputs; after two calls
  // dw = dw0 + 2 * (dw_ref - dw0).
  Vd dw_want(C), db_want(C);
  for (int c = 0; c < C; c++) dw_want[c] = 2 * dw_ref[c] - dw0[c], db_want[c] = 2 * db_ref[c] - db0[c];
  std::vector<float> dw_got = gw.download(), db_got = gb.download();
  kt::expect_close(tag + " dw", dw_got, dw_want, 1e-5, 1e-5 * N);
  if (!rms) kt::expect_close(tag + " db", db_got, db_want, 1e-5, 1e-5 * N);
  // Deterministic: the same bits under every schedule (and natively, every run).
  if (sched == 0) {
    dw_first = dw_got, db_first = db_got;
  } else {
    kt::expect_equal(tag + " dw bit-identical across runs", dw_got, dw_first);
    if (!rms) kt::expect_equal(tag + " db bit-identical across runs", db_got, db_first);
  }
}

}  // namespace

int main() {
  kt::require_device();
  struct Shape {
    int N, C;
  };
  // (1,7): one row, scalar path. (37,64): one warp per backward block, 3 blocks of ~13 rows.
  // (10,333): scalar path with 8 warps (some threads own two channels). (24,520): 128-bit packs
  // (520 % 8 == 0) with several warps. Natively also a large shape (many blocks, 16 rows each).
  std::vector<Shape> shapes = {{1, 7}, {37, 64}, {10, 333}, {24, 520}};
  if (!kt::kEmulated) shapes.push_back({4099, 768}), shapes.push_back({70, 7000});
  for (const Shape& s : shapes)
    for (bool rms : {false, true}) {
      std::vector<float> dw32, db32, dw16, db16;
      kt::for_each_schedule(3, [&](int sched) {
        check_shape<float>(s.N, s.C, rms, dw32, db32, sched);
        check_shape<bf16>(s.N, s.C, rms, dw16, db16, sched);
      });
    }

  // A workspace short of norm_backward_workspace_bytes is refused before anything runs.
  {
    const int N = 5, C = 9;
    kt::Buf<float> a(N * C), w(C), st(N), g(C), ws(1);
    CHECK_THROWS_WITH(
        scmoe::cuda::layernorm_backward(a.get(), g.get(), g.get(), a.get(), a.get(), w.get(), st.get(),
                                        st.get(), N, C, false, ws.get(), sizeof(float), nullptr),
        "workspace");
  }
  TEST_MAIN_END();
}
