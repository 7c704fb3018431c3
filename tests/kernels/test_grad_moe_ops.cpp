// MoE ops' backward against central finite differences in float64: router (gates + aux + z losses, sigmoid
// scores, the expert bias, the sequence-level loss; the bias update),
// permute, combine (with dropped assignments) and the cg1 / cg2 combine coefficients.
#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "kernels/cpu/backend.h"  // every CPU kernel
#include "tests/gradcheck.h"

using namespace scmoe;
namespace ops = scmoe::cpu;  // the CPU reference kernels
using V = std::vector<double>;
using I32 = std::vector<int32_t>;
using I64 = std::vector<int64_t>;

// Logits whose per-row values are a shuffled ladder with steps >= 0.6, so a finite-difference step
// never changes the top-k selection (the loss is piecewise smooth in the logits).
static V separated_logits(int N, int E, uint64_t seed) {
  Rng r(seed);
  V l((size_t)N * E);
  for (int n = 0; n < N; n++) {
    std::vector<int> perm(E);
    for (int e = 0; e < E; e++) perm[e] = e;
    for (int e = E - 1; e > 0; e--) std::swap(perm[e], perm[r.next_u64() % (e + 1)]);
    for (int e = 0; e < E; e++) l[(size_t)n * E + e] = 0.8 * perm[e] - 1.5 + 0.1 * (r.uniform() - 0.5);
  }
  return l;
}

// The aux loss with its token fractions f_e frozen at the counts of the unperturbed forward: the
// function whose derivative router_backward's aux term is (Switch treats f_e as a constant).
static double aux_fixed(const V& pmean, const I64& counts, int N, int k) {
  int E = (int)pmean.size();
  double s = 0;
  for (int e = 0; e < E; e++) s += pmean[e] * double(counts[e]);
  return E * s / (double(N) * k);
}

// The balance losses' normalised scores q = p / sum_e p (sigmoid scores; softmax scores already are).
static V normalised(const V& probs, int N, int E, bool sigmoid) {
  V q = probs;
  if (!sigmoid) return q;
  for (int n = 0; n < N; n++) {
    double s = 0;
    for (int e = 0; e < E; e++) s += probs[n * E + e];
    for (int e = 0; e < E; e++) q[n * E + e] = probs[n * E + e] / s;
  }
  return q;
}

// DeepSeek-V3's sequence-level loss with the per-sequence counts frozen: mean over sequences of
// E/(k T) sum_e count_{s,e} mean_t q[t,e].
static double seq_fixed(const V& q, const I32& seq_counts, int N, int E, int k, int T) {
  const int S = N / T;
  double total = 0;
  for (int s = 0; s < S; s++)
    for (int e = 0; e < E; e++) {
      double m = 0;
      for (int t = s * T; t < (s + 1) * T; t++) m += q[t * E + e] / T;
      total += double(E) / (double(k) * T) * seq_counts[s * E + e] * m;
    }
  return total / S;
}

struct RouterCase {
  int k = 1;
  bool renorm = true, sigmoid = false;
  std::vector<float> bias;  // empty: none
  int seq_len = 0;
  RouterSpec spec(int E) const {
    RouterSpec r;
    r.E = E, r.k = k, r.renormalize = renorm, r.sigmoid = sigmoid, r.seq_len = seq_len;
    r.bias = bias.empty() ? nullptr : bias.data();
    return r;
  }
};

