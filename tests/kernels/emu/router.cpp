// Router kernels vs the CPU reference (kernels/cpu/router.h, run in double): softmax and sigmoid scores,
// top-k indices on score + expert bias (exactly equal on inputs without near-ties, and on exact ties:
// lower expert first), renormalised gates, counts, pmean, the aux, z and sequence-level losses with
// their per-sequence counts, and dlogits; fp32 and bf16 logits; the expert bias update.
#include "kernels/cpu/router.h"

#include <cstdio>
#include <numeric>

#include "kernels/cuda/router.h"
#include "tests/kernels/emu/kernel_test.h"

namespace {
using I32 = std::vector<int32_t>;
using I64 = std::vector<int64_t>;
using D = std::vector<double>;
using scmoe::RouterGradScales;
using scmoe::RouterSpec;

// Rows whose logits are E distinct levels, shuffled: neighbours differ by >= 3/E in the logit (>= 1%
// in probability for E <= 256), far above fp32 rounding, so the device's top-k must equal the CPU's.
std::vector<float> distinct_logits(int N, int E, uint64_t seed) {
  scmoe::Rng r(seed);
  std::vector<float> l((size_t)N * E);
  std::vector<int> perm(E);
  for (int n = 0; n < N; n++) {
    std::iota(perm.begin(), perm.end(), 0);
    for (int i = E - 1; i > 0; i--) std::swap(perm[i], perm[r.next_u64() % (i + 1)]);
    for (int e = 0; e < E; e++)
      l[(size_t)n * E + e] = -2.f + 4.f * (perm[e] + 0.25f * float(r.uniform())) / E;
  }
  return l;
}

// What a case routes with; the bias lives on the host here and is uploaded for the device.
struct Case {
  int E = 1, k = 1;
  bool renorm = false, sigmoid = false;
  std::vector<float> bias;  // empty: none
  int seq_len = 0;
  RouterSpec spec(const float* bias_mem) const {
    RouterSpec r;
    r.E = E, r.k = k, r.renormalize = renorm, r.sigmoid = sigmoid, r.seq_len = seq_len;
    r.bias = bias.empty() ? nullptr : bias_mem;
    return r;
  }
  int sequences(int N) const { return seq_len > 0 ? N / seq_len : 0; }
};

struct Ref {
  D probs, gate, pmean;
  I32 idx, seq_counts;
  I64 counts;
  scmoe::cpu::RouterLosses losses;
};
Ref cpu_forward(const std::vector<float>& logits, int N, const Case& c) {
  Ref r{D((size_t)N * c.E), D((size_t)N * c.k), D(c.E), I32((size_t)N * c.k),
        I32((size_t)std::max(c.sequences(N), 1) * c.E), I64(c.E), {}};
  D l(logits.begin(), logits.end());
  r.losses = scmoe::cpu::router_forward(l.data(), N, c.spec(c.bias.data()), r.probs.data(), r.idx.data(),
                                        r.gate.data(), r.pmean.data(), r.counts.data(), r.seq_counts.data());
  r.seq_counts.resize((size_t)c.sequences(N) * c.E);
  return r;
}

struct Dev {
  std::vector<float> probs, gate, pmean, losses, dlogits;
  I32 idx, seq_counts;
  I64 counts;
};
// Device forward then backward (dgate, scales); T is the logits' storage type.
template <class T>
Dev device_run(const std::vector<T>& logits, int N, const Case& c, const std::vector<float>& dgate,
               const RouterGradScales& sc) {
  const int E = c.E, k = c.k, S = c.sequences(N);
  kt::Buf<T> dl(logits), ddl((size_t)N * E);
  kt::Buf<float> probs((size_t)N * E), gate((size_t)N * k), pmean(E), losses(3), ddg(dgate);
  kt::Buf<float> bias(c.bias.empty() ? std::vector<float>(1) : c.bias);
  kt::Buf<float> ws((scmoe::cuda::router_forward_workspace_bytes(N, E) + 3) / 4);
  kt::Buf<int32_t> idx((size_t)N * k), seq_counts((size_t)std::max(S, 1) * E);
  kt::Buf<int64_t> counts(E);
  const RouterSpec r = c.spec(bias.get());
  scmoe::cuda::router_forward(dl.get(), N, r, probs.get(), idx.get(), gate.get(), pmean.get(), counts.get(),
                              seq_counts.get(), losses.get(), ws.get(), nullptr);
  scmoe::cuda::router_backward(ddl.get(), ddg.get(), dl.get(), probs.get(), idx.get(), counts.get(),
                               seq_counts.get(), N, r, sc, nullptr);
  kt::sync();
  I32 sq = seq_counts.download();
  sq.resize((size_t)S * E);
  return {probs.download(), gate.download(), pmean.download(), losses.download(), kt::to_floats(ddl.download()),
          idx.download(), sq, counts.download()};
}

// The CPU backward on the device's own forward outputs, so that it checks the backward alone.
D cpu_backward(const std::vector<float>& logits, const Dev& d, const std::vector<float>& dgate, int N, const Case& c,
               const RouterGradScales& sc) {
  D out((size_t)N * c.E), l(logits.begin(), logits.end()), p(d.probs.begin(), d.probs.end()),
      dg(dgate.begin(), dgate.end());
  scmoe::cpu::router_backward(out.data(), dg.data(), l.data(), p.data(), d.idx.data(), d.counts.data(),
                              d.seq_counts.data(), N, c.spec(c.bias.data()), sc);
  return out;
}

// Forward values and indices of `got` against the reference. fp32 scores from identical inputs: a
// few ulps of relative error on scores and gates, ~N ulps on the pmean / loss sums.
void compare_forward(const std::string& tag, const Dev& got, const Ref& ref, int N) {
  kt::expect_close(tag + " probs", got.probs, ref.probs, 1e-5, 1e-9);
  kt::expect_equal(tag + " topk_idx", got.idx, ref.idx);
  kt::expect_close(tag + " topk_gate", got.gate, ref.gate, 1e-5, 1e-9);
  kt::expect_equal(tag + " counts", got.counts, ref.counts);
  kt::expect_equal(tag + " seq_counts", got.seq_counts, ref.seq_counts);
  kt::expect_close(tag + " pmean", got.pmean, ref.pmean, 1e-5, 1e-8);
  kt::expect_close(tag + " losses", got.losses, D{ref.losses.aux, ref.losses.z, ref.losses.seq}, 1e-5 + 1e-7 * N,
                   1e-7);
}

void test_case(int N, const Case& c, const RouterGradScales& sc) {
  const int E = c.E, k = c.k;
  const std::string tag = "N=" + std::to_string(N) + " E=" + std::to_string(E) + " k=" + std::to_string(k) +
                          (c.renorm ? " renorm" : "") + (c.sigmoid ? " sigmoid" : "") +
                          (c.bias.empty() ? "" : " bias") + (c.seq_len ? " seq" + std::to_string(c.seq_len) : "");
  const std::vector<float> logits = distinct_logits(N, E, 1000 + N * 31 + E * 7 + k);
  const std::vector<float> dgate = kt::random_vec((size_t)N * k, 77 + N + E);
  const Ref ref = cpu_forward(logits, N, c);
  kt::for_each_schedule(3, [&](int) {
    Dev d = device_run(logits, N, c, dgate, sc);
    compare_forward("router fp32 " + tag, d, ref, N);
    // dlogits = p (dp - p.dp + zc) with terms of order 1: fp32 cancellation leaves ~1e-7 absolute.
    kt::expect_close("router_backward fp32 " + tag, d.dlogits, cpu_backward(logits, d, dgate, N, c, sc), 1e-5, 1e-6);
  });
  // bf16 logits: the reference sees the same rounded logits (rounding may create exact ties, which
  // both sides break towards the lower index). Scores stay fp32; dlogits is stored in bf16, so it is
  // within 2^-8 relative (plus the fp32 slack).
  const std::vector<kt::bf16> lb = kt::to_bf16(logits);
  const std::vector<float> lbf = kt::to_floats(lb);
  const Ref refb = cpu_forward(lbf, N, c);
  Dev d = device_run(lb, N, c, dgate, sc);
  compare_forward("router bf16 " + tag, d, refb, N);
  kt::expect_close("router_backward bf16 " + tag, d.dlogits, cpu_backward(lbf, d, dgate, N, c, sc), 1.0 / 128,
                   2e-6);
}

void test_case(int N, int E, int k, bool renorm, float aux_scale, float z_scale) {
  Case c;
  c.E = E, c.k = k, c.renorm = renorm;
  test_case(N, c, {aux_scale, z_scale, 0.0});
}

// Sigmoid scores, an expert bias (large enough to change choices; levels 0.5 apart, so no near-ties
// with the scores' 1% steps) and the sequence-level loss.
void test_balancing_case(int N, int E, int k, bool renorm, int seq_len) {
  Case c;
  c.E = E, c.k = k, c.renorm = renorm, c.seq_len = seq_len;
  for (int e = 0; e < E; e++) c.bias.push_back(e % 3 == 1 ? 0.5f : e % 3 == 2 ? -0.5f : 0.f);
  for (bool sigmoid : {false, true}) {
    c.sigmoid = sigmoid;
    test_case(N, c, {0.7, 0.3, 0.5});
  }
}

// Exact ties go to the lower expert; an all-NaN row still yields the k lowest experts, as on the CPU.
void test_ties() {
  const int E = 7, k = 3, N = 4;
  const float nan = std::nanf("");
  std::vector<float> l = {
      0,   0,   0,   0,    0,   0,    0,    // all equal: 0, 1, 2
      0,   0,   1,   0,    0,   1,    0,    // two maxima: 2, 5, then 0
      -1,  2,   -1,  0.5f, -1,  0.5f, 2,    // pairs of ties: 1, 6, 3
      nan, nan, nan, nan,  nan, nan,  nan,  // NaN: 0, 1, 2
  };
  const I32 want = {0, 1, 2, 2, 5, 0, 1, 6, 3, 0, 1, 2};
  for (bool renorm : {false, true}) {
    Case c;
    c.E = E, c.k = k, c.renorm = renorm;
    Ref ref = cpu_forward(l, N, c);
    CHECK(ref.idx == want);
    kt::for_each_schedule(3, [&](int) {
      Dev d = device_run(l, N, c, std::vector<float>(N * k, 0.5f), {0, 0, 0});
      kt::expect_equal("router ties topk_idx", d.idx, want);
      kt::expect_equal("router ties counts", d.counts, ref.counts);
      // the finite rows' values
      kt::expect_close("router ties gate", std::vector<float>(d.gate.begin(), d.gate.begin() + 9),
                       D(ref.gate.begin(), ref.gate.begin() + 9), 1e-6, 1e-9);
      kt::expect_close("router ties probs", std::vector<float>(d.probs.begin(), d.probs.begin() + 21),
                       D(ref.probs.begin(), ref.probs.begin() + 21), 1e-6, 1e-9);
    });
  }
}

void test_limits() {
  kt::Buf<float> l(300 * 2), p(300 * 2), g(2), pm(300), losses(3), ws(4096);
  kt::Buf<int32_t> idx(2);
  kt::Buf<int64_t> counts(300);
  Case c;
  c.E = 300, c.k = 1;
  CHECK_THROWS_WITH(scmoe::cuda::router_forward(l.get(), 2, c.spec(nullptr), p.get(), idx.get(), g.get(), pm.get(),
                                                counts.get(), nullptr, losses.get(), ws.get(), nullptr),
                    "limit of 256");
  c.E = 4, c.k = 5;
  CHECK_THROWS_WITH(scmoe::cuda::router_forward(l.get(), 2, c.spec(nullptr), p.get(), idx.get(), g.get(), pm.get(),
                                                counts.get(), nullptr, losses.get(), ws.get(), nullptr),
                    "1 <= k <= E");
  c.k = 1, c.seq_len = 3;
  CHECK_THROWS_WITH(scmoe::cuda::router_forward(l.get(), 2, c.spec(nullptr), p.get(), idx.get(), g.get(), pm.get(),
                                                counts.get(), nullptr, losses.get(), ws.get(), nullptr),
                    "2 tokens are not whole sequences of 3");
}

// No tokens: zero losses, counts and pmean (and nothing to launch for the rows).
void test_empty() {
  const int E = 5;
  kt::Buf<float> pm(std::vector<float>(E, 7.f)), losses(std::vector<float>{7.f, 7.f, 7.f});
  kt::Buf<int64_t> counts(I64(E, 7));
  Case c;
  c.E = E, c.k = 2, c.renorm = true;
  scmoe::cuda::router_forward<float>(nullptr, 0, c.spec(nullptr), nullptr, nullptr, nullptr, pm.get(), counts.get(),
                                     nullptr, losses.get(), nullptr, nullptr);
  kt::sync();
  kt::expect_equal("router N=0 pmean", pm.download(), std::vector<float>(E, 0.f));
  kt::expect_equal("router N=0 counts", counts.download(), I64(E, 0));
  kt::expect_equal("router N=0 losses", losses.download(), std::vector<float>{0.f, 0.f, 0.f});
}

// Noisy gating, elementwise: logits += eps * softplus(noise_pre) (softplus(z) = z above 20) and its
// backward dlogits *= eps * sigmoid(noise_pre), against double; n not a multiple of the block.
template <class T>
void test_gate_noise(int64_t n, float tol) {
  auto logits = kt::random_vec(n, 41, -3.f, 3.f), pre = kt::random_vec(n, 42, -6.f, 25.f),
       eps = kt::random_vec(n, 43, -2.f, 2.f), dl = kt::random_vec(n, 44);
  const auto lt = kt::store_as<T>(logits), pt = kt::store_as<T>(pre), dt = kt::store_as<T>(dl);
  D want_fwd(n), want_bwd(n);
  for (int64_t i = 0; i < n; i++) {
    const double z = kt::to_float(pt[i]);
    want_fwd[i] = kt::to_float(lt[i]) + eps[i] * (z > 20 ? z : std::log1p(std::exp(z)));
    want_bwd[i] = kt::to_float(dt[i]) * eps[i] / (1 + std::exp(-z));
  }
  kt::for_each_schedule(2, [&](int) {
    kt::Buf<T> l(lt), p(pt), d(dt);
    kt::Buf<float> e(eps);
    scmoe::cuda::gate_noise_forward(l.get(), p.get(), e.get(), n, nullptr);
    scmoe::cuda::gate_noise_backward(d.get(), p.get(), e.get(), n, nullptr);
    kt::sync();
    kt::expect_close(std::string("gate noise forward ") + kt::type_name<T>(), l.download(), want_fwd, tol, tol);
    kt::expect_close(std::string("gate noise backward ") + kt::type_name<T>(), d.download(), want_bwd, tol, tol);
  });
}
}  // namespace

