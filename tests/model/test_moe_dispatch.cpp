// Token dispatch under capacity: drop order and counts on edge cases, the permute -> expert -> combine
// round trip, and bit-identical results across runs and thread counts.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cpu/backend.h"  // every CPU kernel
#include "tests/gradcheck.h"

using namespace scmoe;
namespace ops = scmoe::cpu;  // the CPU reference kernels
using V = std::vector<double>;
using I32 = std::vector<int32_t>;
using I64 = std::vector<int64_t>;

struct Dispatch {
  I32 pos;
  I64 counts, offsets;
  int64_t dropped;
};

// A softmax router of E experts, top-k.
static RouterSpec spec(int E, int k, bool renormalize) {
  RouterSpec r;
  r.E = E, r.k = k, r.renormalize = renormalize;
  return r;
}

static Dispatch plan(const I32& idx, int N, int k, int E, int64_t capacity) {
  Dispatch d{I32((size_t)N * k), I64(E), I64(E + 1), 0};
  d.dropped =
      ops::dispatch_plan(idx.data(), N, k, E, capacity, d.pos.data(), d.counts.data(), d.offsets.data());
  return d;
}

// Every token to expert 2 with room for 4: the first 4 tokens keep their rows in token order, the
// other 6 are dropped; the empty experts have count 0 and zero-width segments.
static void test_all_to_one() {
  int N = 10, k = 1, E = 4;
  Dispatch d = plan(I32(N, 2), N, k, E, 4);
  CHECK(d.dropped == 6);
  CHECK(d.counts == I64({0, 0, 4, 0}));
  CHECK(d.offsets == I64({0, 0, 0, 4, 4}));
  for (int n = 0; n < N; n++) CHECK(d.pos[n] == (n < 4 ? n : -1));
  // dropless capacity keeps them all
  Dispatch all = plan(I32(N, 2), N, k, E, (int64_t)N * k);
  CHECK(all.dropped == 0);
  CHECK(all.counts == I64({0, 0, 10, 0}));
  for (int n = 0; n < N; n++) CHECK(all.pos[n] == n);
  // capacity 0 drops everything and leaves an empty buffer
  Dispatch none = plan(I32(N, 2), N, k, E, 0);
  CHECK(none.dropped == N);
  CHECK(none.offsets[E] == 0);
  for (int n = 0; n < N; n++) CHECK(none.pos[n] == -1);
}

// Choice-major fill: every first choice is placed before any second choice, so with capacity 3 the
// second choices of tokens 2 (to expert 1) and 3 (to expert 0) are the ones dropped.
static void test_choice_major_order() {
  int N = 4, k = 2, E = 3;
  I32 idx = {0, 1, 1, 0, 0, 1, 1, 0};  // token n: (first, second); expert 2 gets nothing
  Dispatch d = plan(idx, N, k, E, 3);
  CHECK(d.dropped == 2);
  CHECK(d.counts == I64({3, 3, 0}));
  CHECK(d.offsets == I64({0, 3, 6, 6}));
  // expert 0 rows: t0 (1st), t2 (1st), t1 (2nd); expert 1 rows: t1 (1st), t3 (1st), t0 (2nd)
  CHECK(d.pos == I32({0, 5, 3, 2, 1, -1, 4, -1}));
  Dispatch dl = plan(idx, N, k, E, (int64_t)N * k);
  CHECK(dl.dropped == 0);
  CHECK(dl.pos == I32({0, 6, 4, 2, 1, 7, 5, 3}));
}