// L = sum(R .* topk_gate) + a * aux(counts frozen) + b * z + c * seq(counts frozen), checked w.r.t.
// the logits.
static void check_router(const char* what, V logits, const V& R, int N, int E, const RouterCase& rc, double a,
                         double b, double c) {
  const RouterSpec r = rc.spec(E);
  const int k = rc.k, S = rc.seq_len > 0 ? N / rc.seq_len : 0;
  V probs((size_t)N * E), gate((size_t)N * k), pmean(E);
  I32 idx0((size_t)N * k), idx((size_t)N * k), sc0((size_t)std::max(S, 1) * E), sc((size_t)std::max(S, 1) * E);
  I64 counts0(E), counts(E);
  ops::RouterLosses l0 = ops::router_forward(logits.data(), N, r, probs.data(), idx0.data(), gate.data(),
                                             pmean.data(), counts0.data(), sc0.data());
  CHECK_NEAR(l0.aux, aux_fixed(pmean, counts0, N, k), 1e-12);
  if (S > 0) CHECK_NEAR(l0.seq, seq_fixed(normalised(probs, N, E, rc.sigmoid), sc0, N, E, k, rc.seq_len), 1e-12);
  V probs0 = probs;
  bool selection_moved = false;
  auto loss = [&] {
    ops::RouterLosses ls = ops::router_forward(logits.data(), N, r, probs.data(), idx.data(), gate.data(),
                                               pmean.data(), counts.data(), sc.data());
    // Compared as sets: within a tie of selected experts the order may flip, which is harmless
    // when the caller's R is order-invariant there (see test_router_ties).
    for (int n = 0; n < N; n++)
      for (int j = 0; j < k; j++)
        if (std::count(idx0.begin() + n * k, idx0.begin() + (n + 1) * k, idx[n * k + j]) != 1)
          selection_moved = true;
    double l = dot(R, gate.data()) + a * aux_fixed(pmean, counts0, N, k) + b * ls.z;
    if (S > 0) l += c * seq_fixed(normalised(probs, N, E, rc.sigmoid), sc0, N, E, k, rc.seq_len);
    return l;
  };
  V dlogits((size_t)N * E, 7.0);  // stale values must be overwritten
  ops::router_backward(dlogits.data(), R.data(), logits.data(), probs0.data(), idx0.data(), counts0.data(),
                       sc0.data(), N, r, {a, b, c});
  check_gradient(what, logits, dlogits, loss);
  CHECK(!selection_moved);
}

static void test_router_forward_values(int k, bool renorm) {
  int N = 6, E = 5;
  V logits = separated_logits(N, E, 100 + k), probs(N * E), gate(N * k), pmean(E);
  I32 idx(N * k);
  I64 counts(E);
  RouterCase rc;
  rc.k = k, rc.renorm = renorm;
  ops::RouterLosses ls = ops::router_forward(logits.data(), N, rc.spec(E), probs.data(), idx.data(), gate.data(),
                                             pmean.data(), counts.data(), nullptr);
  double z = 0;
  int64_t total = 0;
  for (int n = 0; n < N; n++) {
    double mx = -1e300, s = 0, ps = 0, gs = 0;
    for (int e = 0; e < E; e++) mx = std::max(mx, logits[n * E + e]);
    for (int e = 0; e < E; e++) s += std::exp(logits[n * E + e] - mx);
    for (int e = 0; e < E; e++) {
      CHECK_NEAR(probs[n * E + e], std::exp(logits[n * E + e] - mx) / s, 1e-15);
      ps += probs[n * E + e];
    }
    CHECK_NEAR(ps, 1.0, 1e-14);
    z += (mx + std::log(s)) * (mx + std::log(s));
    // descending order, and nothing unselected beats the last selected
    double last = probs[n * E + idx[n * k + k - 1]];
    for (int j = 0; j + 1 < k; j++) CHECK(probs[n * E + idx[n * k + j]] > probs[n * E + idx[n * k + j + 1]]);
    for (int e = 0; e < E; e++) {
      bool sel = false;
      for (int j = 0; j < k; j++) sel |= idx[n * k + j] == e;
      if (!sel) CHECK(probs[n * E + e] < last);
    }
    for (int j = 0; j < k; j++) gs += gate[n * k + j];
    if (renorm && k > 1)
      CHECK_NEAR(gs, 1.0, 1e-14);
    else
      for (int j = 0; j < k; j++) CHECK(gate[n * k + j] == probs[n * E + idx[n * k + j]]);
  }
  for (int e = 0; e < E; e++) {
    double pm = 0;
    int64_t c = 0;
    for (int n = 0; n < N; n++) pm += probs[n * E + e] / N;
    for (int i = 0; i < N * k; i++) c += idx[i] == e;
    CHECK_NEAR(pmean[e], pm, 1e-15);
    CHECK(counts[e] == c);
    total += counts[e];
  }
  CHECK(total == (int64_t)N * k);
  CHECK_NEAR(ls.z, z / N, 1e-12);
  CHECK(ls.seq == 0.0);
}

