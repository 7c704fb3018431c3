// Token shards and DataLoader: header validation, token reads, window content, rank slicing, seeded
// shuffling, epoch wrap and exact save/restore of the position.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "core/check.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "tests/testing.h"

using namespace scmoe;
namespace fs = std::filesystem;

namespace {

// A private directory per process, so parallel ctest runs never share files.
const std::string& tmp_dir() {
  static const std::string dir = [] {
    std::string d = (fs::temp_directory_path() / ("scmoe_test_data_" + std::to_string(::getpid()))).string();
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

std::string tmp_path(const std::string& name) { return tmp_dir() + "/" + name; }

std::vector<unsigned char> header_bytes(int32_t magic, int32_t version, int32_t count) {
  std::vector<int32_t> h(kShardHeaderInts, 0);
  h[0] = magic;
  h[1] = version;
  h[2] = count;
  std::vector<unsigned char> b(h.size() * 4);
  std::memcpy(b.data(), h.data(), b.size());
  return b;
}

void write_raw(const std::string& path, const std::vector<unsigned char>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint32_t> iota_tokens(uint32_t first, size_t n, uint32_t mod) {
  std::vector<uint32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<uint32_t>((first + i) % mod);
  return t;
}

void test_header_parse() {
  auto h = header_bytes(kShardMagic, 1, 10);
  ShardInfo s = parse_shard_header(h.data(), h.size(), 1024 + 20, "a.bin");
  CHECK(s.version == 1 && s.num_tokens == 10 && s.token_bytes() == 2 && s.path == "a.bin");
  h = header_bytes(kShardMagic, 2, 10);
  s = parse_shard_header(h.data(), h.size(), 1024 + 40, "b.bin");
  CHECK(s.version == 2 && s.num_tokens == 10 && s.token_bytes() == 4);
  h = header_bytes(kShardMagic, 1, 0);
  CHECK(parse_shard_header(h.data(), h.size(), 1024, "empty.bin").num_tokens == 0);

  h = header_bytes(12345, 1, 10);
  CHECK_THROWS_WITH(parse_shard_header(h.data(), h.size(), 1044, "m.bin"), "not a token shard (wrong magic)");
  CHECK_THROWS_WITH(parse_shard_header(h.data(), h.size(), 1044, "m.bin"), "found 12345");
  CHECK_THROWS_WITH(parse_shard_header(h.data(), h.size(), 1044, "m.bin"), "'m.bin'");
  h = header_bytes(kShardMagic, 3, 10);
  CHECK_THROWS_WITH(parse_shard_header(h.data(), h.size(), 1044, "v.bin"), "unsupported version 3");
  h = header_bytes(kShardMagic, 1, -1);
  CHECK_THROWS_WITH(parse_shard_header(h.data(), h.size(), 1024, "n.bin"), "negative token count");
  h = header_bytes(kShardMagic, 1, 10);
  CHECK_THROWS_WITH(parse_shard_header(h.data(), h.size(), 1024 + 18, "t.bin"),
                    "truncated: header says 10 tokens (20 bytes) but file has 18 bytes");
  CHECK_THROWS_WITH(parse_shard_header(h.data(), h.size(), 1024 + 22, "x.bin"), "2 extra bytes");
  CHECK_THROWS_WITH(parse_shard_header(h.data(), 100, 100, "s.bin"), "header incomplete");
}

void test_files_on_disk() {
  // Round trips: automatic version choice, forced version 2.
  const std::string p1 = tmp_path("v1.bin"), p2 = tmp_path("v2.bin"), p3 = tmp_path("v2auto.bin");
  write_shard(p1, iota_tokens(0, 1000, 65536));
  write_shard(p2, iota_tokens(7, 1000, 65536), 2);
  write_shard(p3, {1, 70000, 3});
  CHECK(read_shard_info(p1).version == 1 && read_shard_info(p1).num_tokens == 1000);
  CHECK(read_shard_info(p2).version == 2 && read_shard_info(p2).num_tokens == 1000);
  CHECK(read_shard_info(p3).version == 2);
  CHECK(fs::file_size(p1) == 1024 + 2000 && fs::file_size(p2) == 1024 + 4000);
  std::vector<int32_t> out(5);
  read_shard_tokens(read_shard_info(p2), 995, 5, 2000, out.data());
  CHECK(out[0] == 1002 && out[4] == 1006);
  read_shard_tokens(read_shard_info(p3), 0, 3, 70001, out.data());
  CHECK(out[1] == 70000);
  CHECK_THROWS_WITH(read_shard_tokens(read_shard_info(p1), 999, 2, 2000, out.data()), "out of range");
  CHECK_THROWS_WITH(write_shard(tmp_path("bad.bin"), {70000}, 1), "does not fit version 1");

  // Token beyond the vocabulary, with its position.
  std::vector<uint32_t> t(2000, 7);
  t[1234] = 300;
  const std::string pv = tmp_path("vocab.bin");
  write_shard(pv, t);
  std::vector<int32_t> all(2000);
  CHECK_THROWS_WITH(read_shard_tokens(read_shard_info(pv), 0, 2000, 256, all.data()),
                    "token 300 at position 1234 >= model.vocab_size 256");
  read_shard_tokens(read_shard_info(pv), 0, 1234, 256, all.data());  // the good prefix reads fine

  // Damaged files: short header, bad magic, truncated, extra bytes; each names the file.
  const std::string ps = tmp_path("short.bin");
  write_raw(ps, std::vector<unsigned char>(100, 0));
  CHECK_THROWS_WITH(read_shard_info(ps), "header incomplete");
  CHECK_THROWS_WITH(read_shard_info(ps), ps.c_str());
  auto bytes = header_bytes(kShardMagic, 1, 10);
  bytes.resize(1024 + 18);
  write_raw(tmp_path("trunc.bin"), bytes);
  CHECK_THROWS_WITH(read_shard_info(tmp_path("trunc.bin")), "truncated: header says 10 tokens");
  bytes.resize(1024 + 21);
  write_raw(tmp_path("extra.bin"), bytes);
  CHECK_THROWS_WITH(read_shard_info(tmp_path("extra.bin")), "1 extra bytes");
  bytes = header_bytes(42, 1, 0);
  write_raw(tmp_path("magic.bin"), bytes);
  CHECK_THROWS_WITH(read_shard_info(tmp_path("magic.bin")), "wrong magic");
  CHECK_THROWS_WITH(read_shard_info(tmp_path("missing.bin")), "cannot open token shard");
}

void test_glob() {
  const std::string d = tmp_path("glob");
  fs::create_directories(d);
  write_shard(d + "/train_000002.bin", {1, 2});
  write_shard(d + "/train_000000.bin", {1, 2});
  write_shard(d + "/train_000001.bin", {1, 2});
  const auto files = glob_shards(d + "/train_*.bin", "data.train");
  CHECK(files.size() == 3 && std::is_sorted(files.begin(), files.end()));
  CHECK_THROWS_WITH(glob_shards(d + "/val_*.bin", "data.val"), "data.val");
  CHECK_THROWS_WITH(glob_shards(d + "/val_*.bin", "data.val"), "val_*.bin");
  CHECK_THROWS_WITH(glob_shards(d + "/val_*.bin", "data.val"), "python3 data/prepare.py");
  CHECK_THROWS_WITH(DataLoader(d + "/nothing_*.bin", "data.train", 4, 256, false, 1), "data.train");
}

// The windows dataset: token value == global token index, so a window is identified by its first token.
// Shard sizes exercise a shard with no window (5 < T+1) and one with exactly one window (T+1), and a
// version-2 shard among version-1 ones.
constexpr int kT = 8;
const int64_t kShardSizes[] = {100, 5, 57, 9, 41};

struct Dataset {
  std::string glob;
  std::vector<int64_t> window_starts;  // first token (== global token index) of each window, in order
  int64_t tokens = 0;
};

const Dataset& dataset() {
  static const Dataset ds = [] {
    Dataset d;
    const std::string dir = tmp_path("windows");
    fs::create_directories(dir);
    int64_t base = 0;
    for (size_t i = 0; i < std::size(kShardSizes); ++i) {
      const int64_t n = kShardSizes[i];
      char name[64];
      std::snprintf(name, sizeof(name), "/train_%06zu.bin", i);
      write_shard(dir + name, iota_tokens(static_cast<uint32_t>(base), static_cast<size_t>(n), 1u << 30),
                  i == 2 ? 2 : 0);
      for (int64_t s = 0; s + kT + 1 <= n; s += kT) d.window_starts.push_back(base + s);
      base += n;
    }
    d.tokens = base;
    d.glob = dir + "/train_*.bin";
    return d;
  }();
  return ds;
}

// Global ids (first tokens) of one rank's windows in its next batch, after checking inputs/targets.
std::vector<int64_t> take(DataLoader& dl, int local_batch, int rank, int world) {
  std::vector<int32_t> in(static_cast<size_t>(local_batch) * kT), tg(in.size());
  dl.next_batch(local_batch, rank, world, in.data(), tg.data());
  std::vector<int64_t> firsts;
  for (int b = 0; b < local_batch; ++b) {
    bool ok = true;
    for (int i = 0; i < kT; ++i) {
      ok = ok && in[b * kT + i] == in[b * kT] + i && tg[b * kT + i] == in[b * kT] + i + 1;
    }
    CHECK(ok);
    firsts.push_back(in[b * kT]);
  }
  return firsts;
}

void test_windows_in_order() {
  const Dataset& ds = dataset();
  DataLoader dl(ds.glob, "data.train", kT, 1 << 30, false, 0);
  CHECK(dl.num_windows() == ds.window_starts.size());
  CHECK(dl.num_windows() == 12 + 0 + 7 + 1 + 5);
  CHECK(dl.num_tokens() == ds.tokens);
  CHECK(dl.num_shards() == std::size(kShardSizes));
  std::vector<int64_t> seen;
  for (size_t i = 0; i < ds.window_starts.size(); ++i) seen.push_back(take(dl, 1, 0, 1)[0]);
  CHECK(seen == ds.window_starts);
  CHECK(dl.state().epoch == 1 && dl.state().cursor == 0);
  CHECK(take(dl, 1, 0, 1)[0] == ds.window_starts[0]);  // unshuffled epochs repeat the same order
}

// The stream of windows seen one at a time, `n` long (the reference for every batch shape).
std::vector<int64_t> stream(bool shuffle, uint64_t seed, size_t n) {
  DataLoader dl(dataset().glob, "data.train", kT, 1 << 30, shuffle, seed);
  std::vector<int64_t> s;
  while (s.size() < n) s.push_back(take(dl, 1, 0, 1)[0]);
  return s;
}

void test_shuffle() {
  const Dataset& ds = dataset();
  const size_t N = ds.window_starts.size();
  const auto a = stream(true, 42, 3 * N), b = stream(true, 42, 3 * N), c = stream(true, 43, 3 * N);
  CHECK(a == b);
  CHECK(a != c);
  const std::set<int64_t> all(ds.window_starts.begin(), ds.window_starts.end());
  for (size_t e = 0; e < 3; ++e) {
    std::vector<int64_t> epoch(a.begin() + e * N, a.begin() + (e + 1) * N);
    std::vector<int64_t> sorted = epoch;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted == ds.window_starts);  // each window exactly once per epoch
    CHECK(epoch != ds.window_starts);   // and not in file order
  }
  CHECK(!std::equal(a.begin(), a.begin() + N, a.begin() + N));  // re-shuffled every epoch
}

// Whatever the world size and local batch, ranks' slices concatenated are the same stream of windows.
void test_rank_slices() {
  const size_t N = dataset().window_starts.size();
  const auto ref = stream(true, 7, 8 * N);
  for (int world : {1, 2, 4}) {
    for (int lb : {1, 3, 7}) {
      std::vector<DataLoader> ranks;
      for (int r = 0; r < world; ++r) ranks.emplace_back(dataset().glob, "data.train", kT, 1 << 30, true, 7);
      std::vector<int64_t> got;
      while (got.size() + static_cast<size_t>(lb * world) <= ref.size()) {
        for (int r = 0; r < world; ++r) {
          const auto part = take(ranks[r], lb, r, world);
          got.insert(got.end(), part.begin(), part.end());
        }
      }
      CHECK(std::equal(got.begin(), got.end(), ref.begin()));
      for (int r = 1; r < world; ++r) {
        CHECK(ranks[r].state().epoch == ranks[0].state().epoch &&
              ranks[r].state().cursor == ranks[0].state().cursor);
      }
    }
  }
  // A global batch larger than an epoch spans several epochs.
  DataLoader big(dataset().glob, "data.train", kT, 1 << 30, true, 7);
  const auto part = take(big, static_cast<int>(2 * N + 3), 0, 1);
  CHECK(std::equal(part.begin(), part.end(), ref.begin()));
  CHECK(big.state().epoch == 2 && big.state().cursor == 3);
}

void test_epoch_wrap_and_state() {
  const size_t N = dataset().window_starts.size();  // 25
  const auto ref = stream(true, 9, 4 * N);
  DataLoader dl(dataset().glob, "data.train", kT, 1 << 30, true, 9);
  // G = 6: after 4 batches the cursor is 24; the 5th batch takes window 24 and wraps into epoch 1.
  for (int i = 0; i < 4; ++i) take(dl, 3, 0, 2);
  CHECK(dl.state().epoch == 0 && dl.state().cursor == 24);
  const auto r1 = take(dl, 3, 1, 2);  // rank 1's slice: positions 27..29, all in epoch 1
  CHECK(std::equal(r1.begin(), r1.end(), ref.begin() + 27));
  CHECK(dl.state().epoch == 1 && dl.state().cursor == 5);

  // Save, continue, restore into a fresh loader: the same batches follow.
  const LoaderState saved = dl.state();
  std::vector<std::vector<int64_t>> after;
  for (int i = 0; i < 10; ++i) after.push_back(take(dl, 3, 0, 2));
  DataLoader restored(dataset().glob, "data.train", kT, 1 << 30, true, 9);
  take(restored, 5, 0, 1);  // move it somewhere else first, so set_state must really restore
  restored.set_state(saved);
  bool same = true;
  for (int i = 0; i < 10; ++i) same = same && take(restored, 3, 0, 2) == after[i];
  CHECK(same);
  CHECK(restored.state().epoch == dl.state().epoch && restored.state().cursor == dl.state().cursor);

  restored.reset();
  CHECK(restored.state().epoch == 0 && restored.state().cursor == 0);
  CHECK(take(restored, 1, 0, 1)[0] == ref[0]);
  CHECK_THROWS_WITH(restored.set_state(LoaderState{0, N}), "out of range");
  CHECK_THROWS_WITH(restored.next_batch(1, 2, 2, nullptr, nullptr), "rank 2");
  CHECK_THROWS_WITH(restored.next_batch(0, 0, 1, nullptr, nullptr), "batch size");
}

void test_loader_errors() {
  const std::string d = tmp_path("errors");
  fs::create_directories(d);
  write_shard(d + "/short_000000.bin", iota_tokens(0, 5, 256));
  write_shard(d + "/short_000001.bin", iota_tokens(0, 8, 256));
  CHECK_THROWS_WITH(DataLoader(d + "/short_*.bin", "data.val", 8, 256, false, 1),
                    "no shard has a full window");
  CHECK_THROWS_WITH(DataLoader(d + "/short_*.bin", "data.val", 8, 256, false, 1), "data.val");
  DataLoader ok(d + "/short_*.bin", "data.val", 7, 256, false, 1);  // T+1 == 8 fits the second shard
  CHECK(ok.num_windows() == 1);

  // Every token is checked when the loader opens the shard (not when its window is first read): a bad
  // token in window 1, or in the tail no window covers, stops the run at start, naming key and shard.
  std::vector<uint32_t> t(64, 1);
  t[12] = 300;  // inside window 1 (tokens 8..16)
  write_shard(d + "/vocab_000000.bin", t);
  CHECK_THROWS_WITH(DataLoader(d + "/vocab_*.bin", "data.train", 8, 256, false, 1),
                    "data.train: token shard '" + d +
                        "/vocab_000000.bin': token 300 at position 12 >= "
                        "model.vocab_size 256");
  t[12] = 1, t[63] = 70000;  // version 2 (uint32 tokens), in the last token
  write_shard(d + "/vocab_000000.bin", t);
  CHECK_THROWS_WITH(DataLoader(d + "/vocab_*.bin", "data.val", 8, 256, false, 1),
                    "data.val: token shard '" + d + "/vocab_000000.bin': token 70000 at position 63");
  // A shard truncated while the loader uses it (it was memory-mapped: SIGBUS) is an error naming it.
  t[63] = 1;
  write_shard(d + "/vocab_000000.bin", t);
  DataLoader dl(d + "/vocab_*.bin", "data.train", 8, 256, false, 1);
  std::vector<int32_t> in(8), tg(8);
  dl.next_batch(1, 0, 1, in.data(), tg.data());
  CHECK(::truncate((d + "/vocab_000000.bin").c_str(), 1024 + 2 * 20) == 0);  // 20 tokens left
  dl.next_batch(1, 0, 1, in.data(), tg.data());  // window 1: tokens 8..16, still there
  CHECK_THROWS_WITH(dl.next_batch(1, 0, 1, in.data(), tg.data()),
                    "token shard '" + d +
                        "/vocab_000000.bin' ended early while reading at byte 1064 (was it "
                        "truncated while in use?)");

  auto bytes = header_bytes(kShardMagic, 1, 100);
  write_raw(d + "/broken_000000.bin", bytes);
  CHECK_THROWS_WITH(DataLoader(d + "/broken_*.bin", "data.train", 8, 256, false, 1), "truncated");
}

// What generation reads from a data set: meta.json's tokenizer, the gpt2 vocabulary listing, token ids.
void test_tokenizer_inputs() {
  using scmoe::tokenizer_from_meta_json;
  CHECK(tokenizer_from_meta_json("{\"vocab_size\": 50257, \"tokenizer\": \"gpt2\"}", "m.json") == "gpt2");
  CHECK(tokenizer_from_meta_json("{\"tokenizer\" :\n \"byte\"}", "m.json") == "byte");
  CHECK(tokenizer_from_meta_json("{\"vocab_size\": 256}", "m.json").empty());
  CHECK_THROWS_WITH(tokenizer_from_meta_json("{\"tokenizer\": 3}", "d/m.json"),
                    "d/m.json: \"tokenizer\" is not followed by a string value");
  CHECK_THROWS_WITH(tokenizer_from_meta_json("{\"tokenizer\"", "m.json"), "m.json");
  CHECK_THROWS_WITH(tokenizer_from_meta_json("{\"tokenizer\": \"gpt2", "m.json"), "m.json");

  const scmoe::Tokenizer t = scmoe::Tokenizer::from_vocab_lines("61\n6263\nf09f98\n");
  CHECK(t.vocab_size() == 3 && t.decode(1) == "bc" && t.decode(2) == "\xf0\x9f\x98");
  CHECK(t.decode(3) == "\xEF\xBF\xBD" && t.decode(-1) == "\xEF\xBF\xBD");  // outside: U+FFFD
  CHECK_THROWS_WITH(scmoe::Tokenizer::from_vocab_lines("61\n6\n"), "vocabulary line 2 has an odd number");
  CHECK_THROWS_WITH(scmoe::Tokenizer::from_vocab_lines("zz\n"), "vocabulary line 1 is not lowercase hex");
  CHECK_THROWS_WITH(scmoe::Tokenizer::from_vocab_lines(""), "printed no vocabulary");

  CHECK(scmoe::parse_token_ids(" 0 17\n2 ", 18) == (std::vector<int32_t>{0, 17, 2}));
  CHECK_THROWS_WITH(scmoe::parse_token_ids("1 18", 18), "'18' is not a token id in [0, 18)");
  CHECK_THROWS_WITH(scmoe::parse_token_ids("-1", 18), "'-1' is not a token id");
  CHECK_THROWS_WITH(scmoe::parse_token_ids("7x", 18), "'7x' is not a token id");
  CHECK_THROWS_WITH(scmoe::parse_token_ids("99999999999999999999", 18), "is not a token id");
}

}  // namespace

int main() {
  try {
    test_header_parse();
    test_files_on_disk();
    test_glob();
    test_windows_in_order();
    test_shuffle();
    test_rank_slices();
    test_epoch_wrap_and_state();
    test_loader_errors();
    test_tokenizer_inputs();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    ++testing_::failures();
  }
  fs::remove_all(tmp_dir());
  TEST_MAIN_END();
}