// k = E: each expert gets every token exactly once, segments of N rows each.
static void test_k_equals_E() {
  int N = 9, E = 4, k = E;
  V logits = random_vec(N * E, 3), probs(N * E), gate(N * k), pmean(E);
  I32 idx(N * k);
  I64 rc(E);
  ops::router_forward(logits.data(), N, spec(E, k, true), probs.data(), idx.data(), gate.data(), pmean.data(),
                      rc.data(), nullptr);
  for (int e = 0; e < E; e++) CHECK(rc[e] == N);
  Dispatch d = plan(idx, N, k, E, N);
  CHECK(d.dropped == 0);
  for (int e = 0; e <= E; e++) CHECK(d.offsets[e] == (int64_t)e * N);
  std::vector<int> seen(N * E, 0);
  for (int n = 0; n < N; n++)
    for (int j = 0; j < k; j++) {
      int e = idx[n * k + j], r = d.pos[n * k + j];
      CHECK(r >= d.offsets[e] && r < d.offsets[e + 1]);
      seen[r]++;
    }
  for (int r = 0; r < N * E; r++) CHECK(seen[r] == 1);
}

// permute -> identity experts -> combine gives sum over kept choices of gate * x; backward of the
// same chain gives dx = sum over kept choices of gate * dy.
static void test_round_trip() {
  int N = 23, E = 5, k = 2, C = 7;
  V logits = random_vec(N * E, 4, 2.0), x = random_vec(N * C, 5), probs(N * E), gate(N * k), pmean(E);
  I32 idx(N * k);
  I64 rc(E);
  ops::router_forward(logits.data(), N, spec(E, k, true), probs.data(), idx.data(), gate.data(), pmean.data(),
                      rc.data(), nullptr);
  Dispatch d = plan(idx, N, k, E, 3);  // 15 rows for 46 assignments: many are dropped
  CHECK(d.dropped > 0);
  CHECK(d.dropped + d.offsets[E] == (int64_t)N * k);
  int rows = (int)d.offsets[E];
  V xe(rows * C), y(N * C, 7.0);
  ops::permute_forward(xe.data(), x.data(), d.pos.data(), N, k, C);
  ops::combine_forward(y.data(), xe.data(), gate.data(), d.pos.data(), N, k, C);
  int fully_dropped = 0;
  for (int n = 0; n < N; n++) {
    double g = 0;
    for (int j = 0; j < k; j++)
      if (d.pos[n * k + j] >= 0) g += gate[n * k + j];
    fully_dropped += g == 0;
    for (int c = 0; c < C; c++) CHECK_NEAR(y[n * C + c], g * x[n * C + c], 1e-14);
  }
  CHECK(fully_dropped > 0);  // exercises the all-dropped token whose stale output must become 0
  std::printf("  round trip: %d rows, %lld dropped, %d tokens fully dropped\n", rows, (long long)d.dropped,
              fully_dropped);
  V dy = random_vec(N * C, 6), dye(rows * C), dgate(N * k), dx(N * C);
  ops::combine_backward(dye.data(), dgate.data(), dy.data(), xe.data(), gate.data(), d.pos.data(), N, k, C);
  ops::permute_backward(dx.data(), dye.data(), d.pos.data(), N, k, C, false);
  for (int n = 0; n < N; n++) {
    double g = 0;
    for (int j = 0; j < k; j++)
      if (d.pos[n * k + j] >= 0) g += gate[n * k + j];
    for (int c = 0; c < C; c++) CHECK_NEAR(dx[n * C + c], g * dy[n * C + c], 1e-14);
  }
}

static void test_errors() {
  I32 pos(2);
  I64 counts(3), offsets(4);
  I32 bad = {0, 3};
  CHECK_THROWS_WITH(ops::dispatch_plan(bad.data(), 2, 1, 3, 2, pos.data(), counts.data(), offsets.data()),
                    "outside [0, 3)");
  I32 ok = {0, 1};
  CHECK_THROWS_WITH(ops::dispatch_plan(ok.data(), 2, 1, 3, -1, pos.data(), counts.data(), offsets.data()),
                    "negative capacity");
  V l(6), p(6), g(8), pm(3);
  I32 idx(8);
  CHECK_THROWS_WITH(
      ops::router_forward(l.data(), 2, spec(3, 4, false), p.data(), idx.data(), g.data(), pm.data(), counts.data(),
                          nullptr),
      "1 <= k <= E");
}

