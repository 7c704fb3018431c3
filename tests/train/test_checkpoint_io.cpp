// Checkpoint I/O: safetensors round trips and corrupt-file errors, disk-full failures, atomic
// checkpoint commit, keep-K pruning, crash-leftover cleanup and --resume resolution.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/crc32.h"
#include "tests/testing.h"
#include "train/checkpoint_dir.h"
#include "train/safetensors.h"

namespace fs = std::filesystem;
using scmoe::StFile;
using scmoe::StTensor;

namespace {

fs::path g_root;  // unique scratch directory for this run

std::string scratch(const std::string& name) { return (g_root / name).string(); }

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A safetensors file from a raw header string and `data_len` zero bytes of data.
std::string raw_file(const std::string& header, size_t data_len) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_len, '\0');
}

// Runs `f`, expecting an error whose message contains both `a` and `b`.
void expect_error(const std::function<void()>& f, const std::string& a, const std::string& b, int line) {
  ++testing_::checks();
  try {
    f();
  } catch (const std::exception& e) {
    std::string what = e.what();
    if (what.find(a) == std::string::npos || what.find(b) == std::string::npos) {
      ++testing_::failures();
      std::fprintf(stderr, "line %d: error '%s' lacks '%s' or '%s'\n", line, what.c_str(), a.c_str(),
                   b.c_str());
    }
    return;
  }
  ++testing_::failures();
  std::fprintf(stderr, "line %d: expected an error mentioning '%s'\n", line, b.c_str());
}

// Expects reading a file with these bytes to fail with an error naming the file and `needle`.
void expect_corrupt(const std::string& name, const std::string& bytes, const std::string& needle, int line) {
  const std::string path = scratch(name);
  write_bytes(path, bytes);
  expect_error([&] { scmoe::safetensors_read(path); }, path, needle, line);
}

bool same_bytes(const StTensor& t, const void* want, size_t n) {
  return t.nbytes == n && (n == 0 || std::memcmp(t.data, want, n) == 0);
}

// ---------------------------------------------------------------------------------------------

void test_round_trip() {
  std::vector<float> f32 = {1.5f, -2.f, 3.25f, 0.f, 1e-20f, -7.f};
  std::vector<double> f64 = {3.141592653589793, -1e300, 0.5, 42.0};
  std::vector<int32_t> i32 = {1, -2, 3, -4, 5, -6, 7, -8};
  std::vector<uint8_t> u8 = {0, 1, 254, 255, 7};
  int64_t scalar = -1234567890123LL;
  std::vector<uint16_t> bf16 = {0x3f80, 0xbf80, 0x0000};
  std::vector<uint8_t> flags = {1, 0, 1};
  std::vector<StTensor> ts = {
      {"wte", "F32", {2, 3}, f32.data(), f32.size() * 4},
      {"blocks.0.moe.experts.w1", "F64", {4}, f64.data(), f64.size() * 8},
      {"pos", "I32", {2, 2, 2}, i32.data(), i32.size() * 4},
      {"bytes", "U8", {5}, u8.data(), u8.size()},
      {"step", "I64", {}, &scalar, 8},
      {"half", "BF16", {3}, bf16.data(), bf16.size() * 2},
      {"mask", "BOOL", {3}, flags.data(), flags.size()},
      {"empty", "F32", {0, 4}, nullptr, 0},
  };
  std::map<std::string, std::string> meta = {
      {"format", "pt"},
      {"quote\"back\\slash", "line1\nline2\ttab\r\x01\x1f end"},
      {"unicode", "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80"},
      {"empty", ""},
      {"json", "{\"a\": [1, 2]}"},
  };
  const std::string path = scratch("round.safetensors");
  scmoe::safetensors_write(path, ts, meta);

  const std::string raw = read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);  // little-endian host
  CHECK(n % 8 == 0);               // header padded so the data buffer is 8-byte aligned
  CHECK(raw[8] == '{');

  StFile f = scmoe::safetensors_read(path);
  CHECK(f.path == path);
  CHECK(f.metadata == meta);
  CHECK(f.tensors.size() == ts.size());
  for (const StTensor& want : ts) {
    const StTensor& got = f.at(want.name);
    CHECK(got.name == want.name);
    CHECK(got.dtype == want.dtype);
    CHECK(got.shape == want.shape);
    CHECK(same_bytes(got, want.data, want.nbytes));
  }
  CHECK(reinterpret_cast<uintptr_t>(f.at("wte").data) % 8 == reinterpret_cast<uintptr_t>(f.blob.data()) % 8);

  std::vector<float> back(6);
  f.read_into("wte", "F32", back.data(), back.size() * 4);
  CHECK(back == f32);
  int64_t s = 0;
  f.read_into("step", "I64", &s, 8);
  CHECK(s == scalar);
  f.read_into("empty", "F32", nullptr, 0);

  // A moved StFile keeps its tensor pointers valid (the buffer moves with it).
  StFile moved = std::move(f);
  CHECK(same_bytes(moved.at("pos"), i32.data(), i32.size() * 4));

  const std::string want =
      "tensor 'wte' in " + path + ": expected F64 with 48 bytes, file has F32 with 24 bytes";
  CHECK_THROWS_WITH(moved.read_into("wte", "F64", back.data(), 48), want.c_str());
  CHECK_THROWS_WITH(moved.read_into("wte", "F32", back.data(), 20), "expected F32 with 20 bytes");
  expect_error([&] { moved.at("lm_head"); }, "'lm_head' not found", path, __LINE__);

  // No tensors and no metadata is still a valid file.
  const std::string empty_path = scratch("empty.safetensors");
  scmoe::safetensors_write(empty_path, {});
  CHECK(scmoe::safetensors_read(empty_path).tensors.empty());
}