// The statistics' pack for the all-reduce over ranks and the unpack of the summed buffer: the CPU's
// arithmetic in double (float inputs), so the device's global counts equal the CPU's and the losses
// agree to float rounding.
void test_stats_pack() {
  const int E = 6, N = 13, k = 2;
  const int64_t Ng = 3 * N;
  const I64 counts = {3, 0, 7, 5, 6, 5};
  const int64_t S = 4, Sg = 3 * S;
  const std::vector<float> pmean = {0.1f, 0.05f, 0.3f, 0.2f, 0.25f, 0.1f}, losses = {1.25f, 3.5f, 0.75f};
  std::vector<double> pmean_d(pmean.begin(), pmean.end()), losses_d(losses.begin(), losses.end());
  D buf_ref(scmoe::router_stats_size(E));
  scmoe::cpu::router_stats_pack(buf_ref.data(), counts.data(), pmean_d.data(), losses_d.data(), N, S, E);
  kt::Buf<int64_t> dcounts(counts);
  kt::Buf<float> dpmean(pmean), dlosses(losses);
  kt::Buf<double> dbuf(buf_ref.size());
  scmoe::cuda::router_stats_pack(dbuf.get(), dcounts.get(), dpmean.get(), dlosses.get(), N, S, E, nullptr);
  kt::sync();
  kt::expect_close("router_stats_pack", dbuf.download(), buf_ref, 1e-7, 1e-9);
  D summed = buf_ref;  // as if three ranks had sent the same
  for (double& v : summed) v *= 3;
  I64 counts_ref(E);
  D losses_ref(3);
  scmoe::cpu::router_stats_unpack(counts_ref.data(), losses_ref.data(), summed.data(), Ng, Sg, k, E);
  kt::Buf<double> dsummed(summed);
  scmoe::cuda::router_stats_unpack(dcounts.get(), dlosses.get(), dsummed.get(), Ng, Sg, k, E, nullptr);
  kt::sync();
  kt::expect_equal("router_stats_unpack counts", dcounts.download(), counts_ref);
  kt::expect_close("router_stats_unpack losses", dlosses.download(), losses_ref, 1e-6, 0);
}