// The whole forward and backward chain once; every output concatenated as bytes.
template <class T>
static std::vector<unsigned char> run_chain(int threads) {
  omp_set_num_threads(threads);
  int N = 301, E = 6, k = 2, C = 33;
  auto cv = [](const V& v) { return std::vector<T>(v.begin(), v.end()); };
  std::vector<T> logits = cv(random_vec(N * E, 7, 2.0)), x = cv(random_vec(N * C, 8)),
                 se = cv(random_vec(N * C, 9)), zg = cv(random_vec(N * 2, 10)),
                 dy = cv(random_vec(N * C, 11));
  std::vector<T> probs(N * E), gate(N * k), dlogits(N * E);
  V pmean(E);
  I32 idx(N * k);
  I64 rc(E);
  ops::RouterLosses ls = ops::router_forward(logits.data(), N, spec(E, k, true), probs.data(), idx.data(),
                                             gate.data(), pmean.data(), rc.data(), nullptr);
  Dispatch d = plan(idx, N, k, E, 2 * ((N + E - 1) / E));
  int rows = (int)d.offsets[E];
  std::vector<T> xe(rows * C), y(N * C), dye(rows * C), dgate(N * k), dx(N * C);
  ops::permute_forward(xe.data(), x.data(), d.pos.data(), N, k, C);
  ops::combine_forward(y.data(), xe.data(), gate.data(), d.pos.data(), N, k, C);
  ops::combine_backward(dye.data(), dgate.data(), dy.data(), xe.data(), gate.data(), d.pos.data(), N, k, C);
  ops::permute_backward(dx.data(), dye.data(), d.pos.data(), N, k, C, false);
  ops::router_backward(dlogits.data(), dgate.data(), logits.data(), probs.data(), idx.data(), rc.data(), nullptr, N,
                       spec(E, k, true), {0.01, 0.001, 0.0});
  std::vector<T> o1(N * C), coef(N), dse(N * C), dz(N), o2(N * C), alpha(N * 2), dse2(N * C), dmoe(N * C),
      dz2(N * 2);
  ops::cg1_forward(o1.data(), coef.data(), zg.data(), se.data(), N, C);
  ops::cg1_backward(dse.data(), dz.data(), dy.data(), coef.data(), se.data(), N, C);
  ops::cg2_forward(o2.data(), alpha.data(), zg.data(), se.data(), y.data(), N, C);
  ops::cg2_backward(dse2.data(), dmoe.data(), dz2.data(), dy.data(), alpha.data(), se.data(), y.data(), N, C);
  std::vector<unsigned char> bytes;
  auto put = [&](const void* p, size_t n) {
    const unsigned char* b = static_cast<const unsigned char*>(p);
    bytes.insert(bytes.end(), b, b + n);
  };
  auto putv = [&](const auto& v) { put(v.data(), v.size() * sizeof(v[0])); };
  put(&ls, sizeof ls);
  put(&d.dropped, sizeof d.dropped);
  putv(probs), putv(gate), putv(pmean), putv(idx), putv(rc), putv(d.pos), putv(d.counts), putv(d.offsets);
  putv(xe), putv(y), putv(dye), putv(dgate), putv(dx), putv(dlogits);
  putv(o1), putv(coef), putv(dse), putv(dz), putv(o2), putv(alpha), putv(dse2), putv(dmoe), putv(dz2);
  return bytes;
}

template <class T>
static void test_determinism(const char* what) {
  int maxt = std::max(4, omp_get_max_threads());
  auto a = run_chain<T>(maxt), b = run_chain<T>(maxt), one = run_chain<T>(1), two = run_chain<T>(2),
       three = run_chain<T>(3);
  CHECK(a == b);
  CHECK(one == two);
  CHECK(one == three);
  CHECK(one == a);
  std::printf("  determinism (%s): %zu bytes identical across runs and 1/2/3/%d threads: %s\n", what,
              a.size(), maxt, (a == b && one == two && one == three && one == a) ? "yes" : "NO");
  omp_set_num_threads(maxt);
}

int main() {
  test_all_to_one();
  test_choice_major_order();
  test_k_equals_E();
  test_round_trip();
  test_errors();
  test_determinism<double>("double");
  test_determinism<float>("float");
  TEST_MAIN_END();
}