// Headers written by other tools: whitespace, JSON escapes, surrogate pairs, any key order.
void test_foreign_header() {
  const std::string header =
      " {\n  \"__metadata__\" : {\"k\\u00e9\\/\": \"\\ud83d\\ude00\\\"\\\\\\b\\f\\n\\r\\t\"},\n"
      "  \"b\": {\"shape\": [ 2 ], \"data_offsets\": [8, 16], \"dtype\": \"I32\"},\n"
      "  \"a\": {\"dtype\": \"F16\", \"shape\": [2, 2], \"data_offsets\": [0, 8]}\n}   ";
  // The reference implementation requires the header to start with '{'; ours too.
  const std::string path = scratch("foreign.safetensors");
  write_bytes(path, raw_file(header.substr(1), 16));
  StFile f = scmoe::safetensors_read(path);
  CHECK(f.metadata.size() == 1);
  CHECK(f.metadata.count("k\xc3\xa9/") == 1);
  CHECK(f.metadata["k\xc3\xa9/"] == "\xf0\x9f\x98\x80\"\\\b\f\n\r\t");
  CHECK(f.at("a").dtype == "F16" && f.at("a").nbytes == 8);
  CHECK(f.at("b").shape == std::vector<int64_t>{2});
  CHECK(static_cast<const char*>(f.at("b").data) - static_cast<const char*>(f.at("a").data) == 8);
}

