// The ranks' configurations compared at the rendezvous (see rank_agreement.h).
#include "train/rank_agreement.h"

#include <cstring>
#include <sstream>
#include <vector>

#include "core/check.h"
#include "core/rng.h"
#include "train/config.h"

namespace scmoe {

bool key_may_differ_per_rank(const std::string& key) {
  return key == "train.threads" || key == "train.log_every" || key == "train.trace_step" ||
         key.rfind("inference.", 0) == 0;
}

void check_ranks_agree(const Config& cfg, Communicator& comm) {
  const int W = comm.world_size();
  if (W < 2) return;
  std::vector<std::pair<std::string, std::string>> kv;
  for (auto& p : config_key_values(cfg))
    if (!key_may_differ_per_rank(p.first)) kv.push_back(p);
  // The same schema first (a different build would have other keys), then a hash per key.
  int64_t n = int64_t(kv.size());
  std::vector<int64_t> counts(W);
  comm.all_gather(&n, counts.data(), 1, DType::i64, nullptr);
  for (int r = 1; r < W; r++)
    SCMOE_CHECK(counts[r] == counts[0], "the ranks run different builds of train: rank "
                                            << r << " has " << counts[r] << " configuration keys, rank 0 has "
                                            << counts[0] << "; start every rank with the same binary");
  std::vector<int64_t> mine(n), all(size_t(n) * W);
  for (int64_t i = 0; i < n; i++) mine[i] = int64_t(hash_string(kv[i].first + "=" + kv[i].second));
  comm.all_gather(mine.data(), all.data(), size_t(n), DType::i64, nullptr);
  int64_t first = -1;
  for (int64_t i = 0; i < n && first < 0; i++)
    for (int r = 1; r < W; r++)
      if (all[size_t(r) * n + i] != all[i]) first = i;
  if (first < 0) return;
  // Everybody's value of that key, for the message every rank prints.
  constexpr size_t kValue = 200;
  std::vector<char> value(kValue, 0), values(kValue * W, 0);
  std::strncpy(value.data(), kv[first].second.c_str(), kValue - 1);
  comm.all_gather(value.data(), values.data(), kValue, DType::u8, nullptr);
  std::ostringstream m;
  m << "the ranks' configurations differ: " << kv[first].first << " is " << std::string(values.data())
    << " on rank 0";
  for (int r = 1; r < W; r++) {
    const std::string v(values.data() + size_t(r) * kValue);
    if (v != std::string(values.data())) m << ", " << v << " on rank " << r;
  }
  m << " (every rank of a run must be started with the same configuration; only train.threads, "
       "train.log_every, "
       "train.trace_step and inference.* may differ)";
  throw Error(m.str());
}

}  // namespace scmoe
