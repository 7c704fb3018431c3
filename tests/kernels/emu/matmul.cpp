// GEMM and linear-layer kernels vs the CPU reference (computed in double on the same inputs): awkward
// sizes, all four transpose combinations, alpha/beta, bias, accumulation, bf16 storage, grouped GEMMs with
// an empty group. Natively both backends (cuBLASLt and the SIMT twin) are checked; emulated, the SIMT one.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "kernels/cuda/matmul.h"
#include "tests/kernels/emu/kernel_test.h"

namespace cu = scmoe::cuda;
using kt::bf16;

namespace {

std::vector<double> to_d(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }
std::vector<float> round_bf16(const std::vector<float>& v) { return kt::to_floats(kt::to_bf16(v)); }
double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// fp32: fp32 accumulation over K <= 130 terms of size <= 1 against double; errors stay well below 1e-5
// of the largest magnitude.
constexpr double kRtol32 = 1e-5, kAtol32 = 1e-5;
// bf16 output: round-to-nearest to 8 mantissa bits costs up to 2^-9 relative per element (inputs are
// rounded to bf16 before the reference sees them, so that is the only extra error), plus fp32 noise.
constexpr double kRtolBf16 = 1.0 / 256, kAtolBf16 = 1e-4;

struct GemmCase {
  int M, N, K;
  float alpha, beta;
  bool bias;
  int pad;  // extra leading-dimension elements
};

void check_gemm(const GemmCase& c, bool ta, bool tb, int schedules) {
  const int rows_a = ta ? c.K : c.M, cols_a = ta ? c.M : c.K;
  const int rows_b = tb ? c.N : c.K, cols_b = tb ? c.K : c.N;
  const int lda = std::max(1, cols_a + c.pad), ldb = std::max(1, cols_b + c.pad), ldc = c.N + c.pad;
  const uint64_t seed = uint64_t(c.M) * 1000003 + c.N * 1009 + c.K * 7 + ta * 2 + tb;
  std::vector<float> A = kt::random_vec((size_t)rows_a * lda, seed),
                     B = kt::random_vec((size_t)rows_b * ldb, seed + 1),
                     C0 = kt::random_vec((size_t)c.M * ldc, seed + 2), bias = kt::random_vec(c.N, seed + 3);
  // With beta == 0 C must not be read: NaNs there would show.
  if (c.beta == 0.f) std::fill(C0.begin(), C0.end(), NAN);
  std::vector<double> want = to_d(C0), Ad = to_d(A), Bd = to_d(B);
  if (c.beta == 0.f) std::fill(want.begin(), want.end(), 0.0);
  scmoe::cpu::gemm<double>(ta, tb, c.M, c.N, c.K, c.alpha, Ad.data(), lda, Bd.data(), ldb, c.beta,
                           want.data(), ldc);
  if (c.bias)
    for (int m = 0; m < c.M; m++)
      for (int n = 0; n < c.N; n++) want[(size_t)m * ldc + n] += bias[n];
  // Padding columns of C keep their initial values (NaN with beta == 0 on both sides compares unequal,
  // so compare only the M x N part).
  auto crop = [&](const std::vector<float>& v) {
    std::vector<float> o;
    for (int m = 0; m < c.M; m++)
      o.insert(o.end(), v.begin() + (size_t)m * ldc, v.begin() + (size_t)m * ldc + c.N);
    return o;
  };
  std::vector<double> want_c;
  for (int m = 0; m < c.M; m++)
    want_c.insert(want_c.end(), want.begin() + (size_t)m * ldc, want.begin() + (size_t)m * ldc + c.N);
  const double atol = kAtol32 * std::max(1.0, max_abs(want_c));
  const std::string name = "gemm " + std::string(ta ? "T" : "N") + (tb ? "T" : "N") +
                           " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) +
                           " K=" + std::to_string(c.K) + (c.bias ? " +bias" : "") +
                           " beta=" + std::to_string(c.beta);
  kt::for_each_schedule(schedules, [&](int) {
    kt::Buf<float> dA(A), dB(B), dC(C0), db(bias);
    cu::gemm<float>(ta, tb, c.M, c.N, c.K, c.alpha, dA.get(), lda, dB.get(), ldb, c.beta, dC.get(), ldc,
                    nullptr, c.bias ? db.get() : nullptr);
    kt::sync();
    kt::expect_close(name + " fp32", crop(dC.download()), want_c, kRtol32, atol);
  });

  // bf16 inputs: bf16 output, and fp32 output (the gradient-accumulation case).
  std::vector<float> Ab = round_bf16(A), Bb = round_bf16(B), C0b = round_bf16(C0), biasb = round_bf16(bias);
  std::vector<double> wb = to_d(C0b), Abd = to_d(Ab), Bbd = to_d(Bb);
  if (c.beta == 0.f) std::fill(wb.begin(), wb.end(), 0.0);
  scmoe::cpu::gemm<double>(ta, tb, c.M, c.N, c.K, c.alpha, Abd.data(), lda, Bbd.data(), ldb, c.beta,
                           wb.data(), ldc);
  std::vector<double> wb_c, wb32_c;
  for (int m = 0; m < c.M; m++)
    for (int n = 0; n < c.N; n++) {
      double base = wb[(size_t)m * ldc + n];
      wb_c.push_back(base + (c.bias ? biasb[n] : 0.0));
      // the fp32-output variant starts from the unrounded C and adds the unrounded bias
      double base32 =
          base -
          (c.beta == 0.f ? 0.0 : double(c.beta) * (C0b[(size_t)m * ldc + n] - C0[(size_t)m * ldc + n]));
      wb32_c.push_back(base32 + (c.bias ? bias[n] : 0.0));
    }
  const double atol_b = std::max(1.0, max_abs(wb_c));
  kt::Buf<bf16> bA(kt::to_bf16(A)), bB(kt::to_bf16(B)), bC(kt::to_bf16(C0)), bbias(kt::to_bf16(bias));
  cu::gemm<bf16>(ta, tb, c.M, c.N, c.K, c.alpha, bA.get(), lda, bB.get(), ldb, c.beta, bC.get(), ldc, nullptr,
                 c.bias ? bbias.get() : nullptr);
  kt::Buf<float> fC(C0), fbias(bias);
  cu::gemm<bf16, float>(ta, tb, c.M, c.N, c.K, c.alpha, bA.get(), lda, bB.get(), ldb, c.beta, fC.get(), ldc,
                        nullptr, c.bias ? fbias.get() : nullptr);
  kt::sync();
  kt::expect_close(name + " bf16", crop(kt::to_floats(bC.download())), wb_c, kRtolBf16, kAtolBf16 * atol_b);
  kt::expect_close(name + " bf16->fp32", crop(fC.download()), wb32_c, kRtol32, kAtol32 * atol_b);
}

void check_batched(int schedules) {
  const int M = 33, N = 17, K = 65, batch = 3;
  const int64_t sa = (int64_t)M * K + 5, sb = (int64_t)K * N + 3, sc = (int64_t)M * N + 1;
  std::vector<float> A = kt::random_vec(sa * batch, 11), B = kt::random_vec(sb * batch, 12),
                     C0 = kt::random_vec(sc * batch, 13);
  std::vector<double> want = to_d(C0), Ad = to_d(A), Bd = to_d(B);
  for (int i = 0; i < batch; i++)
    scmoe::cpu::gemm<double>(false, true, M, N, K, 0.75, Ad.data() + i * sa, K, Bd.data() + i * sb, K, 0.5,
                             want.data() + i * sc, N);
  kt::for_each_schedule(schedules, [&](int) {
    kt::Buf<float> dA(A), dB(B), dC(C0);
    cu::gemm_strided_batched<float>(false, true, M, N, K, 0.75f, dA.get(), K, sa, dB.get(), K, sb, 0.5f,
                                    dC.get(), N, sc, batch, nullptr);
    kt::sync();
    kt::expect_close("gemm_strided_batched NT", dC.download(), want, kRtol32, kAtol32 * max_abs(want));
  });
}

void check_linear(int N, int IC, int OC, bool with_bias, bool accumulate, bool with_dinp, int schedules) {
  const uint64_t seed = uint64_t(N) * 7919 + IC * 131 + OC;
  std::vector<float> x = kt::random_vec((size_t)N * IC, seed), W = kt::random_vec((size_t)OC * IC, seed + 1),
                     b = kt::random_vec(OC, seed + 2), dy = kt::random_vec((size_t)N * OC, seed + 3),
                     dx0 = kt::random_vec((size_t)N * IC, seed + 4),
                     dW0 = kt::random_vec((size_t)OC * IC, seed + 5), db0 = kt::random_vec(OC, seed + 6);
  std::vector<double> xd = to_d(x), Wd = to_d(W), bd = to_d(b), dyd = to_d(dy);
  std::vector<double> y((size_t)N * OC), dx = to_d(dx0), dW = to_d(dW0), db = to_d(db0);
  scmoe::cpu::matmul_forward<double>(y.data(), xd.data(), Wd.data(), with_bias ? bd.data() : nullptr, N, IC,
                                     OC);
  scmoe::cpu::matmul_backward<double>(with_dinp ? dx.data() : nullptr, dW.data(),
                                      with_bias ? db.data() : nullptr, dyd.data(), xd.data(), Wd.data(), N,
                                      IC, OC, accumulate);
  const std::string name = "linear N=" + std::to_string(N) + " IC=" + std::to_string(IC) +
                           " OC=" + std::to_string(OC) + (with_bias ? " +bias" : "") +
                           (accumulate ? " acc" : "") + (with_dinp ? "" : " no-dinp");
  kt::for_each_schedule(schedules, [&](int) {
    kt::Buf<float> dx_(x), dW_(W), db_(b), ddy(dy), out((size_t)N * OC), ddx(dx0), ddW(dW0), ddb(db0);
    cu::matmul_forward<float>(out.get(), dx_.get(), dW_.get(), with_bias ? db_.get() : nullptr, N, IC, OC,
                              nullptr);
    cu::matmul_backward<float>(with_dinp ? ddx.get() : nullptr, ddW.get(), with_bias ? ddb.get() : nullptr,
                               ddy.get(), dx_.get(), dW_.get(), N, IC, OC, accumulate, nullptr);
    kt::sync();
    kt::expect_close(name + " out", out.download(), y, kRtol32, kAtol32 * max_abs(y));
    kt::expect_close(name + " dinp", ddx.download(), dx, kRtol32, kAtol32 * max_abs(dx));
    kt::expect_close(name + " dW", ddW.download(), dW, kRtol32, kAtol32 * max_abs(dW));
    kt::expect_close(name + " dbias", ddb.download(), db, kRtol32, kAtol32 * max_abs(db));
  });
  // bf16 activations and weights with fp32 gradients of the weights (the training configuration).
  std::vector<double> xb = to_d(round_bf16(x)), Wb = to_d(round_bf16(W)), bb = to_d(round_bf16(b)),
                      dyb = to_d(round_bf16(dy));
  std::vector<double> yb((size_t)N * OC), dxb = to_d(round_bf16(dx0)), dWb = to_d(dW0), dbb = to_d(db0);
  scmoe::cpu::matmul_forward<double>(yb.data(), xb.data(), Wb.data(), with_bias ? bb.data() : nullptr, N, IC,
                                     OC);
  scmoe::cpu::matmul_backward<double>(with_dinp ? dxb.data() : nullptr, dWb.data(),
                                      with_bias ? dbb.data() : nullptr, dyb.data(), xb.data(), Wb.data(), N,
                                      IC, OC, accumulate);
  kt::Buf<bf16> bx(kt::to_bf16(x)), bW(kt::to_bf16(W)), bbias(kt::to_bf16(b)), bdy(kt::to_bf16(dy)),
      bout((size_t)N * OC), bdx(kt::to_bf16(dx0));
  kt::Buf<float> fdW(dW0), fdb(db0);
  cu::matmul_forward<bf16>(bout.get(), bx.get(), bW.get(), with_bias ? bbias.get() : nullptr, N, IC, OC,
                           nullptr);
  cu::matmul_backward<bf16, float>(with_dinp ? bdx.get() : nullptr, fdW.get(),
                                   with_bias ? fdb.get() : nullptr, bdy.get(), bx.get(), bW.get(), N, IC, OC,
                                   accumulate, nullptr);
  kt::sync();
  kt::expect_close(name + " bf16 out", kt::to_floats(bout.download()), yb, kRtolBf16,
                   kAtolBf16 * max_abs(yb));
  kt::expect_close(name + " bf16 dinp", kt::to_floats(bdx.download()), dxb, kRtolBf16,
                   kAtolBf16 * max_abs(dxb));
  kt::expect_close(name + " bf16 dW(fp32)", fdW.download(), dWb, kRtol32, kAtol32 * max_abs(dWb));
  kt::expect_close(name + " bf16 dbias(fp32)", fdb.download(), dbb, kRtol32, kAtol32 * max_abs(dbb));
}

// Experts: each group's weight and bias inside one span of a parameter buffer (stride apart, as a MoE
// layer's experts are), rows given per group on the host (5, 0, 17 and 1: an empty group) or uniform (7
// rows each: one batched GEMM).
void check_grouped(bool uniform, int schedules) {
  const std::vector<int64_t> count = uniform ? std::vector<int64_t>{7, 7, 7, 7} : std::vector<int64_t>{5, 0, 17, 1};
  const int G = int(count.size()), IC = 33, OC = 65;
  const int64_t stride = int64_t(OC) * IC + OC + 29;  // W, then the bias, then padding
  std::vector<int64_t> first(G);
  int64_t N = 0;
  for (int g = 0; g < G; g++) first[g] = N, N += count[g];
  scmoe::GroupRows rows;
  rows.groups = G;
  if (uniform) rows.rows = 7;
  else rows.begin = first.data(), rows.count = count.data();
  std::vector<float> x = kt::random_vec((size_t)N * IC, 21), P = kt::random_vec((size_t)G * stride, 22),
                     dy = kt::random_vec((size_t)N * OC, 24), dP0 = kt::random_vec((size_t)G * stride, 25);
  std::vector<double> xd = to_d(x), Pd = to_d(P), dyd = to_d(dy);
  std::vector<double> y((size_t)N * OC), dx((size_t)N * IC), dP = to_d(dP0);
  for (int g = 0; g < G; g++) {
    const size_t w = size_t(g * stride), b = w + size_t(OC) * IC;
    scmoe::cpu::matmul_forward<double>(y.data() + first[g] * OC, xd.data() + first[g] * IC, Pd.data() + w,
                                       Pd.data() + b, int(count[g]), IC, OC);
    scmoe::cpu::matmul_backward<double>(dx.data() + first[g] * IC, dP.data() + w, dP.data() + b,
                                        dyd.data() + first[g] * OC, xd.data() + first[g] * IC, Pd.data() + w,
                                        int(count[g]), IC, OC, false);
  }
  kt::for_each_schedule(schedules, [&](int) {
    kt::Buf<float> dx_(x), dP_(P), ddy(dy), out((size_t)N * OC), ddx((size_t)N * IC), ddP(dP0);
    const int64_t bias = int64_t(OC) * IC;
    cu::matmul_forward_grouped<float>(out.get(), dx_.get(), dP_.get(), dP_.get() + bias, stride, rows, IC, OC,
                                      nullptr);
    cu::matmul_backward_grouped<float>(ddx.get(), ddP.get(), ddP.get() + bias, ddy.get(), dx_.get(), dP_.get(),
                                       stride, rows, IC, OC, false, nullptr);
    kt::sync();
    const std::string t = uniform ? " (uniform)" : "";
    kt::expect_close("grouped out" + t, out.download(), y, kRtol32, kAtol32 * max_abs(y));
    kt::expect_close("grouped dinp" + t, ddx.download(), dx, kRtol32, kAtol32 * max_abs(dx));
    // The empty group's gradients, and the padding between groups, must stay exactly as they were.
    kt::expect_close("grouped dW, dbias" + t, ddP.download(), dP, kRtol32, kAtol32 * max_abs(dP));
  });
}

}  // namespace