void test_corrupt_files() {
  // A valid file, then damaged copies of it.
  std::vector<float> v(4, 1.f);
  const std::string good_path = scratch("good.safetensors");
  scmoe::safetensors_write(good_path, {{"w", "F32", {4}, v.data(), 16}, {"b", "F32", {4}, v.data(), 16}});
  const std::string good = read_bytes(good_path);

  expect_corrupt("trunc_data.safetensors", good.substr(0, good.size() - 3), "not within the data buffer",
                 __LINE__);
  expect_corrupt("trunc_len.safetensors", good.substr(0, 5), "too short", __LINE__);
  expect_corrupt("trunc_header.safetensors", good.substr(0, 20), "exceeds the file size", __LINE__);
  expect_corrupt("zero.safetensors", "", "too short", __LINE__);
  std::string huge = good;
  std::memset(&huge[0], 0xff, 8);
  expect_corrupt("huge_len.safetensors", huge, "exceeds the file size", __LINE__);
  expect_corrupt("extra.safetensors", good + "xyz", "3 trailing bytes", __LINE__);

  auto bad = [](const char* name, const std::string& header, size_t data, const char* needle, int line) {
    expect_corrupt(name, raw_file(header, data), needle, line);
  };
  bad("json1.st", "{\"w\": {\"dtype\": \"F32\",", 0, "bad header JSON", __LINE__);
  bad("json2.st", "{\"w\" {}}", 0, "expected ':'", __LINE__);
  bad("json3.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4,
      "only integers", __LINE__);
  bad("json4.st", "{\"w\": true}", 0, "unexpected character", __LINE__);
  bad("json5.st", "{\"a\": \"x\", \"a\": \"y\"}", 0, "duplicate key 'a'", __LINE__);
  bad("json6.st", "{\"a\": \"\\ud83d\"}", 0, "surrogate", __LINE__);
  bad("json7.st", "{} x", 0, "trailing characters", __LINE__);
  bad("json8.st", "[]", 0, "does not start with '{'", __LINE__);
  bad("utf8.st", "{\"\xc3\x28\": {}}", 0, "not valid UTF-8", __LINE__);
  bad("deep.st", "{\"a\":" + std::string(100, '[') + std::string(100, ']') + "}", 0, "nesting too deep",
      __LINE__);
  bad("overlap.st",
      "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
      " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
      12, "overlap tensor 'w'", __LINE__);
  bad("hole.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}", 16,
      "belong to no tensor", __LINE__);
  bad("size.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", 8,
      "tensor 'w': F32 [3] needs 12 bytes", __LINE__);
  bad("dtype.st", "{\"w\": {\"dtype\": \"F128\", \"shape\": [1], \"data_offsets\": [0, 16]}}", 16,
      "tensor 'w': unknown dtype 'F128'", __LINE__);
  bad("negdim.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 0]}}", 0,
      "invalid shape", __LINE__);
  bad("offs.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", 4,
      "tensor 'w': data_offsets [4, 0]", __LINE__);
  bad("missing.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, "missing \"data_offsets\"", __LINE__);
  bad("field.st", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4], \"x\": []}}", 4,
      "unknown field \"x\"", __LINE__);
  bad("meta.st", "{\"__metadata__\": {\"k\": [1]}}", 0, "metadata 'k' must be a string", __LINE__);

  expect_error([] { scmoe::safetensors_read(scratch("nope.safetensors")); }, "nope.safetensors",
               "No such file", __LINE__);
  expect_error([] { scmoe::safetensors_read(g_root.string()); }, g_root.string(), "not a regular file",
               __LINE__);
}

void test_write_errors() {
  std::vector<float> v(4, 0.f);
  const std::string path = scratch("w.safetensors");
  expect_error(
      [&] {
        scmoe::safetensors_write(path, {{"w", "F32", {4}, v.data(), 12}});
      },
      path, "needs 16 bytes", __LINE__);
  expect_error(
      [&] {
        scmoe::safetensors_write(path, {{"w", "Q4", {4}, v.data(), 16}});
      },
      "unknown", "Q4", __LINE__);
  expect_error(
      [&] {
        scmoe::safetensors_write(path, {{"w", "F32", {4}, v.data(), 16}, {"w", "F32", {4}, v.data(), 16}});
      },
      path, "duplicate tensor name 'w'", __LINE__);
  expect_error(
      [&] {
        scmoe::safetensors_write(path, {{"w", "F32", {4}, nullptr, 16}});
      },
      path, "no data", __LINE__);
  expect_error([&] { scmoe::safetensors_write(path, {}, {{"k", "\xff"}}); }, path, "UTF-8", __LINE__);
  const std::string no_dir = scratch("no/such/dir/w.safetensors");
  expect_error(
      [&] {
        scmoe::safetensors_write(no_dir, {{"w", "F32", {4}, v.data(), 16}});
      },
      no_dir, "No such file", __LINE__);
  if (fs::exists("/dev/full")) {  // disk-full simulation: every write fails with ENOSPC
    expect_error(
        [&] {
          scmoe::safetensors_write("/dev/full", {{"w", "F32", {4}, v.data(), 16}});
        },
        "'/dev/full'", "No space left", __LINE__);
  } else {
    std::printf("note: /dev/full missing, disk-full simulation skipped\n");
  }
}

