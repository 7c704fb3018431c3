// DataLoader: checks the shards, numbers their windows, orders them per epoch (seeded shuffle) and
// hands each rank its slice of every global batch.
#include "data/loader.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/check.h"
#include "core/rng.h"

namespace scmoe {

namespace {

// splitmix64 (core/rng.h) rather than std::shuffle and the std distributions, whose output differs
// between standard libraries: a seed means the same data order everywhere.

// Uniform integer in [0, bound) by rejection, so no value is favoured (plain modulo would be biased).
uint64_t uniform_below(uint64_t& state, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
  for (;;) {
    const uint64_t r = splitmix64(state);
    if (r >= threshold) return r % bound;
  }
}

// Each epoch gets its own stream: the seed and the epoch are mixed so that nearby seeds and epochs
// do not produce related orders.
uint64_t epoch_stream(uint64_t seed, uint64_t epoch) {
  uint64_t e = epoch;
  uint64_t s = seed ^ splitmix64(e);
  splitmix64(s);
  return s;
}

}  // namespace

// The header, then every token against the vocabulary: data that cannot train fails now, naming the
// shard, rather than at the window (or the final evaluation) that reads it.
DataLoader::Shard DataLoader::open_shard(const std::string& path, int seq_len, int vocab_size,
                                         const std::string& key) {
  Shard s;
  s.info = read_shard_info(path);
  const int64_t n = s.info.num_tokens;
  s.windows = n >= int64_t{seq_len} + 1 ? static_cast<uint64_t>((n - 1) / seq_len) : 0;
  check_shard_tokens(s.info, vocab_size, key);
  return s;
}

DataLoader::DataLoader(const std::string& pattern, const std::string& key, int seq_len, int vocab_size,
                       bool shuffle, uint64_t seed)
    : key_(key), seq_len_(seq_len), vocab_size_(vocab_size), shuffle_(shuffle), seed_(seed) {
  SCMOE_CHECK(seq_len >= 1, key << ": sequence length must be >= 1, got " << seq_len);
  SCMOE_CHECK(vocab_size >= 1, key << ": vocabulary size must be >= 1, got " << vocab_size);
  for (const std::string& path : glob_shards(pattern, key)) {
    shards_.push_back(open_shard(path, seq_len, vocab_size, key));
    Shard& s = shards_.back();
    s.first_window = num_windows_;
    num_windows_ += s.windows;
    num_tokens_ += s.info.num_tokens;
  }
  SCMOE_CHECK(num_windows_ > 0, key << ": the " << shards_.size() << " shard(s) matching '" << pattern
                                    << "' hold " << num_tokens_
                                    << " tokens but no shard has a full window of " << seq_len + 1
                                    << " tokens (model.seq_len + 1); use a shorter "
                                    << "model.seq_len or more data per shard");
  window_buf_.resize(static_cast<size_t>(seq_len) + 1);
}

uint64_t DataLoader::num_windows() const { return num_windows_; }

int64_t DataLoader::num_tokens() const { return num_tokens_; }

void DataLoader::reset() { state_ = LoaderState{}; }

void DataLoader::set_state(const LoaderState& s) {
  SCMOE_CHECK(s.cursor < num_windows_, key_ << ": saved data position (epoch " << s.epoch << ", window "
                                            << s.cursor << ") is out of range: the data has " << num_windows_
                                            << " windows per epoch (did the shards or model.seq_len change "
                                            << "since the checkpoint?)");
  state_ = s;
}

void DataLoader::build_order(uint64_t epoch) {
  order_.resize(num_windows_);
  std::iota(order_.begin(), order_.end(), uint64_t{0});
  uint64_t rng = epoch_stream(seed_, epoch);
  // Fisher-Yates with our own generator: identical on every platform.
  for (uint64_t i = num_windows_ - 1; i > 0; --i) std::swap(order_[i], order_[uniform_below(rng, i + 1)]);
  order_epoch_ = epoch;
}

uint64_t DataLoader::window_at(uint64_t epoch, uint64_t index) {
  if (!shuffle_) return index;
  if (order_epoch_ != epoch) build_order(epoch);
  return order_[index];
}

void DataLoader::read_window(uint64_t window, int32_t* dst) {
  // The shard holding `window` is the last whose first window is <= it (shards without windows are
  // skipped because the next shard shares their first_window). Read with pread (checked again against
  // the vocabulary): a shard changed under a running job is an error naming it.
  auto it = std::upper_bound(shards_.begin(), shards_.end(), window,
                             [](uint64_t w, const Shard& s) { return w < s.first_window; });
  const Shard& s = *(it - 1);
  const int64_t start = static_cast<int64_t>(window - s.first_window) * seq_len_;
  read_shard_tokens(s.info, start, int64_t{seq_len_} + 1, vocab_size_, dst, &raw_buf_);
}

void DataLoader::next_batch(int local_batch, int rank, int world, int32_t* inputs, int32_t* targets) {
  SCMOE_CHECK(local_batch >= 1, key_ << ": batch size must be >= 1, got " << local_batch);
  SCMOE_CHECK(world >= 1 && rank >= 0 && rank < world,
              key_ << ": rank " << rank << " is not in [0, world size " << world << ")");
  const uint64_t T = static_cast<uint64_t>(seq_len_);
  const uint64_t global = static_cast<uint64_t>(local_batch) * static_cast<uint64_t>(world);
  // Positions run on past the epoch's end into the next epochs' orders (each re-shuffled).
  const uint64_t first = state_.cursor + static_cast<uint64_t>(rank) * static_cast<uint64_t>(local_batch);
  for (uint64_t b = 0; b < static_cast<uint64_t>(local_batch); ++b) {
    const uint64_t pos = first + b;
    const uint64_t w = window_at(state_.epoch + pos / num_windows_, pos % num_windows_);
    read_window(w, window_buf_.data());
    std::memcpy(inputs + b * T, window_buf_.data(), T * sizeof(int32_t));
    std::memcpy(targets + b * T, window_buf_.data() + 1, T * sizeof(int32_t));
  }
  // Every rank advances by the whole global batch, so all ranks keep the same state.
  const uint64_t end = state_.cursor + global;
  state_.epoch += end / num_windows_;
  state_.cursor = end % num_windows_;
}

}  // namespace scmoe
