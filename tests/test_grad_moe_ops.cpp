// MoE ops' backward against central finite differences in float64: router (gates + aux + z losses),
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

// L = sum(R .* topk_gate) + a * aux(counts frozen) + b * z, checked w.r.t. the logits.
static void check_router(const char* what, V logits, const V& R, int N, int E, int k, bool renorm, double a,
                         double b) {
  V probs((size_t)N * E), gate((size_t)N * k), pmean(E);
  I32 idx0((size_t)N * k), idx((size_t)N * k);
  I64 counts0(E), counts(E);
  ops::RouterLosses l0 = ops::router_forward(logits.data(), N, E, k, renorm, probs.data(), idx0.data(),
                                             gate.data(), pmean.data(), counts0.data());
  CHECK_NEAR(l0.aux, aux_fixed(pmean, counts0, N, k), 1e-12);
  V probs0 = probs;
  bool selection_moved = false;
  auto loss = [&] {
    ops::RouterLosses ls = ops::router_forward(logits.data(), N, E, k, renorm, probs.data(), idx.data(),
                                               gate.data(), pmean.data(), counts.data());
    // Compared as sets: within a tie of selected experts the order may flip, which is harmless
    // when the caller's R is order-invariant there (see test_router_ties).
    for (int n = 0; n < N; n++)
      for (int j = 0; j < k; j++)
        if (std::count(idx0.begin() + n * k, idx0.begin() + (n + 1) * k, idx[n * k + j]) != 1)
          selection_moved = true;
    return dot(R, gate.data()) + a * aux_fixed(pmean, counts0, N, k) + b * ls.z;
  };
  V dlogits((size_t)N * E, 7.0);  // stale values must be overwritten
  ops::router_backward(dlogits.data(), R.data(), logits.data(), probs0.data(), idx0.data(), counts0.data(), N,
                       E, k, renorm, a, b);
  check_gradient(what, logits, dlogits, loss);
  CHECK(!selection_moved);
}

static void test_router_forward_values(int k, bool renorm) {
  int N = 6, E = 5;
  V logits = separated_logits(N, E, 100 + k), probs(N * E), gate(N * k), pmean(E);
  I32 idx(N * k);
  I64 counts(E);
  ops::RouterLosses ls = ops::router_forward(logits.data(), N, E, k, renorm, probs.data(), idx.data(),
                                             gate.data(), pmean.data(), counts.data());
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
}

static void test_router(int k, bool renorm) {
  int N = 6, E = 5;
  V logits = separated_logits(N, E, 20 + k), R = random_vec(N * k, 30 + k);
  char name[64];
  std::snprintf(name, sizeof name, "router dlogits k=%d renorm=%d", k, (int)renorm);
  check_router(name, logits, R, N, E, k, renorm, 0.7, 0.3);
  std::snprintf(name, sizeof name, "router aux only k=%d renorm=%d", k, (int)renorm);
  check_router(name, logits, V(N * k, 0.0), N, E, k, renorm, 1.3, 0.0);
  std::snprintf(name, sizeof name, "router z only k=%d renorm=%d", k, (int)renorm);
  check_router(name, logits, V(N * k, 0.0), N, E, k, renorm, 0.0, 0.9);
}

static void test_router_ties() {
  int E = 5;
  V probs(E), pmean(E), gate(E);
  I32 idx(E);
  I64 counts(E);
  auto top = [&](const V& l, int k) {
    ops::router_forward(l.data(), 1, E, k, false, probs.data(), idx.data(), gate.data(), pmean.data(),
                        counts.data());
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
  for (int renorm = 0; renorm < 2; renorm++)
    check_router(renorm ? "router dlogits, ties, renorm" : "router dlogits, ties", l, R, N, E, k, renorm, 0.7,
                 0.3);
  V l1 = {0,  0,   2,  0,  0,  //
          -1, 1.7, -1, -1, -1};
  check_router("router dlogits, ties, k=1", l1, random_vec(2, 78), 2, E, 1, false, 0.7, 0.3);
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
  test_router_ties();
  test_permute();
  test_combine();
  test_cg1();
  test_cg2();
  TEST_MAIN_END();
}