// Random byte damage must give a clean scmoe::Error (or a valid file), never a crash or another
// exception type; run under ASan/UBSan this doubles as a small deterministic fuzz.
void test_mutations() {
  std::vector<float> v = {1.f, 2.f, 3.f};
  const std::string path = scratch("fuzz.safetensors");
  scmoe::safetensors_write(path, {{"a", "F32", {3}, v.data(), 12}, {"b", "U8", {2}, v.data(), 2}},
                           {{"k", "v"}});
  const std::string good = read_bytes(path);
  uint64_t state = 12345;
  auto next = [&state] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<size_t>(state >> 33);
  };
  int clean = 0, total = 3000;
  for (int i = 0; i < total; ++i) {
    std::string bytes = good;
    for (size_t k = 0, n = 1 + next() % 3; k < n; ++k)
      bytes[next() % bytes.size()] = static_cast<char>(next());
    if (i % 7 == 0) bytes.resize(next() % bytes.size());
    try {
      scmoe::safetensors_parse(std::vector<char>(bytes.begin(), bytes.end()), "mutant");
      ++clean;
    } catch (const scmoe::Error& e) {
      if (std::string(e.what()).find("mutant") != std::string::npos) ++clean;
    } catch (...) {
    }
  }
  CHECK(clean == total);
}

// Case 4 of issue 15: every tensor carries a CRC-32; a flipped byte or a NaN is an error naming the
// tensor and the file, not weights loaded in silence.
void test_checksums() {
  const char digits[] = "123456789";
  CHECK(scmoe::crc32(digits, 9) == 0xCBF43926u);  // the standard check value (zlib, Python)
  CHECK(scmoe::crc32(digits, 0) == 0);
  CHECK(scmoe::crc32(digits + 4, 5, scmoe::crc32(digits, 4)) == 0xCBF43926u);  // continued
  std::vector<unsigned char> big(1000);
  for (size_t i = 0; i < big.size(); i++) big[i] = static_cast<unsigned char>(i * 7);
  CHECK(scmoe::crc32(big.data(), 1000) == scmoe::crc32(big.data() + 3, 997, scmoe::crc32(big.data(), 3)));

  std::vector<float> w = {1.f, 2.f, 3.f, 4.f};
  std::vector<double> d = {0.5, 0.25};
  const std::string path = scratch("sums.safetensors");
  scmoe::safetensors_write(path, {{"w", "F32", {4}, w.data(), 16}, {"d", "F64", {2}, d.data(), 16}},
                           {{"step", "3"}});
  StFile f = scmoe::safetensors_read(path);
  CHECK(f.metadata == (std::map<std::string, std::string>{{"step", "3"}}));  // checksums kept apart
  CHECK(f.checksums.size() == 2 && f.checksums.at("w") == scmoe::tensor_checksum(w.data(), 16));
  std::vector<float> back(4);
  f.read_into("w", "F32", back.data(), 16);
  CHECK(back == w);

  // One bit of one value flipped on disk.
  std::string bytes = read_bytes(path);
  const size_t at = bytes.find(std::string(reinterpret_cast<const char*>(&w[2]), 4));
  CHECK(at != std::string::npos);
  bytes[at] ^= 0x01;
  write_bytes(scratch("flipped.safetensors"), bytes);
  StFile g = scmoe::safetensors_read(scratch("flipped.safetensors"));
  expect_error([&] { g.read_into("w", "F32", back.data(), 16); },
               "tensor 'w' in " + scratch("flipped.safetensors"), "fails its checksum", __LINE__);
  g.read_into("d", "F64", back.data(), 16);  // the other tensor is intact

  // A NaN written with a correct checksum (a run that diverged, a tool that wrote garbage).
  std::vector<float> nan = {1.f, 2.f, std::nanf(""), 4.f};
  scmoe::safetensors_write(scratch("nan.safetensors"), {{"w", "F32", {4}, nan.data(), 16}});
  expect_error(
      [&] { scmoe::safetensors_read(scratch("nan.safetensors")).read_into("w", "F32", back.data(), 16); },
      "tensor 'w'", "non-finite value at element 2", __LINE__);
  std::vector<double> inf = {0.0, -HUGE_VAL};
  scmoe::safetensors_write(scratch("inf.safetensors"), {{"d", "F64", {2}, inf.data(), 16}});
  expect_error([&] { scmoe::safetensors_read(scratch("inf.safetensors")).verify("d"); }, "tensor 'd'",
               "non-finite value at element 1", __LINE__);

  expect_error(
      [&] {
        scmoe::safetensors_write(scratch("r.safetensors"), {}, {{"crc32:w", "0"}});
      },
      "crc32:w", "reserved", __LINE__);
}

