// Sampling (infer/sampler.h): greedy is argmax (ties to the lower id); top-k = 1 and a tiny top-p are
// greedy too; filters keep exactly the tokens they should; frequencies follow the softmax; the same
// seed gives the same tokens, different seeds different ones; bad options are errors.
#include <cmath>
#include <cstdio>
#include <set>
#include <vector>

#include "core/rng.h"
#include "infer/sampler.h"
#include "tests/testing.h"

using namespace scmoe;

namespace {

std::vector<int32_t> draw(const std::vector<float>& logits, SamplingOptions o, uint64_t seed, int n) {
  Rng rng(seed);
  std::vector<int32_t> out;
  for (int i = 0; i < n; i++) out.push_back(sample_token(logits.data(), int(logits.size()), o, rng));
  return out;
}

void test_greedy_and_equivalents() {
  Rng r(1);
  for (int trial = 0; trial < 50; trial++) {
    std::vector<float> lg(37);
    for (float& x : lg) x = float(3 * r.normal());
    int best = 0;
    for (int i = 1; i < 37; i++)
      if (lg[i] > lg[best]) best = i;
    SamplingOptions greedy;
    greedy.temperature = 0;
    SamplingOptions k1;
    k1.top_k = 1, k1.temperature = 0.5 + trial * 0.1;
    SamplingOptions p0;
    p0.top_p = 1e-9, p0.temperature = 2.0;
    CHECK(draw(lg, greedy, trial, 1)[0] == best);
    CHECK(draw(lg, k1, trial, 5) == std::vector<int32_t>(5, best));
    CHECK(draw(lg, p0, trial, 5) == std::vector<int32_t>(5, best));
  }
  // Ties go to the lower id, in every mode that reduces to one token.
  std::vector<float> tie = {0.f, 2.f, 1.f, 2.f};
  SamplingOptions g;
  g.temperature = 0;
  CHECK(draw(tie, g, 0, 1)[0] == 1);
  SamplingOptions k1;
  k1.top_k = 1;
  CHECK(draw(tie, k1, 0, 3) == std::vector<int32_t>(3, 1));
}

void test_filters() {
  // Probabilities 0.4 0.3 0.2 0.1 (ids 2 0 3 1 in order of likelihood).
  std::vector<float> lg = {std::log(0.3f), std::log(0.1f), std::log(0.4f), std::log(0.2f)};
  SamplingOptions k2;
  k2.top_k = 2;
  std::set<int32_t> seen;
  for (int32_t t : draw(lg, k2, 3, 400)) seen.insert(t);
  CHECK((seen == std::set<int32_t>{0, 2}));
  SamplingOptions p;
  p.top_p = 0.85;  // 0.4 + 0.3 + 0.2 reach it
  seen.clear();
  for (int32_t t : draw(lg, p, 4, 400)) seen.insert(t);
  CHECK((seen == std::set<int32_t>{0, 2, 3}));
  // Frequencies follow the (tempered) softmax: 20000 draws, each within 0.015 of its probability.
  SamplingOptions t2;
  t2.temperature = 2;
  std::vector<int> count(4, 0);
  for (int32_t t : draw(lg, t2, 5, 20000)) count[t]++;
  double z = 0;
  for (float x : lg) z += std::exp(x / 2);
  for (int i = 0; i < 4; i++) {
    const double want = std::exp(lg[i] / 2) / z, got = count[i] / 20000.0;
    std::printf("token %d: probability %.4f, frequency %.4f\n", i, want, got);
    CHECK(std::fabs(got - want) < 0.015);
  }
}

void test_seeds() {
  std::vector<float> flat(50, 0.f);  // uniform: every draw matters
  SamplingOptions o;
  const auto a = draw(flat, o, 42, 30), b = draw(flat, o, 42, 30), c = draw(flat, o, 43, 30);
  CHECK(a == b);
  CHECK(a != c);
  std::vector<double> d(50, 0.0);  // the double instantiation draws the same tokens
  Rng rng(42);
  std::vector<int32_t> ad;
  for (int i = 0; i < 30; i++) ad.push_back(sample_token(d.data(), 50, o, rng));
  CHECK(ad == a);
}

void test_errors() {
  std::vector<float> lg(3, 0.f);
  Rng r(0);
  SamplingOptions o;
  o.temperature = -1;
  CHECK_THROWS_WITH(sample_token(lg.data(), 3, o, r), "--temperature must be >= 0");
  o = SamplingOptions{};
  o.top_k = -2;
  CHECK_THROWS_WITH(sample_token(lg.data(), 3, o, r), "--top-k must be >= 0");
  o = SamplingOptions{};
  o.top_p = 0;
  CHECK_THROWS_WITH(sample_token(lg.data(), 3, o, r), "--top-p must be in (0, 1]");
  o.top_p = 1.5;
  CHECK_THROWS_WITH(check_sampling(o), "--top-p must be in (0, 1]");
}

}  // namespace

int main() {
  test_greedy_and_equivalents();
  test_filters();
  test_seeds();
  test_errors();
  TEST_MAIN_END();
}