// Sigmoid scores, the expert bias and the sequence statistics on a hand-made case: 2 sequences of 2
// tokens, 3 experts, top-2.
static void test_router_sigmoid_bias_seq_values() {
  const int N = 4, E = 3;
  V logits = {0.0, 1.0, -1.0,   // p = .5, .731, .269
              2.0, 0.0, 0.5,    // p = .881, .5, .622
              -2.0, -1.0, 1.0,  // p = .119, .269, .731
              0.3, 0.2, 0.1};   // p = .574, .550, .525
  RouterCase rc;
  rc.k = 2, rc.sigmoid = true, rc.seq_len = 2;
  rc.bias = {0.f, 0.f, 0.4f};  // steers the choice towards expert 2, never the gates
  V probs(N * E), gate(N * 2), pmean(E);
  I32 idx(N * 2), sc(2 * E);
  I64 counts(E);
  ops::RouterLosses ls = ops::router_forward(logits.data(), N, rc.spec(E), probs.data(), idx.data(), gate.data(),
                                             pmean.data(), counts.data(), sc.data());
  auto sig = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  for (int i = 0; i < N * E; i++) CHECK_NEAR(probs[i], sig(logits[i]), 1e-15);
  // Keys p + bias: row 0 {.5, .731, .669} -> 1, 2; row 1 {.881, .5, 1.022} -> 2, 0; row 2 -> 2, 1;
  // row 3 {.574, .550, .925} -> 2, 0.
  CHECK(idx == I32({1, 2, 2, 0, 2, 1, 2, 0}));
  // Gates: the chosen scores (without the bias) over their sum.
  CHECK_NEAR(gate[0], sig(1.0) / (sig(1.0) + sig(-1.0)), 1e-15);
  CHECK_NEAR(gate[2] + gate[3], 1.0, 1e-15);
  CHECK_NEAR(gate[2], sig(0.5) / (sig(0.5) + sig(2.0)), 1e-15);
  CHECK(counts == I64({2, 2, 4}));
  CHECK(sc == I32({1, 1, 2, 1, 1, 2}));
  const V q = normalised(probs, N, E, true);
  double aux = 0;
  for (int e = 0; e < E; e++) {
    double m = 0;
    for (int n = 0; n < N; n++) m += q[n * E + e] / N;
    CHECK_NEAR(pmean[e], m, 1e-15);
    aux += m * double(counts[e]);
  }
  CHECK_NEAR(ls.aux, aux * E / (double(N) * 2), 1e-14);
  // Sequence 0: counts {1,1,2}; sequence 1: {1,1,2}. seq = mean_s 3/(2*2) sum_e c_se mean_t q.
  double seq = 0;
  for (int s = 0; s < 2; s++)
    for (int e = 0; e < E; e++) seq += 0.75 * sc[s * E + e] * (q[(2 * s) * E + e] + q[(2 * s + 1) * E + e]) / 2;
  CHECK_NEAR(ls.seq, seq / 2, 1e-14);
}