// ---------------------------------------------------------------------------------------------

void write_payload(const std::string& dir, float value) {
  std::vector<float> v(4, value);
  scmoe::safetensors_write(dir + "/model.safetensors", {{"w", "F32", {4}, v.data(), 16}});
  write_bytes(dir + "/state.txt", std::to_string(value));  // a writer that does not fsync itself
}

float payload_of(const std::string& dir) {
  std::vector<float> v(4);
  scmoe::safetensors_read(dir + "/model.safetensors").read_into("w", "F32", v.data(), 16);
  return v[0];
}

std::vector<std::string> names(const std::vector<std::string>& paths) {
  std::vector<std::string> out;
  for (const auto& p : paths) out.push_back(fs::path(p).filename().string());
  return out;
}

bool has_tmp_dirs(const std::string& root) {
  for (const auto& e : fs::directory_iterator(root))
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) return true;
  return false;
}

void test_commit_and_prune() {
  CHECK(scmoe::checkpoint_name(42) == "step_00000042");
  CHECK(scmoe::checkpoint_name(123456789) == "step_123456789");
  const std::string root = scratch("run/checkpoints");  // created on first commit
  CHECK(scmoe::list_checkpoints(root).empty());

  for (int step = 1; step <= 4; ++step) {
    std::string seen_tmp;
    std::string dir = scmoe::commit_checkpoint(root, step * 10, 2, [&](const std::string& tmp) {
      seen_tmp = tmp;
      CHECK(fs::path(tmp).filename().string().rfind(".tmp-", 0) == 0);
      write_payload(tmp, static_cast<float>(step));
    });
    CHECK(fs::path(dir).filename() == scmoe::checkpoint_name(step * 10));
    CHECK(fs::exists(fs::path(dir) / "COMPLETE"));
    CHECK(!fs::exists(seen_tmp));
    CHECK(payload_of(dir) == static_cast<float>(step));
  }
  CHECK(names(scmoe::list_checkpoints(root)) == (std::vector<std::string>{"step_00000030", "step_00000040"}));
  CHECK(!has_tmp_dirs(root));

  // Re-committing an existing step replaces it and leaves nothing aside.
  scmoe::commit_checkpoint(root, 40, 2, [](const std::string& tmp) { write_payload(tmp, 99.f); });
  CHECK(payload_of(root + "/step_00000040") == 99.f);
  CHECK(names(scmoe::list_checkpoints(root)) == (std::vector<std::string>{"step_00000030", "step_00000040"}));
  CHECK(!has_tmp_dirs(root));

  // Restarted from an earlier step: the new checkpoint survives pruning even though it is oldest.
  scmoe::commit_checkpoint(root, 20, 2, [](const std::string& tmp) { write_payload(tmp, 2.f); });
  CHECK(names(scmoe::list_checkpoints(root)) ==
        (std::vector<std::string>{"step_00000020", "step_00000030", "step_00000040"}));

  // Crash leftovers are removed by the next commit; incomplete step dirs are never counted or deleted.
  fs::create_directories(root + "/.tmp-step_00000050/sub");
  write_bytes(root + "/.tmp-step_00000050/sub/x", "partial");
  fs::create_directories(root + "/.tmp-replaced-step_00000010");
  fs::create_directories(root + "/step_00000070");  // no COMPLETE: a crash or a hand-made copy
  scmoe::commit_checkpoint(root, 60, 1, [](const std::string& tmp) { write_payload(tmp, 6.f); });
  CHECK(names(scmoe::list_checkpoints(root)) == (std::vector<std::string>{"step_00000060"}));
  CHECK(!has_tmp_dirs(root));
  CHECK(fs::exists(root + "/step_00000070"));
  CHECK(scmoe::resolve_resume("auto", root) == root + "/step_00000060");

  CHECK_THROWS_WITH(scmoe::commit_checkpoint(root, 70, 0, [](const std::string&) {}), "keep must be >= 1");
  CHECK_THROWS_WITH(scmoe::checkpoint_name(-1), "step must be >= 0");
}

