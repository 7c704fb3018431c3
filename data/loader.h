// Deterministic loader of token windows from a set of shards. The global batch of a step is a fixed
// list of (T+1)-token windows; rank r of W takes the r-th contiguous slice, so the data seen is the
// same whatever W. Position (epoch, window cursor) is saved in checkpoints and restored exactly.
// Every token of every shard is checked against the vocabulary when the loader opens it (a bad token
// in the validation shard stops the run at start, not at its end); windows are read with pread, so a
// shard truncated while the run uses it is an error naming it, not a SIGBUS.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/shard.h"

namespace scmoe {

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t cursor = 0;  // index of the next window in this epoch's order
};

class DataLoader {
 public:
  // pattern: shard glob; key: the config key for error messages ("data.train").
  // Windows are non-overlapping (seq_len+1)-token spans within each shard at stride seq_len.
  DataLoader(const std::string& pattern, const std::string& key, int seq_len, int vocab_size, bool shuffle,
             uint64_t seed);

  // Fills inputs[b*T..] and targets[b*T..] for this rank's `local_batch` sequences of the next global
  // batch of `local_batch * world` sequences, then advances by the global batch.
  void next_batch(int local_batch, int rank, int world, int32_t* inputs, int32_t* targets);

  void reset();  // back to epoch 0, cursor 0 (validation restarts from the beginning every time)
  LoaderState state() const { return state_; }
  void set_state(const LoaderState& s);
  uint64_t num_windows() const;  // windows per epoch
  int64_t num_tokens() const;    // tokens in all matched shards (windows may leave a short tail unused)
  size_t num_shards() const { return shards_.size(); }

 private:
  struct Shard {
    ShardInfo info;
    uint64_t first_window = 0;  // global id of its first window (windows are numbered shard by shard)
    uint64_t windows = 0;
  };

  static Shard open_shard(const std::string& path, int seq_len, int vocab_size, const std::string& key);
  uint64_t window_at(uint64_t epoch, uint64_t index);  // index in the epoch's order -> global window id
  void read_window(uint64_t window, int32_t* dst);     // dst: seq_len+1 tokens
  void build_order(uint64_t epoch);

  std::string key_;
  int seq_len_;
  int vocab_size_;
  bool shuffle_;
  uint64_t seed_;
  std::vector<Shard> shards_;
  uint64_t num_windows_ = 0;
  int64_t num_tokens_ = 0;
  LoaderState state_;
  std::vector<uint64_t> order_;        // the shuffled order of order_epoch_ (empty without shuffle)
  uint64_t order_epoch_ = UINT64_MAX;  // no order built yet
  std::vector<int32_t> window_buf_;    // one window, reused to avoid an allocation per window
  std::vector<unsigned char> raw_buf_;  // ... and its bytes as read
};

}  // namespace scmoe