static void test_router(int k, bool renorm) {
  int N = 6, E = 5;
  V logits = separated_logits(N, E, 20 + k), R = random_vec(N * k, 30 + k);
  char name[96];
  RouterCase rc;
  rc.k = k, rc.renorm = renorm;
  std::snprintf(name, sizeof name, "router dlogits k=%d renorm=%d", k, (int)renorm);
  check_router(name, logits, R, N, E, rc, 0.7, 0.3, 0.0);
  std::snprintf(name, sizeof name, "router aux only k=%d renorm=%d", k, (int)renorm);
  check_router(name, logits, V(N * k, 0.0), N, E, rc, 1.3, 0.0, 0.0);
  std::snprintf(name, sizeof name, "router z only k=%d renorm=%d", k, (int)renorm);
  check_router(name, logits, V(N * k, 0.0), N, E, rc, 0.0, 0.9, 0.0);
  // Sigmoid scores, an expert bias that changes choices, and the sequence-level loss (3 sequences of 2).
  for (int sigmoid = 0; sigmoid < 2; sigmoid++) {
    rc.sigmoid = sigmoid, rc.seq_len = 2, rc.bias = {0.21f, -0.13f, 0.05f, 0.34f, -0.27f};
    std::snprintf(name, sizeof name, "router sigmoid=%d bias seq k=%d renorm=%d", sigmoid, k, (int)renorm);
    check_router(name, logits, R, N, E, rc, 0.7, 0.3, 0.5);
    std::snprintf(name, sizeof name, "router seq only sigmoid=%d k=%d renorm=%d", sigmoid, k, (int)renorm);
    check_router(name, logits, V(N * k, 0.0), N, E, rc, 0.0, 0.0, 1.1);
  }
}

// The bias enters no gradient: with a bias too small to change a choice, dlogits are bit-identical to
// those without it, and a bias that changes choices gives the gradient of the gates it chose (checked
// by finite differences above).
static void test_bias_leaves_gradients() {
  const int N = 6, E = 5, k = 2;
  V logits = separated_logits(N, E, 77), R = random_vec(N * k, 78);
  for (int sigmoid = 0; sigmoid < 2; sigmoid++) {
    RouterCase plain, biased;
    plain.k = biased.k = k, plain.sigmoid = biased.sigmoid = sigmoid;
    biased.bias = {1e-9f, -1e-9f, 2e-9f, 0.f, -3e-9f};
    V grads[2];
    for (int i = 0; i < 2; i++) {
      const RouterCase& rc = i ? biased : plain;
      V probs(N * E), gate(N * k), pmean(E);
      I32 idx(N * k);
      I64 counts(E);
      ops::router_forward(logits.data(), N, rc.spec(E), probs.data(), idx.data(), gate.data(), pmean.data(),
                          counts.data(), nullptr);
      grads[i].assign(N * E, 0.0);
      ops::router_backward(grads[i].data(), R.data(), logits.data(), probs.data(), idx.data(), counts.data(), nullptr,
                           N, rc.spec(E), {0.7, 0.3, 0.0});
    }
    CHECK(grads[0] == grads[1]);
  }
}

// bias_e += rate * sign(mean load - load_e), then re-centred; the loads are zeroed.
static void test_expert_bias_update() {
  std::vector<float> bias = {0.f, 0.f, 0.f, 0.f};
  I64 load = {10, 2, 6, 6};  // mean 6
  ops::expert_bias_update(bias.data(), load.data(), 4, 1e-3, true);
  CHECK(bias == std::vector<float>({-1e-3f, 1e-3f, 0.f, 0.f}));  // sum 0: centring changes nothing
  CHECK(load == I64({0, 0, 0, 0}));
  bias = {0.5f, 0.f, 0.f, 0.f};
  load = {1, 3, 3, 1};  // mean 2: experts 0 and 3 up, 1 and 2 down
  ops::expert_bias_update(bias.data(), load.data(), 4, 0.25, false);
  CHECK(bias == std::vector<float>({0.75f, -0.25f, -0.25f, 0.25f}));
  load = {1, 3, 3, 1};
  ops::expert_bias_update(bias.data(), load.data(), 4, 0.25, true);  // {1, -.5, -.5, .5} - mean .125
  CHECK(bias == std::vector<float>({0.875f, -0.625f, -0.625f, 0.375f}));
  I64 acc = {1, 2, 3, 4};
  ops::add_counts(acc.data(), I64({10, 20, 30, 40}).data(), 4);
  CHECK(acc == I64({11, 22, 33, 44}));
}

