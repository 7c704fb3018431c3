// Sampling (see sampler.h). Probabilities in double whatever T; candidates are ordered by logit then
// by id, so ties and filters are deterministic.
#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/check.h"

namespace scmoe {

void check_sampling(const SamplingOptions& o) {
  SCMOE_CHECK(std::isfinite(o.temperature) && o.temperature >= 0,
              "--temperature must be >= 0 (0: greedy), got " << o.temperature);
  SCMOE_CHECK(o.top_k >= 0, "--top-k must be >= 0 (0: off), got " << o.top_k);
  SCMOE_CHECK(o.top_p > 0 && o.top_p <= 1, "--top-p must be in (0, 1] (1: off), got " << o.top_p);
}

template <class T>
int32_t sample_token(const T* logits, int V, const SamplingOptions& o, Rng& rng) {
  check_sampling(o);
  SCMOE_CHECK(V >= 1, "sample_token: empty vocabulary");
  if (o.temperature == 0) {
    int best = 0;
    for (int i = 1; i < V; i++)
      if (logits[i] > logits[best]) best = i;
    return best;
  }
  // Candidates, most likely first: only as many as the filters can keep are put in order.
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  auto before = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int n = V;
  if (o.top_k > 0 && o.top_k < V) {
    n = o.top_k;
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), before);
  } else if (o.top_p < 1) {
    std::sort(ids.begin(), ids.end(), before);
  }  // else: no filter, any order will do (index order)
  double maxv = -INFINITY;
  for (int i = 0; i < n; i++) maxv = std::max(maxv, double(logits[ids[i]]));
  std::vector<double> p(n);
  double total = 0;
  for (int i = 0; i < n; i++) total += p[i] = std::exp((double(logits[ids[i]]) - maxv) / o.temperature);
  if (o.top_p < 1) {  // ids[0..n) are sorted here: keep the shortest prefix reaching top_p of the mass
    double cum = 0;
    int keep = 0;
    while (keep < n && (keep == 0 || cum < o.top_p * total)) cum += p[keep++];
    n = keep, total = cum;
  }
  double u = rng.uniform() * total;
  for (int i = 0; i < n; i++) {
    if (u < p[i]) return ids[i];
    u -= p[i];
  }
  return ids[n - 1];  // rounding left u at the very top
}

template int32_t sample_token<float>(const float*, int, const SamplingOptions&, Rng&);
template int32_t sample_token<double>(const double*, int, const SamplingOptions&, Rng&);

}  // namespace scmoe