// The bias update after a step, and the loads' accumulation: bit for bit the CPU's.
void test_expert_bias_update() {
  const int E = 37;
  std::vector<float> bias = kt::random_vec(E, 5, -0.01f, 0.01f);
  I64 load(E);
  for (int e = 0; e < E; e++) load[e] = (e * 7919) % 23;
  for (bool center : {false, true}) {
    std::vector<float> want = bias;
    I64 lw = load, more(E, 3);
    scmoe::cpu::add_counts(lw.data(), more.data(), E);
    scmoe::cpu::expert_bias_update(want.data(), lw.data(), E, 1e-3, center);
    kt::for_each_schedule(2, [&](int) {
      kt::Buf<float> b(bias);
      kt::Buf<int64_t> l(load), m(more);
      scmoe::cuda::add_counts(l.get(), m.get(), E, nullptr);
      scmoe::cuda::expert_bias_update(b.get(), l.get(), E, 1e-3, center, nullptr);
      kt::sync();
      kt::expect_equal(std::string("expert_bias_update") + (center ? " centred" : ""), b.download(), want);
      kt::expect_equal("expert loads zeroed", l.download(), I64(E, 0));
    });
  }
}

int main() {
  kt::require_device();
  test_stats_pack();
  test_expert_bias_update();
  test_balancing_case(24, 4, 2, true, 8);
  test_balancing_case(30, 7, 3, false, 5);
  test_balancing_case(40, 40, 2, true, 10);  // two experts per lane
  test_balancing_case(12, 256, 2, true, 4);  // eight per lane
  test_case(1, 1, 1, false, 0.7f, 0.3f);
  test_case(37, 4, 2, true, 0.7f, 0.3f);
  test_case(37, 7, 3, false, 0.7f, 0.0f);
  test_case(37, 7, 3, true, 1.3f, 0.9f);
  test_case(61, 16, 2, true, 0.01f, 0.001f);
  test_case(45, 33, 1, false, 0.7f, 0.3f);  // two experts per lane, partly filled
  test_case(19, 100, 3, true, 0.7f, 0.3f);  // four per lane
  test_case(11, 256, 2, true, 0.7f, 0.3f);  // the limit: eight per lane
  // More rows than the grid has warps (as for N > 2048 by default): each warp loops over several rows.
  scmoe::cuda::router_testing_set_block_cap(3);
  test_case(77, 5, 2, true, 0.7f, 0.3f);
  test_case(90, 40, 3, false, 0.7f, 0.3f);
  scmoe::cuda::router_testing_set_block_cap(0);
  test_ties();
  test_limits();
  test_empty();
  test_gate_noise<float>(1, 1e-6f);
  test_gate_noise<float>(1000, 1e-6f);
  test_gate_noise<kt::bf16>(777, 8e-3f);
  TEST_MAIN_END();
}