static void test_router_ties() {
  int E = 5;
  V probs(E), pmean(E), gate(E);
  I32 idx(E);
  I64 counts(E);
  auto top = [&](const V& l, int k) {
    RouterCase rc;
    rc.k = k, rc.renorm = false;
    ops::router_forward(l.data(), 1, rc.spec(E), probs.data(), idx.data(), gate.data(), pmean.data(), counts.data(),
                        nullptr);
    return I32(idx.begin(), idx.begin() + k);
  };
  V row = {1, 3, 3, 0, 3};
  CHECK(top(row, 1) == I32({1}));
  CHECK(top(row, 2) == I32({1, 2}));
  CHECK(top(row, 3) == I32({1, 2, 4}));
  CHECK(top(row, 5) == I32({1, 2, 4, 0, 3}));
  CHECK(top(V(E, 0.0), 3) == I32({0, 1, 2}));
  CHECK(top(V(E, -2.5), 2) == I32({0, 1}));
  CHECK(top(V{0, 0, 0, 0, 5}, 2) == I32({4, 0}));
  // Gradients still hold where ties do not straddle the selection boundary: ties among unselected
  // experts, and a tie inside the selected set. In the latter the descending order between the tied
  // pair flips under perturbation, so that token's R is the same for both choices (order-invariant).
  int N = 4, k = 2;
  V l = {0,   2,   -1,  2,   -1,  //
         3,   0,   0,   1.5, 0,   //
         0.5, 0.5, 0.5, 2.5, 2,   //
         -1,  -1,  1,   -1,  0.2};
  V R = random_vec(N * k, 77);
  R[1] = R[0];
  RouterCase rc;
  rc.k = k;
  for (int renorm = 0; renorm < 2; renorm++) {
    rc.renorm = renorm;
    check_router(renorm ? "router dlogits, ties, renorm" : "router dlogits, ties", l, R, N, E, rc, 0.7, 0.3, 0.0);
  }
  V l1 = {0,  0,   2,  0,  0,  //
          -1, 1.7, -1, -1, -1};
  rc.k = 1, rc.renorm = false;
  check_router("router dlogits, ties, k=1", l1, random_vec(2, 78), 2, E, rc, 0.7, 0.3, 0.0);
}

// A plan with drops: 7 tokens x 2 choices over 3 experts with room for 3 rows each.
struct Plan {
  int N = 7, k = 2, E = 3;
  I32 idx, pos;
  I64 counts, offsets;
  int64_t dropped = 0;
  Plan() {
    Rng r(5);
    for (int n = 0; n < N; n++) {
      int a = (int)(r.next_u64() % E), b = (a + 1 + (int)(r.next_u64() % (E - 1))) % E;
      idx.push_back(a);
      idx.push_back(b);
    }
    pos.resize(N * k);
    counts.resize(E);
    offsets.resize(E + 1);
    dropped = ops::dispatch_plan(idx.data(), N, k, E, 3, pos.data(), counts.data(), offsets.data());
  }
};

static void test_permute() {
  Plan p;
  CHECK(p.dropped > 0);
  int C = 4, rows = (int)p.offsets[p.E];
  V x = random_vec(p.N * C, 40), R = random_vec(rows * C, 41), xe(rows * C);
  auto loss = [&] {
    ops::permute_forward(xe.data(), x.data(), p.pos.data(), p.N, p.k, C);
    return dot(R, xe.data());
  };
  V dx(p.N * C, 7.0);
  ops::permute_backward(dx.data(), R.data(), p.pos.data(), p.N, p.k, C, false);
  check_gradient("permute dx", x, dx, loss);
  V dx2(p.N * C, 1.0);
  ops::permute_backward(dx2.data(), R.data(), p.pos.data(), p.N, p.k, C, true);
  for (int i = 0; i < p.N * C; i++) CHECK_NEAR(dx2[i], dx[i] + 1.0, 1e-12);
}