// A failing writer (exception, or disk full) leaves earlier checkpoints intact and no temp dir.
void test_commit_failures() {
  const std::string root = scratch("fail/checkpoints");
  scmoe::commit_checkpoint(root, 1, 3, [](const std::string& tmp) { write_payload(tmp, 1.f); });
  scmoe::commit_checkpoint(root, 2, 3, [](const std::string& tmp) { write_payload(tmp, 2.f); });
  const auto before = scmoe::list_checkpoints(root);

  CHECK_THROWS_WITH(scmoe::commit_checkpoint(root, 3, 3,
                                             [](const std::string& tmp) {
                                               write_payload(tmp, 3.f);
                                               throw scmoe::Error("optimizer state unavailable");
                                             }),
                    "optimizer state unavailable");
  CHECK(scmoe::list_checkpoints(root) == before);
  CHECK(!has_tmp_dirs(root));
  CHECK(!fs::exists(root + "/step_00000003"));

  if (fs::exists("/dev/full")) {  // the model file lands on a full disk
    CHECK_THROWS_WITH(scmoe::commit_checkpoint(root, 3, 3,
                                               [](const std::string& tmp) {
                                                 fs::create_symlink("/dev/full", tmp + "/model.safetensors");
                                                 write_payload(tmp, 3.f);
                                               }),
                      "No space left");
    CHECK(scmoe::list_checkpoints(root) == before);
    CHECK(!has_tmp_dirs(root));
    CHECK(fs::exists("/dev/full"));
  }

  // A failed re-commit of an existing step keeps the old one.
  CHECK_THROWS_WITH(
      scmoe::commit_checkpoint(root, 2, 3, [](const std::string&) { throw std::runtime_error("boom"); }),
      "boom");
  CHECK(payload_of(root + "/step_00000002") == 2.f);
  CHECK(scmoe::list_checkpoints(root) == before);
  CHECK(!has_tmp_dirs(root));
  CHECK(payload_of(scmoe::resolve_resume("auto", root)) == 2.f);
}

void make_complete(const std::string& dir) {
  fs::create_directories(dir);
  write_bytes(dir + "/COMPLETE", "");
}

void test_resolve_resume() {
  const std::string root = scratch("resume");
  CHECK(scmoe::resolve_resume("auto", root).empty());  // root does not exist yet
  fs::create_directories(root);
  CHECK(scmoe::resolve_resume("auto", root).empty());
  CHECK(scmoe::resolve_resume("", root).empty());

  make_complete(root + "/step_99999999");
  make_complete(root + "/step_100000000");  // 9 digits: newer although it sorts first as text
  make_complete(root + "/step_12");         // too few digits
  make_complete(root + "/step_0000000x");
  make_complete(root + "/latest");
  fs::create_directories(root + "/step_200000000");  // newest, but never finished
  write_bytes(root + "/step_300000000", "");         // a file, not a directory
  CHECK(names(scmoe::list_checkpoints(root)) ==
        (std::vector<std::string>{"step_99999999", "step_100000000"}));
  CHECK(scmoe::resolve_resume("auto", root) == root + "/step_100000000");

  const std::string good = root + "/step_99999999";
  CHECK(scmoe::resolve_resume(good, "/unused") == good);
  expect_error([&] { scmoe::resolve_resume(root + "/step_200000000", root); }, "step_200000000",
               "no COMPLETE marker", __LINE__);
  expect_error([&] { scmoe::resolve_resume(root + "/gone", root); }, root + "/gone", "does not exist",
               __LINE__);
  expect_error([&] { scmoe::resolve_resume(root + "/step_300000000", root); }, "step_300000000",
               "not a directory", __LINE__);
}

}  // namespace

int main() {
  g_root = fs::temp_directory_path() / ("scmoe_test_checkpoint_io_" + std::to_string(::getpid()));
  fs::remove_all(g_root);
  fs::create_directories(g_root);
  try {
    test_round_trip();
    test_foreign_header();
    test_corrupt_files();
    test_write_errors();
    test_mutations();
    test_checksums();
    test_commit_and_prune();
    test_commit_failures();
    test_resolve_resume();
  } catch (const std::exception& e) {
    ++testing_::failures();
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
  }
  fs::remove_all(g_root);
  TEST_MAIN_END();
}