int main() {
  kt::require_device();
  std::vector<cu::GemmBackend> backends = {cu::GemmBackend::simt};
  if (!kt::kEmulated) backends.push_back(cu::GemmBackend::cublas);
  const int schedules = 3;
  for (cu::GemmBackend be : backends) {
    cu::set_gemm_backend(be);
    std::printf("backend %s [%s]\n", cu::gemm_backend() == cu::GemmBackend::simt ? "simt" : "cublas",
                kt::mode());
    const GemmCase cases[] = {
        {1, 1, 1, 1.f, 0.f, false, 0},        {17, 63, 65, 1.f, 0.f, true, 0},
        {65, 17, 130, 0.5f, -1.5f, false, 3}, {130, 65, 17, 1.f, 1.f, true, 1},
        {63, 130, 1, -2.f, 0.f, false, 0},    {1, 130, 63, 1.f, 0.25f, true, 2},
        {130, 1, 17, 1.f, 0.f, true, 0},      {65, 65, 0, 1.f, 0.5f, true, 0},
    };
    for (const GemmCase& c : cases)
      for (int t = 0; t < 4; t++) check_gemm(c, t & 1, t & 2, schedules);
    check_batched(schedules);
    check_linear(1, 17, 63, true, false, true, schedules);
    check_linear(17, 65, 33, false, true, true, schedules);
    check_linear(130, 63, 65, true, true, false, schedules);
    check_linear(65, 1, 130, true, false, true, schedules);
    check_grouped(false, schedules);
    check_grouped(true, schedules);
  }
  TEST_MAIN_END();
}