static void test_combine() {
  Plan p;
  CHECK(p.dropped > 0);
  int C = 4, rows = (int)p.offsets[p.E];
  V ye = random_vec(rows * C, 42), gate = random_vec(p.N * p.k, 43), R = random_vec(p.N * C, 44), y(p.N * C);
  auto loss = [&] {
    ops::combine_forward(y.data(), ye.data(), gate.data(), p.pos.data(), p.N, p.k, C);
    return dot(R, y.data());
  };
  V dye(rows * C, 7.0), dgate(p.N * p.k, 7.0);  // every kept row and every gate must be written
  ops::combine_backward(dye.data(), dgate.data(), R.data(), ye.data(), gate.data(), p.pos.data(), p.N, p.k,
                        C);
  check_gradient("combine dye", ye, dye, loss);
  check_gradient("combine dgate", gate, dgate, loss);
  for (int i = 0; i < p.N * p.k; i++)
    if (p.pos[i] < 0) CHECK(dgate[i] == 0.0);
}

static void test_cg1() {
  int N = 5, C = 6;
  V z = random_vec(N, 50, 2.0), se = random_vec(N * C, 51), R = random_vec(N * C, 52), out(N * C), coef(N);
  z[0] = 40;  // saturated sigmoids on both sides stay finite
  z[1] = -40;
  auto loss = [&] {
    ops::cg1_forward(out.data(), coef.data(), z.data(), se.data(), N, C);
    return dot(R, out.data());
  };
  loss();
  CHECK(coef[0] <= 1.0 && coef[1] > 0.0);
  V dse(N * C, 7.0), dz(N, 7.0);
  ops::cg1_backward(dse.data(), dz.data(), R.data(), coef.data(), se.data(), N, C);
  check_gradient("cg1 dz", z, dz, loss);
  check_gradient("cg1 dse", se, dse, loss);
}

static void test_cg2() {
  int N = 5, C = 6;
  V z = random_vec(N * 2, 53, 2.0), se = random_vec(N * C, 54), moe = random_vec(N * C, 55),
    R = random_vec(N * C, 56), out(N * C), alpha(N * 2);
  z[0] = 50;  // extreme logit gap: both weights must stay in [0, 1] and sum to 1
  z[1] = -50;
  auto loss = [&] {
    ops::cg2_forward(out.data(), alpha.data(), z.data(), se.data(), moe.data(), N, C);
    return dot(R, out.data());
  };
  loss();
  for (int n = 0; n < N; n++) CHECK_NEAR(alpha[2 * n] + alpha[2 * n + 1], 1.0, 1e-15);
  CHECK(alpha[1] > 0.0);
  V dse(N * C, 7.0), dmoe(N * C, 7.0), dz(N * 2, 7.0);
  ops::cg2_backward(dse.data(), dmoe.data(), dz.data(), R.data(), alpha.data(), se.data(), moe.data(), N, C);
  check_gradient("cg2 dz", z, dz, loss);
  check_gradient("cg2 dse", se, dse, loss);
  check_gradient("cg2 dmoe", moe, dmoe, loss);
}

int main() {
  for (int k = 1; k <= 3; k++)
    for (int renorm = 0; renorm < 2; renorm++) {
      test_router_forward_values(k, renorm);
      test_router(k, renorm);
    }
  test_router_sigmoid_bias_seq_values();
  test_bias_leaves_gradients();
  test_expert_bias_update();
  test_router_ties();
  test_permute();
  test_combine();
  test_cg1();
  test_cg2();
  TEST_MAIN_END();
}
