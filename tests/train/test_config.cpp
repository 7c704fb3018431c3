// Configuration: defaults, nested YAML files, every error class and its message, --set precedence,
// arch-dependent defaults, cross-key checks, exact round trips and an up-to-date docs/config.md.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "tests/testing.h"
#include "train/config.h"

using namespace scmoe;
namespace fs = std::filesystem;

namespace {

// Every key of Config: the round-trip test fails if one is added to the schema but not here.
// clang-format off
#define SCMOE_CONFIG_FIELDS(X)                                                                         \
  X(model.arch) X(model.n_layer) X(model.d_model) X(model.n_head) X(model.d_ff) X(model.seq_len)       \
  X(model.vocab_size) X(model.norm) X(model.init_std) X(moe.num_experts) X(moe.top_k) X(moe.every) X(moe.d_expert)     \
  X(moe.capacity_factor) X(moe.aux_loss_coef) X(moe.z_loss_coef) X(moe.gate_noise) X(moe.renormalize) X(moe.pipeline_degree) X(moe.force_balanced_routing) \
  X(moe.score) X(moe.seq_aux_loss_coef) X(moe.expert_bias.enabled) X(moe.expert_bias.update_rate) X(moe.expert_bias.center) \
  X(scmoe.position) X(scmoe.combine) X(scmoe.expert_slot) X(optim.lr) X(optim.weight_decay)           \
  X(optim.beta1) X(optim.beta2) X(optim.eps) X(optim.grad_clip) X(optim.warmup_steps)                 \
  X(optim.schedule) X(optim.decay_steps) X(optim.min_lr) X(train.max_steps) X(train.batch_size)       \
  X(train.grad_accum) X(train.global_batch_tokens) X(train.seed) X(train.device) X(train.precision)   \
  X(train.dtype) X(train.out_dir) X(train.log_every) X(train.eval_every) X(train.eval_batches)         \
  X(train.threads) X(train.trace_step) X(data.train) X(data.val) X(data.shuffle) X(checkpoint.every) X(checkpoint.keep)   \
  X(comm.timeout_s) X(comm.overlap) X(comm.measure_peer_wait) X(comm.transport) X(comm.simulate_link.bandwidth_gb_s) X(comm.simulate_link.latency_us)  \
  X(inference.offload_experts) X(inference.expert_cache_slots) X(inference.migration)                  \
  X(inference.host_link_gb_s) X(inference.host_link_latency_us) X(inference.tokenizer)
// clang-format on

int num_fields() {
  int n = 0;
#define COUNT_FIELD(f) ++n;
  SCMOE_CONFIG_FIELDS(COUNT_FIELD)
#undef COUNT_FIELD
  return n;
}

// Keys whose values differ (exactly: doubles compared with ==), each reported on stderr when `report`.
int differences(const Config& a, const Config& b, bool report) {
  int n = 0;
#define DIFF_FIELD(f)                                       \
  if (!(a.f == b.f)) {                                      \
    ++n;                                                    \
    if (report) std::fprintf(stderr, "  %s differs\n", #f); \
  }
  SCMOE_CONFIG_FIELDS(DIFF_FIELD)
#undef DIFF_FIELD
  return n;
}

// A private directory per process, so parallel ctest runs never share files.
const std::string& tmp_dir() {
  static const std::string dir = [] {
    std::string d =
        (fs::temp_directory_path() / ("scmoe_test_config_" + std::to_string(::getpid()))).string();
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

std::string write_file(const std::string& name, const std::string& text) {
  const std::string path = tmp_dir() + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The error message of `f`, or "" when it does not throw scmoe::Error.
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

Config parse(const std::string& text, const std::vector<std::string>& sets = {}) {
  return parse_config_text(text, "t.yaml", sets);
}

void test_defaults() {
  const Config d;
  CHECK(differences(parse(""), d, true) == 0);
  CHECK(differences(parse("# only a comment\n"), d, true) == 0);
  CHECK(differences(load_config("", {}), d, true) == 0);
  CHECK(differences(parse("model:\n"), d, true) == 0);  // an empty section is allowed
  CHECK(d.model.arch == "dense" && d.moe.top_k == 2 && d.optim.lr == 1e-3 && d.train.seed == 1337u);
}

void test_nested_file() {
  const std::string path = write_file("nested.yaml",
                                      "# a comment\n"
                                      "model:\n"
                                      "  arch: moe\n"
                                      "  d_model: 64\n"
                                      "  n_head: 8\n"
                                      "  init_std: 1   # an int is fine for a double\n"
                                      "moe: {num_experts: 4, gate_noise: true, capacity_factor: -1}\n"
                                      "scmoe:\n"
                                      "  expert_slot: 3\n"
                                      "optim:\n"
                                      "  lr: 3.0e-4\n"
                                      "  min_lr: 0\n"
                                      "train:\n"
                                      "  seed: 18446744073709551615\n"
                                      "  global_batch_tokens: 8589934592\n"
                                      "  out_dir: \"runs/with space\"\n"
                                      "data:\n"
                                      "  train: data/x/train_*.bin\n"
                                      "  shuffle: false\n"
                                      "comm:\n"
                                      "  simulate_link:\n"
                                      "    bandwidth_gb_s: 12.5\n"
                                      "    latency_us: 3\n");
  const Config c = load_config(path, {});
  CHECK(c.model.arch == "moe");
  CHECK(c.model.d_model == 64 && c.model.n_head == 8 && c.model.n_layer == 4);
  CHECK(c.model.init_std == 1.0);
  CHECK(c.moe.num_experts == 4 && c.moe.gate_noise && c.moe.capacity_factor == -1.0);
  CHECK(c.moe.top_k == 2);
  CHECK(c.scmoe.expert_slot == "3");
  CHECK(c.optim.lr == 3e-4 && c.optim.min_lr == 0.0);
  CHECK(c.train.seed == std::numeric_limits<uint64_t>::max());
  CHECK(c.train.global_batch_tokens == 8589934592LL);
  CHECK(c.train.out_dir == "runs/with space");
  CHECK(c.data.train == "data/x/train_*.bin" && !c.data.shuffle);
  CHECK(c.comm.simulate_link.bandwidth_gb_s == 12.5 && c.comm.simulate_link.latency_us == 3.0);
}

// Every shipped experiment must load as it is.
void test_shipped_configs() {
  const fs::path dir = fs::path(SCMOE_SOURCE_DIR) / "configs";
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    const std::string err = error_of([&] { load_config(e.path().string(), {}); });
    if (!err.empty()) std::fprintf(stderr, "shipped config fails to load: %s\n", err.c_str());
    CHECK(err.empty());
  }
  CHECK(n > 0);
}

void test_unknown_keys() {
  const std::string p = write_file("typo.yaml", "model:\n  d_modle: 3\n");
  CHECK_THROWS_WITH(load_config(p, {}),
                    (p + ": model.d_modle: unknown key (did you mean 'model.d_model'?)").c_str());
  const std::string s = write_file("section.yaml", "modle:\n  d_model: 3\n");
  CHECK_THROWS_WITH(load_config(s, {}), (s + ": modle: unknown section (did you mean 'model'?)").c_str());
  CHECK_THROWS_WITH(parse("optim:\n  seed: 3\n"),
                    "t.yaml: optim.seed: unknown key (did you mean 'train.seed'?)");
  CHECK_THROWS_WITH(parse("d_model: 3\n"),
                    "t.yaml: d_model: unknown section (did you mean 'model.d_model'?)");
  CHECK_THROWS_WITH(parse("comm:\n  simulate_lnk: {latency_us: 1}\n"),
                    "t.yaml: comm.simulate_lnk: unknown key (did you mean 'comm.simulate_link'?)");
  CHECK_THROWS_WITH(parse("moe:\n  evry: 1\n"), "did you mean 'moe.every'?");
  // Far from every key: no suggestion at all.
  const std::string far = error_of([] { parse("model:\n  completely_unrelated: 1\n"); });
  CHECK(far == "t.yaml: model.completely_unrelated: unknown key");
  const std::string far_section = error_of([] { parse("zzzzzz: 1\n"); });
  CHECK(far_section == "t.yaml: zzzzzz: unknown section");
  CHECK_THROWS_WITH(parse("model.d_model: 64\n"), "t.yaml: model.d_model: write keys as nested maps");
  CHECK_THROWS_WITH(parse("model:\n  d_model: 64\n  d_model: 32\n"), "t.yaml: model.d_model: given twice");
}

void test_type_errors() {
  const std::string p = write_file("types.yaml", "model:\n  d_model: abc\n");
  CHECK_THROWS_WITH(load_config(p, {}), (p + ": model.d_model: expected an integer >= 1, got 'abc'").c_str());
  CHECK_THROWS_WITH(parse("model:\n  d_model: 1.5\n"),
                    "t.yaml: model.d_model: expected an integer >= 1, got '1.5'");
  CHECK_THROWS_WITH(parse("model:\n  d_model: 1e3\n"), "expected an integer >= 1, got '1e3'");
  CHECK_THROWS_WITH(parse("model:\n  d_model: 0\n"),
                    "t.yaml: model.d_model: expected an integer >= 1, got 0");
  CHECK_THROWS_WITH(parse("model:\n  d_model: 3000000000\n"), "got '3000000000' (out of range)");
  CHECK_THROWS_WITH(parse("model:\n  d_model:\n"),
                    "model.d_model: expected an integer >= 1, got nothing (null)");
  CHECK_THROWS_WITH(parse("model:\n  d_model: [1, 2]\n"),
                    "model.d_model: expected an integer >= 1, got a sequence");
  CHECK_THROWS_WITH(parse("model:\n  arch: foo\n"),
                    "t.yaml: model.arch: expected one of dense|moe|shared_expert|scmoe, got 'foo'");
  CHECK_THROWS_WITH(parse("model:\n  norm: LayerNorm\n"), "model.norm: expected one of layernorm|rmsnorm");
  CHECK_THROWS_WITH(parse("moe:\n  gate_noise: yes\n"),
                    "t.yaml: moe.gate_noise: expected true or false, got 'yes'");
  CHECK_THROWS_WITH(parse("optim:\n  lr: fast\n"), "t.yaml: optim.lr: expected a number > 0, got 'fast'");
  CHECK_THROWS_WITH(parse("optim:\n  lr: .nan\n"), "optim.lr: expected a number > 0, got '.nan'");
  CHECK_THROWS_WITH(parse("optim:\n  lr: 1e999\n"), "got '1e999' (out of range)");
  CHECK_THROWS_WITH(parse("optim:\n  beta1: 1\n"), "t.yaml: optim.beta1: expected a number in [0, 1), got 1");
  CHECK_THROWS_WITH(parse("optim:\n  eps: 0\n"), "optim.eps: expected a number > 0, got 0");
  CHECK_THROWS_WITH(parse("scmoe:\n  position: 4\n"), "scmoe.position: expected an integer in [1, 3], got 4");
  CHECK_THROWS_WITH(parse("scmoe:\n  expert_slot: 6\n"),
                    "scmoe.expert_slot: expected one of auto|1|2|3|4|5, got '6'");
  CHECK_THROWS_WITH(parse("train:\n  seed: -1\n"), "train.seed: expected an integer >= 0, got '-1'");
  CHECK_THROWS_WITH(parse("train:\n  out_dir: ''\n"), "train.out_dir: expected a non-empty string, got ''");
  CHECK_THROWS_WITH(parse("checkpoint:\n  keep: 0\n"), "checkpoint.keep: expected an integer >= 1, got 0");
  CHECK_THROWS_WITH(parse("model:\n  vocab_size: 1\n"), "model.vocab_size: expected an integer >= 2, got 1");
  // Accepted forms.
  CHECK(parse("optim:\n  lr: +2\n").optim.lr == 2.0);
  CHECK(parse("moe:\n  capacity_factor: 0\n").moe.capacity_factor == 0.0);
  CHECK(!parse("moe:\n  renormalize: False\n").moe.renormalize);
}

void test_structure_errors() {
  CHECK_THROWS_WITH(parse("model: 3\n"), "t.yaml: model: expected a map of keys (a section), got a scalar");
  CHECK_THROWS_WITH(parse("comm:\n  simulate_link: [1]\n"),
                    "t.yaml: comm.simulate_link: expected a map of keys");
  CHECK_THROWS_WITH(parse("- model\n"),
                    "t.yaml: expected a map of sections (model:, optim:, ...) at the top level");
  CHECK_THROWS_WITH(parse("just text\n"), "at the top level, got a scalar");
  const std::string p = write_file("syntax.yaml", "model:\n  d_model: 64\n  n_head: [4\n");
  CHECK_THROWS_WITH(load_config(p, {}), (p + ":4:1: YAML syntax error: ").c_str());
  CHECK_THROWS_WITH(parse("model:\n  d_model: 64\n bad: 1\n"), "t.yaml:3:");
  const std::string missing = tmp_dir() + "/no_such.yaml";
  CHECK_THROWS_WITH(load_config(missing, {}), ("cannot read config file '" + missing + "'").c_str());
  CHECK_THROWS_WITH(load_config(tmp_dir(), {}), "it is a directory");
}

// Case 5 and 7 of issue 15: a second document is an error, not ignored; nesting past yaml-cpp's limit
// says so instead of "bad file".
void test_documents_and_depth() {
  CHECK_THROWS_WITH(parse("model: {d_model: 64}\n---\ntrain: {seed: 2}\n"),
                    "t.yaml:3:1: a second YAML document (after '---')");
  CHECK(parse("---\nmodel: {d_model: 64}\n").model.d_model == 64);  // a leading marker is one document
  CHECK(parse("model: {d_model: 64}\n---\n").model.d_model == 64);  // a trailing empty one is nothing
  CHECK(parse("model: {d_model: 64}\n---\n---\n...\n").model.d_model == 64);
  CHECK_THROWS_WITH(parse("model: {d_model: 64}\n---\n---\ntrain: {seed: 2}\n"), "a second YAML document");
  // yaml-cpp's LoadAll never returned on these (empty documents until memory ran out; fuzz_config found
  // the second): a syntax error now, at once.
  CHECK_THROWS_WITH(parse(",a: b\n"), "t.yaml: YAML syntax error: the parser cannot read this input");
  CHECK_THROWS_WITH(parse(",$ldologmpariwon: shared experlo\xce_ev"), "cannot read this input");
  CHECK_THROWS_WITH(parse(std::string(100000, '[')),
                    "t.yaml: YAML nested deeper than the parser's limit (2000");
  std::string indented;
  for (int i = 0; i < 3000; i++) indented += std::string(size_t(i), ' ') + "a:\n";
  CHECK_THROWS_WITH(parse(indented), "nested deeper than the parser's limit");
}

void test_overrides() {
  const std::string p = write_file("over.yaml", "optim:\n  lr: 0.01\nmodel:\n  d_model: 64\n");
  CHECK(load_config(p, {}).optim.lr == 0.01);
  CHECK(load_config(p, {"optim.lr=0.02"}).optim.lr == 0.02);                   // --set beats the file
  CHECK(load_config(p, {"optim.lr=0.02", "optim.lr=0.03"}).optim.lr == 0.03);  // last wins
  CHECK(load_config(p, {"optim.lr=0.02"}).model.d_model == 64);                // the rest of the file stays
  const Config c = parse("", {"moe.gate_noise=true", "train.seed=7", "data.train=*.bin", "model.arch=moe",
                              "train.out_dir=runs/a: b", "scmoe.expert_slot=2", "optim.lr= 5e-4 "});
  CHECK(c.moe.gate_noise && c.train.seed == 7u && c.model.arch == "moe");
  CHECK(c.data.train == "*.bin");  // string keys take text YAML would reject (an alias) verbatim
  CHECK(c.train.out_dir == "runs/a: b");
  CHECK(c.scmoe.expert_slot == "2" && c.optim.lr == 5e-4);
  CHECK(parse("", {"train.out_dir='quoted'"}).train.out_dir == "quoted");

  CHECK_THROWS_WITH(parse("", {"optim.lr=-1"}), "--set optim.lr=-1: optim.lr: expected a number > 0, got -1");
  CHECK_THROWS_WITH(parse("", {"optim.lr"}), "--set optim.lr: expected KEY=VALUE");
  CHECK_THROWS_WITH(parse("", {"=3"}), "--set =3: expected KEY=VALUE");
  CHECK_THROWS_WITH(parse("", {"model.d_modle=3"}),
                    "--set model.d_modle=3: model.d_modle: unknown key (did you mean 'model.d_model'?)");
  CHECK_THROWS_WITH(parse("", {"model=3"}),
                    "--set model=3: model: is a section; set one of its keys, e.g. model.arch");
  CHECK_THROWS_WITH(parse("", {"model.d_model=[1]"}),
                    "model.d_model: expected an integer >= 1, got a sequence");
  CHECK_THROWS_WITH(parse("", {"model.d_model=[1"}), "model.d_model: expected an integer >= 1, got '[1'");
  CHECK_THROWS_WITH(parse("", {"model.d_model="}),
                    "--set model.d_model=: model.d_model: expected an integer >= 1, got nothing");
  CHECK_THROWS_WITH(parse("", {"data.val="}),
                    "--set data.val=: data.val: expected a non-empty string, got ''");
  // An error in a later override is reported even when an earlier one was fine.
  CHECK_THROWS_WITH(parse("", {"optim.lr=0.1", "optim.lr=x"}), "--set optim.lr=x: optim.lr:");
}

void test_arch_defaults() {
  CHECK(parse("model: {arch: scmoe}\n").moe.top_k == 1);
  CHECK(parse("model: {arch: shared_expert}\n").moe.top_k == 1);
  CHECK(parse("model: {arch: moe}\n").moe.top_k == 2);
  CHECK(parse("model: {arch: scmoe}\nmoe: {top_k: 2}\n").moe.top_k == 2);  // ScMoE-2: set explicitly
  CHECK(parse("", {"model.arch=scmoe", "moe.top_k=2"}).moe.top_k == 2);
  CHECK(parse("", {"model.arch=scmoe"}).moe.top_k == 1);
}

void test_cross_checks() {
  CHECK_THROWS_WITH(parse("model: {d_model: 100, n_head: 3}\n"),
                    "t.yaml: model.d_model (100) must be a multiple of model.n_head (3)");
  CHECK_THROWS_WITH(parse("", {"model.d_model=100", "model.n_head=3"}), "--set: model.d_model (100)");
  CHECK_THROWS_WITH(parse("model: {d_model: 100}\n", {"model.n_head=3"}), "t.yaml with --set: model.d_model");
  CHECK_THROWS_WITH(parse("moe: {top_k: 3, num_experts: 2}\n"),
                    "moe.top_k (3) must be <= moe.num_experts (2)");
  CHECK_THROWS_WITH(parse("model: {arch: moe, n_layer: 2}\nmoe: {every: 3}\n"),
                    "moe.every (3) must be <= model.n_layer (2)");
  CHECK(parse("model: {arch: dense, n_layer: 2}\nmoe: {every: 3}\n").moe.every == 3);
  CHECK_THROWS_WITH(parse("optim: {lr: 0.001, min_lr: 0.01}\n"),
                    "optim.min_lr (0.01) must be <= optim.lr (0.001)");
  CHECK_THROWS_WITH(parse("train: {precision: bf16}\n"), "train.precision bf16 requires train.device cuda");
  CHECK(parse("train: {precision: bf16, device: cuda}\n").train.precision == "bf16");
  CHECK_THROWS_WITH(
      parse("train: {global_batch_tokens: 1000}\n"),
      "train.global_batch_tokens (1000) must be a multiple of train.batch_size * model.seq_len (1024)");
  CHECK(parse("train: {global_batch_tokens: 4096}\n").train.global_batch_tokens == 4096);
  // The expert cache must hold a token's experts and may hold at most all of them.
  CHECK_THROWS_WITH(parse("model: {arch: moe}\ninference: {offload_experts: true, expert_cache_slots: 1}\n"),
                    "inference.expert_cache_slots (1) must be >= moe.top_k (2)");
  CHECK_THROWS_WITH(parse("model: {arch: scmoe}\ninference: {offload_experts: true, expert_cache_slots: 9}\n"),
                    "inference.expert_cache_slots (9) must be <= moe.num_experts (8)");
  CHECK(parse("model: {arch: scmoe}\ninference: {offload_experts: true, expert_cache_slots: 1}\n")
            .inference.expert_cache_slots == 1);  // scmoe routes top-1 unless told otherwise
  CHECK(parse("model: {arch: moe}\ninference: {expert_cache_slots: 1}\n").inference.expert_cache_slots == 1);
  CHECK(parse("inference: {offload_experts: true, expert_cache_slots: 99}\n").model.arch == "dense");
}

// A config whose every key differs from the default, with awkward doubles and strings.
Config unusual_config() {
  Config c;
  c.model = {"scmoe", 6, 96, 3, 200, 64, 50257, "rmsnorm", 0.1 + 0.2};
  c.moe = {16, 3, 1, 640, -1.5, 1e-300, 5e-324, true, false, 3, true, "sigmoid", 1e-4, {true, 0.25, false}};
  c.scmoe = {3, "cg2", "4"};
  c.optim = {3e-4, 0.0, 0.0, 0.999999999999, 1.2345678901234567e-9, -2.5, 7, "linear", 123, 1e-7};
  c.train.max_steps = std::numeric_limits<int>::max();
  c.train.batch_size = 3;
  c.train.grad_accum = 5;
  c.train.global_batch_tokens = 192LL * 1000000000LL;
  c.train.seed = std::numeric_limits<uint64_t>::max();
  c.train.device = "cuda";
  c.train.precision = "bf16";
  c.train.dtype = "float64";
  c.train.out_dir = "runs/a b: c # \"q\" \\ \t\n \x7f \xc3\xbc end";
  c.train.log_every = 2;
  c.train.eval_every = 0;
  c.train.eval_batches = 1;
  c.train.threads = 3;
  c.train.trace_step = 4;
  c.data = {"*.bin", "null", false};
  c.checkpoint = {0, 1};
  c.comm.timeout_s = 7.5;
  c.comm.overlap = false;
  c.comm.measure_peer_wait = true;
  c.comm.transport = "shm";
  c.comm.simulate_link = {12.5, 0.1};
  c.inference = {true, 7, "speculative", 0.1 + 0.7, 2.5, "gpt2"};
  return c;
}

void test_round_trip() {
  const Config u = unusual_config();
  CHECK(differences(u, Config{}, false) == num_fields());  // so the round trip covers every key
  const std::string yaml = config_to_yaml(u);
  const std::string err = error_of([&] { parse_config_text(yaml, "round trip"); });
  if (!err.empty()) std::fprintf(stderr, "round trip failed to parse: %s\n%s", err.c_str(), yaml.c_str());
  CHECK(err.empty());
  if (!err.empty()) return;
  const Config back = parse_config_text(yaml, "round trip");
  CHECK(differences(back, u, true) == 0);
  CHECK(config_to_yaml(back) == yaml);
  CHECK(differences(parse_config_text(config_to_yaml(Config{}), "defaults"), Config{}, true) == 0);
  // Every key is printed, nested, with doubles that look like doubles.
  CHECK(yaml.find("comm:\n  timeout_s: 7.5\n  overlap: false\n  measure_peer_wait: true\n  transport: shm\n  simulate_link:\n    bandwidth_gb_s: 12.5\n    latency_us: 0.1\n") !=
        std::string::npos);
  CHECK(config_to_yaml(Config{}).find("  capacity_factor: 2.0\n") != std::string::npos);
  CHECK(config_to_yaml(Config{}).find("  eps: 1.0e-08\n") != std::string::npos);
  int lines = 0;
  for (char ch : config_to_yaml(Config{})) lines += ch == '\n';
  CHECK(lines == num_fields() + 11);  // plus 9 section headers, comm.simulate_link and moe.expert_bias
}

void test_docs_up_to_date() {
  const std::string path = std::string(SCMOE_SOURCE_DIR) + "/docs/config.md";
  const std::string want = config_reference_markdown();
  const bool same = read_file(path) == want;
  if (!same)
    std::fprintf(stderr,
                 "%s is out of date; regenerate it with `build/train --config-reference > docs/config.md`\n",
                 path.c_str());
  CHECK(same);
  int rows = 0;
  for (size_t at = 0; (at = want.find("\n| `", at)) != std::string::npos; ++at) ++rows;
  CHECK(rows == num_fields());
  CHECK(want.find("| `comm.simulate_link.bandwidth_gb_s` | double | `0.0` | >= 0 |") != std::string::npos);
  CHECK(want.find("| `model.arch` | string | `dense` | `dense`, `moe`, `shared_expert`, `scmoe` |") !=
        std::string::npos);
}

}  // namespace

int main() {
  test_defaults();
  test_nested_file();
  test_shipped_configs();
  test_unknown_keys();
  test_type_errors();
  test_structure_errors();
  test_documents_and_depth();
  test_overrides();
  test_arch_defaults();
  test_cross_checks();
  test_round_trip();
  test_docs_up_to_date();
  fs::remove_all(tmp_dir());
  TEST_MAIN_END();
}
