// The configuration schema (one table of every key) and what it drives: YAML and --set parsing with
// validation, the resolved config as YAML, and the Markdown reference in docs/config.md.
#include "train/config.h"

#include <yaml-cpp/depthguard.h>    // YAML::DeepRecursion
#include <yaml-cpp/eventhandler.h>  // YAML::EventHandler (DocumentProbe)
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <variant>

#include "core/check.h"

namespace scmoe {
namespace {

// ---------------------------------------------------------------------------------------------------
// The schema
// ---------------------------------------------------------------------------------------------------

// A key's storage in Config; the alternative says the key's type.
using Field = std::variant<int*, int64_t*, uint64_t*, double*, bool*, std::string*>;
const char* const kTypeNames[] = {"int", "int64", "uint64", "double", "bool", "string"};

constexpr double kInf = std::numeric_limits<double>::infinity();

// What a key accepts beyond its type: a numeric interval, a list of strings, or a non-empty string.
struct Rule {
  double lo = -kInf, hi = kInf;
  bool lo_open = false, hi_open = false;
  const char* choices = nullptr;  // "a|b|c"
  bool non_empty = false;
};

Rule any() { return {}; }
Rule at_least(double lo) { return {lo, kInf, false, false, nullptr, false}; }
Rule above(double lo) { return {lo, kInf, true, false, nullptr, false}; }
Rule between(double lo, double hi) { return {lo, hi, false, false, nullptr, false}; }
Rule unit_open() { return {0, 1, false, true, nullptr, false}; }  // [0, 1)
Rule one_of(const char* choices) { return {-kInf, kInf, false, false, choices, false}; }
Rule non_empty() { return {-kInf, kInf, false, false, nullptr, true}; }

struct Key {
  const char* path;  // "section.key" (or deeper); also the member's path in Config
  Field (*field)(Config&);
  Rule rule;
  const char* meaning;
};

// The member expression doubles as the key path, so the two cannot drift apart.
// clang-format off
#define KEY(member, rule, meaning) Key{#member, [](Config& c) -> Field { return &c.member; }, rule, meaning}
// clang-format on

const Key kKeys[] = {
    KEY(model.arch, one_of("dense|moe|shared_expert|scmoe"),
        "block type: dense MLP, top-k MoE, shared expert + top-1, or ScMoE shortcut pairs"),
    KEY(model.n_layer, at_least(1), "transformer blocks"),
    KEY(model.d_model, at_least(1), "width of the residual stream"),
    KEY(model.n_head, at_least(1), "attention heads (must divide d_model)"),
    KEY(model.d_ff, at_least(1),
        "hidden size of the dense MLP (and of the experts unless moe.d_expert is set)"),
    KEY(model.seq_len, at_least(1), "context length in tokens"),
    KEY(model.vocab_size, at_least(2), "vocabulary size; every token in the shards must be below it"),
    KEY(model.norm, one_of("layernorm|rmsnorm"), "normalisation layer"),
    KEY(model.init_std, above(0), "standard deviation of the normal weight initialisation"),
    KEY(moe.num_experts, at_least(1), "routed experts per MoE layer (over all ranks)"),
    KEY(moe.top_k, at_least(1), "routed experts per token; when not set, 1 for arch scmoe and shared_expert"),
    KEY(moe.every, at_least(1), "an MoE layer every `every` blocks (the last block of each group)"),
    KEY(moe.d_expert, at_least(0),
        "hidden size of each routed expert and of the shared expert; 0: model.d_ff"),
    KEY(moe.capacity_factor, any(),
        "capacity per expert is top_k * ceil(cf * tokens / num_experts); <= 0: dropless"),
    KEY(moe.aux_loss_coef, at_least(0), "weight of the load-balancing auxiliary loss"),
    KEY(moe.z_loss_coef, at_least(0), "weight of the router z-loss (0: off)"),
    KEY(moe.gate_noise, any(), "add learned noise to the gate logits in training"),
    KEY(moe.renormalize, any(), "renormalise the top-k probabilities when top_k > 1"),
    KEY(moe.score, one_of("softmax|sigmoid"),
        "router scores: softmax over the experts, or sigmoid per expert (gates normalised over the chosen "
        "top_k when moe.renormalize; the balance losses use the scores normalised over all experts)"),
    KEY(moe.seq_aux_loss_coef, at_least(0),
        "weight of DeepSeek-V3's sequence-level balance loss: per sequence, E/(k T) sum_e count_e * "
        "mean_t score_e, averaged over sequences (0: off)"),
    KEY(moe.expert_bias.enabled, any(),
        "auxiliary-loss-free balancing: a per-expert bias (fp32, outside the optimizer, in checkpoints) added "
        "to the scores for the top-k choice only"),
    KEY(moe.expert_bias.update_rate, at_least(0),
        "after each optimizer step bias_e += rate * sign(mean load - load_e), loads over the global batch "
        "before capacity"),
    KEY(moe.expert_bias.center, any(), "re-centre the biases to mean zero after each update"),
    KEY(moe.pipeline_degree, at_least(1),
        "split each expert's All-to-All and computation into this many chunks that overlap (capacity_factor "
        "> 0)"),
    KEY(moe.force_balanced_routing, any(),
        "benchmarks only (cpu backend): route by random logits, as Megatron-Core's "
        "moe_router_force_load_balancing, "
        "so expert loads stay balanced and communication is measured apart from load imbalance; the router "
        "does not learn, and a resumed run routes differently"),
    KEY(scmoe.position, between(1, 3),
        "routed experts' input: 1 preceding block's output, 2 inside it (after attention), 3 its input"),
    KEY(scmoe.combine, one_of("add|cg1|cg2"),
        "shared-expert weighting: add (1), cg1 (sigmoid gate), cg2 (softmax with the routed output)"),
    KEY(scmoe.expert_slot, one_of("auto|1|2|3|4|5"),
        "where the expert computation is issued in the overlapped schedule, 1 to the backbone units it "
        "overlaps + 1 (Pos-1: 3, Pos-2: 4, Pos-3: 5); auto: from measured op times"),
    KEY(optim.lr, above(0), "peak learning rate (AdamW)"),
    KEY(optim.weight_decay, at_least(0), "decoupled weight decay (AdamW)"),
    KEY(optim.beta1, unit_open(), "AdamW first-moment decay"),
    KEY(optim.beta2, unit_open(), "AdamW second-moment decay"),
    KEY(optim.eps, above(0), "AdamW denominator epsilon"),
    KEY(optim.grad_clip, any(), "clip the global gradient norm to this; <= 0: no clipping"),
    KEY(optim.warmup_steps, at_least(0), "steps of linear warm-up to lr"),
    KEY(optim.schedule, one_of("cosine|linear|constant"), "decay from lr to min_lr after warm-up"),
    KEY(optim.decay_steps, at_least(0), "the schedule's horizon in steps; 0: train.max_steps"),
    KEY(optim.min_lr, at_least(0), "learning rate at the end of the schedule (<= lr)"),
    KEY(train.max_steps, at_least(1), "optimizer steps to train"),
    KEY(train.batch_size, at_least(1), "sequences per rank per micro-step"),
    KEY(train.grad_accum, at_least(1),
        "micro-steps per optimizer step (derived when global_batch_tokens > 0)"),
    KEY(train.global_batch_tokens, at_least(0),
        "tokens per optimizer step over all ranks; 0: batch_size * seq_len * world_size * grad_accum"),
    KEY(train.seed, at_least(0), "seed of initialisation, data order and gate noise"),
    KEY(train.device, one_of("auto|cpu|cuda"), "backend; auto: cuda when a GPU is present, else cpu"),
    KEY(train.precision, one_of("fp32|bf16"),
        "activation precision; bf16 needs cuda (master weights stay fp32)"),
    KEY(train.dtype, one_of("float32|float64"), "CPU compute type (float64 for gradient checks)"),
    KEY(train.out_dir, non_empty(),
        "run directory: config.yaml, metrics.jsonl, checkpoints/; one run at a time (.lock)"),
    KEY(train.log_every, at_least(1), "log training metrics every N steps"),
    KEY(train.eval_every, at_least(0), "validate every N steps; 0: only at the end"),
    KEY(train.eval_batches, at_least(1), "validation batches per evaluation"),
    KEY(train.threads, at_least(0), "OpenMP threads; 0: the library's default"),
    KEY(train.trace_step, at_least(0),
        "write a Chrome trace (one track per stream and rank) of this step to out_dir/trace-rankR.json; 0: "
        "off"),
    KEY(data.train, non_empty(), "glob of the training token shards"),
    KEY(data.val, non_empty(), "glob of the validation token shards"),
    KEY(data.shuffle, any(), "shuffle the order of training windows each epoch (seeded)"),
    KEY(checkpoint.every, at_least(0), "checkpoint every N steps; 0: only at the end and on signals"),
    KEY(checkpoint.keep, at_least(1), "keep the last K checkpoints"),
    KEY(comm.timeout_s, above(0),
        "seconds before a rendezvous or collective with a missing peer fails (naming the ranks that hang)"),
    KEY(comm.overlap, any(),
        "run the MoE All-to-Alls on a communication stream ordered by events (cpu and cuda): scmoe overlaps "
        "them "
        "with the backbone, moe.pipeline_degree > 1 with the experts' chunks; false: every exchange in order "
        "on "
        "the compute stream, the sequential reference (bit-identical results)"),
    KEY(comm.measure_peer_wait, any(),
        "several ranks: a barrier before each MoE All-to-All splits its time into waiting for the slowest "
        "rank "
        "(load imbalance, peer_wait_ms) and the transfer; adds one barrier per exchange"),
    KEY(comm.transport, one_of("auto|gloo|shm"),
        "several ranks on the cpu backend: how the MoE All-to-Alls travel; shm through a shared-memory "
        "segment "
        "(every rank on this host), gloo over TCP; auto: shm when every rank is on this host and it can be "
        "set up"),
    KEY(comm.simulate_link.bandwidth_gb_s, at_least(0),
        "delay each All-to-All as a link of this many GB/s would; 0: no simulated link"),
    KEY(comm.simulate_link.latency_us, at_least(0),
        "latency of the simulated link per All-to-All, in microseconds"),
    KEY(inference.offload_experts, any(),
        "generate: keep routed experts in host memory and a device cache of expert_cache_slots per MoE "
        "layer"),
    KEY(inference.expert_cache_slots, at_least(1),
        "experts per MoE layer in the device cache when offloading (between moe.top_k and moe.num_experts)"),
    KEY(inference.migration, one_of("async|blocking|speculative"),
        "when an offloaded expert is copied: async as soon as its gate decides (scmoe: one block early), "
        "blocking at the point of use, speculative also prefetches the next MoE layer's predicted experts"),
    KEY(inference.host_link_gb_s, at_least(0),
        "cpu backend: simulate a host-to-device link of this many GB/s for expert copies; 0: memcpy speed"),
    KEY(inference.host_link_latency_us, at_least(0),
        "cpu backend: latency of the simulated host-to-device link per expert copy, in microseconds"),
    KEY(inference.tokenizer, one_of("auto|byte|gpt2"),
        "generate: prompt/output tokenizer; auto reads the data set's meta.json (data/prepare.py), else "
        "byte when model.vocab_size is 256"),
};
#undef KEY

// One line per top-level section for the reference; keys of a section missing here still appear.
const std::pair<const char*, const char*> kSectionIntros[] = {
    {"model", "The transformer's shape and block type."},
    {"moe", "Mixture-of-experts layers (arch moe, shared_expert and scmoe)."},
    {"scmoe", "The ScMoE shortcut pair and its overlapped schedule (arch scmoe)."},
    {"optim", "AdamW and the learning-rate schedule."},
    {"train", "The training loop, backend, batch and run directory."},
    {"data", "Token shards in llm.c's format, given as globs."},
    {"checkpoint", "Checkpoints under `train.out_dir/checkpoints/`."},
    {"comm", "Communication between ranks."},
    {"inference", "Generation (`train generate`) and memory-limited expert offloading (docs/inference.md)."},
};

// Rules spanning several keys, checked after the file and every override are applied.
struct CrossCheck {
  const char* rule;                         // for the reference
  std::string (*violation)(const Config&);  // "" when the rule holds
};

std::string num(long long v) { return std::to_string(v); }

// Shortest text that reads back as the same double, always with a '.' in the mantissa so that
// YAML 1.1 readers (PyYAML) see a float too: 2.0, 1.0e-08, 0.001.
std::string format_double(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, r.ptr);
  const size_t e = s.find('e');
  if (s.find('.') == std::string::npos) s.insert(e == std::string::npos ? s.size() : e, ".0");
  return s;
}

// Bounds in messages and the reference read as plain numbers: >= 1, [0, 1).
std::string format_bound(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

const CrossCheck kCrossChecks[] = {
    {"`model.d_model` is a multiple of `model.n_head`",
     [](const Config& c) -> std::string {
       if (c.model.d_model % c.model.n_head == 0) return "";
       return "model.d_model (" + num(c.model.d_model) + ") must be a multiple of model.n_head (" +
              num(c.model.n_head) + ")";
     }},
    {"`moe.top_k` <= `moe.num_experts`",
     [](const Config& c) -> std::string {
       if (c.moe.top_k <= c.moe.num_experts) return "";
       return "moe.top_k (" + num(c.moe.top_k) + ") must be <= moe.num_experts (" + num(c.moe.num_experts) +
              ")";
     }},
    {"`moe.every` <= `model.n_layer` unless `model.arch` is dense (otherwise no block has experts)",
     [](const Config& c) -> std::string {
       if (c.model.arch == "dense" || c.moe.every <= c.model.n_layer) return "";
       return "moe.every (" + num(c.moe.every) + ") must be <= model.n_layer (" + num(c.model.n_layer) +
              ") for model.arch " + c.model.arch + ", or no block would have experts";
     }},
    {"`optim.min_lr` <= `optim.lr`",
     [](const Config& c) -> std::string {
       if (c.optim.min_lr <= c.optim.lr) return "";
       return "optim.min_lr (" + format_double(c.optim.min_lr) + ") must be <= optim.lr (" +
              format_double(c.optim.lr) + ")";
     }},
    {"`train.precision` bf16 requires `train.device` cuda",
     [](const Config& c) -> std::string {
       if (c.train.precision != "bf16" || c.train.device == "cuda") return "";
       return "train.precision bf16 requires train.device cuda (got train.device " + c.train.device + ")";
     }},
    {"`train.global_batch_tokens` is a multiple of `train.batch_size` * `model.seq_len`",
     [](const Config& c) -> std::string {
       const int64_t per_seq_batch = int64_t(c.train.batch_size) * c.model.seq_len;
       if (c.train.global_batch_tokens % per_seq_batch == 0) return "";
       return "train.global_batch_tokens (" + num(c.train.global_batch_tokens) +
              ") must be a multiple of train.batch_size * model.seq_len (" + num(per_seq_batch) + ")";
     }},
    {"`inference.expert_cache_slots` is between `moe.top_k` and `moe.num_experts` when "
     "`inference.offload_experts` is true and `model.arch` is not dense",
     [](const Config& c) -> std::string {
       const int slots = c.inference.expert_cache_slots;
       if (!c.inference.offload_experts || c.model.arch == "dense") return "";
       if (slots < c.moe.top_k)
         return "inference.expert_cache_slots (" + num(slots) + ") must be >= moe.top_k (" + num(c.moe.top_k) +
                "): a token needs all of its experts in the cache at once";
       if (slots > c.moe.num_experts)
         return "inference.expert_cache_slots (" + num(slots) + ") must be <= moe.num_experts (" +
                num(c.moe.num_experts) + "); " + num(c.moe.num_experts) + " caches every expert";
       return "";
     }},
};

// ---------------------------------------------------------------------------------------------------
// Schema queries
// ---------------------------------------------------------------------------------------------------

// The key's type (its Field alternative), read off a scratch Config.
Field probe(const Key& k) {
  static Config scratch;
  return k.field(scratch);
}

const Key* find_key(const std::string& path) {
  for (const Key& k : kKeys)
    if (path == k.path) return &k;
  return nullptr;
}

// The first key under a section ("" when `path` is no section), for examples in messages.
std::string first_key_under(const std::string& path) {
  for (const Key& k : kKeys)
    if (std::strncmp(k.path, path.c_str(), path.size()) == 0 && k.path[path.size()] == '.') return k.path;
  return "";
}

bool is_section(const std::string& path) { return !first_key_under(path).empty(); }

std::string leaf_of(const std::string& path) { return path.substr(path.rfind('.') + 1); }
std::string section_of(const std::string& path) { return path.substr(0, path.find('.')); }

// Every valid path: keys and (nested) sections.
std::vector<std::string> all_paths() {
  std::vector<std::string> out;
  for (const Key& k : kKeys) {
    const std::string p = k.path;
    for (size_t dot = p.find('.'); dot != std::string::npos; dot = p.find('.', dot + 1))
      if (std::find(out.begin(), out.end(), p.substr(0, dot)) == out.end()) out.push_back(p.substr(0, dot));
    out.push_back(p);
  }
  return out;
}

// Optimal string alignment distance: edits, with a swap of neighbours counting as one (typos).
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// The one key with the same name in another section (optim.seed -> train.seed, d_model ->
// model.d_model); "" when there is none or several.
std::string same_leaf_key(const std::string& path) {
  std::string found;
  for (const Key& k : kKeys) {
    if (leaf_of(k.path) != leaf_of(path)) continue;
    if (!found.empty()) return "";
    found = k.path;
  }
  return found;
}

// A key misplaced into another section, else the closest valid path if it is close enough to be a
// typo, else "".
std::string suggest(const std::string& path) {
  if (std::string moved = same_leaf_key(path); !moved.empty()) return moved;
  const size_t leaf_len = leaf_of(path).size();
  const size_t limit = leaf_len <= 3 ? 1 : leaf_len <= 8 ? 2 : 3;
  std::string best;
  size_t best_d = limit + 1;
  for (const std::string& cand : all_paths()) {
    const size_t d = edit_distance(path, cand);
    if (d < best_d) best = cand, best_d = d;
  }
  return best;
}

// ---------------------------------------------------------------------------------------------------
// Values: text <-> typed, with the rule
// ---------------------------------------------------------------------------------------------------

// "an integer >= 1", "a number in [0, 1)", "one of a|b", ...: what a key expects, for messages.
std::string expected(const Key& k) {
  const Field f = probe(k);
  const Rule& r = k.rule;
  if (std::holds_alternative<bool*>(f)) return "true or false";
  if (std::holds_alternative<std::string*>(f)) {
    if (r.choices) return std::string("one of ") + r.choices;
    return r.non_empty ? "a non-empty string" : "a string";
  }
  std::string s = std::holds_alternative<double*>(f) ? "a number" : "an integer";
  const bool has_lo = r.lo > -kInf, has_hi = r.hi < kInf;
  if (has_lo && has_hi)
    return s + " in " + (r.lo_open ? "(" : "[") + format_bound(r.lo) + ", " + format_bound(r.hi) +
           (r.hi_open ? ")" : "]");
  if (has_lo) return s + (r.lo_open ? " > " : " >= ") + format_bound(r.lo);
  if (has_hi) return s + (r.hi_open ? " < " : " <= ") + format_bound(r.hi);
  return s;
}

// Where a value came from, for messages: "configs/x.yaml" or "--set a.b=c".
[[noreturn]] void fail(const std::string& origin, const std::string& path, const std::string& msg) {
  throw Error(origin + ": " + (path.empty() ? "" : path + ": ") + msg);
}

// A value as found in the input: scalar text, or a description of what stood there instead.
struct Raw {
  std::string text;
  const char* not_scalar = nullptr;  // "a map", "a sequence", "nothing (null)"
};

// YAML allows a leading '+', std::from_chars does not.
const char* skip_plus(const std::string& s) {
  return s.size() > 1 && s[0] == '+' && s[1] != '-' ? s.c_str() + 1 : s.c_str();
}

// Parses all of `s` as T; false on junk. Sets `out_of_range` when the text is a number T cannot hold.
template <class T>
bool parse_number(const std::string& s, T& out, bool& out_of_range) {
  const char* first = skip_plus(s);
  const char* last = s.c_str() + s.size();
  auto r = std::from_chars(first, last, out);
  out_of_range = r.ec == std::errc::result_out_of_range && r.ptr == last;
  if (r.ec != std::errc() || r.ptr != last || first == last) return false;
  if constexpr (std::is_floating_point_v<T>) return std::isfinite(out);
  return true;
}

bool in_range(const Rule& r, double v) {
  if (v < r.lo || (r.lo_open && v == r.lo)) return false;
  if (v > r.hi || (r.hi_open && v == r.hi)) return false;
  return true;
}

bool in_choices(const char* choices, const std::string& v) {
  std::stringstream ss(choices);
  for (std::string c; std::getline(ss, c, '|');)
    if (c == v) return true;
  return false;
}

template <class T>
void assign_number(T* p, const Key& k, const Raw& v, const std::string& origin) {
  T x{};
  bool too_big = false;
  if (!parse_number(v.text, x, too_big))
    fail(origin, k.path,
         "expected " + expected(k) + ", got '" + v.text + "'" + (too_big ? " (out of range)" : ""));
  if (!in_range(k.rule, static_cast<double>(x)))
    fail(origin, k.path, "expected " + expected(k) + ", got " + v.text);
  *p = x;
}

void assign_value(bool* p, const Key& k, const Raw& v, const std::string& origin) {
  const std::string& t = v.text;
  if (t == "true" || t == "True" || t == "TRUE")
    *p = true;
  else if (t == "false" || t == "False" || t == "FALSE")
    *p = false;
  else
    fail(origin, k.path, "expected " + expected(k) + ", got '" + t + "'");
}

void assign_value(std::string* p, const Key& k, const Raw& v, const std::string& origin) {
  const bool ok = k.rule.choices ? in_choices(k.rule.choices, v.text) : !(k.rule.non_empty && v.text.empty());
  if (!ok) fail(origin, k.path, "expected " + expected(k) + ", got '" + v.text + "'");
  *p = v.text;
}

template <class T>
void assign_value(T* p, const Key& k, const Raw& v, const std::string& origin) {
  assign_number(p, k, v, origin);
}

void assign(const Key& k, Config& c, const Raw& v, const std::string& origin) {
  if (v.not_scalar) fail(origin, k.path, "expected " + expected(k) + ", got " + v.not_scalar);
  std::visit([&](auto* p) { assign_value(p, k, v, origin); }, k.field(c));
}

// Characters that never need quoting in YAML, wherever they are in a word.
bool plain_safe(char ch) {
  return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' || ch == '/' || ch == '-';
}

// A string as YAML: plain when unambiguous, else double-quoted with escapes.
std::string yaml_string(const std::string& s) {
  static const std::set<std::string> kReserved = {"null", "true", "false", "yes", "no",
                                                  "on",   "off",  "y",     "n"};
  std::string lower = s;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char ch) { return std::tolower(ch); });
  const bool plain = !s.empty() &&
                     (std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_' || s[0] == '/') &&
                     std::all_of(s.begin(), s.end(), plain_safe) && !kReserved.count(lower);
  if (plain) return s;
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (ch < 0x20 || ch == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", ch);
      out += buf;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

// A value as YAML text (round-trips exactly through parse_config_text).
struct ToYaml {
  std::string operator()(const int* p) const { return std::to_string(*p); }
  std::string operator()(const int64_t* p) const { return std::to_string(*p); }
  std::string operator()(const uint64_t* p) const { return std::to_string(*p); }
  std::string operator()(const double* p) const { return format_double(*p); }
  std::string operator()(const bool* p) const { return *p ? "true" : "false"; }
  std::string operator()(const std::string* p) const { return yaml_string(*p); }
};

std::string value_text(const Key& k, Config& c) { return std::visit(ToYaml{}, k.field(c)); }

// ---------------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------------

struct Parse {
  Config cfg;
  std::set<std::string> given;  // keys set by the file or an override (for arch-dependent defaults)
};

Raw raw_of(const YAML::Node& n) {
  if (n.IsMap()) return {"", "a map"};
  if (n.IsSequence()) return {"", "a sequence"};
  if (!n.IsScalar()) return {"", "nothing (null)"};
  return {n.Scalar(), nullptr};
}

const char* shape_of(const YAML::Node& n) {
  return n.IsMap() ? "a map" : n.IsSequence() ? "a sequence" : n.IsScalar() ? "a scalar" : "nothing";
}

[[noreturn]] void fail_unknown(const std::string& origin, const std::string& path, bool top_level) {
  const std::string hint = suggest(path);
  fail(origin, path,
       std::string(top_level ? "unknown section" : "unknown key") +
           (hint.empty() ? "" : " (did you mean '" + hint + "'?)"));
}

// Applies one YAML map whose keys live under `prefix` ("" for the document root).
void apply_map(const YAML::Node& map, const std::string& prefix, Parse& st, const std::string& origin) {
  std::set<std::string> seen;
  for (const auto& kv : map) {
    if (!kv.first.IsScalar())
      fail(origin, prefix, std::string("expected plain names as keys, got ") + shape_of(kv.first));
    const std::string name = kv.first.Scalar();
    const std::string path = prefix.empty() ? name : prefix + "." + name;
    if (name.find('.') != std::string::npos && (find_key(path) || is_section(path)))
      fail(origin, path, "write keys as nested maps, e.g. 'model: {d_model: 128}', not dotted names");
    if (!seen.insert(name).second) fail(origin, path, "given twice");
    if (const Key* k = find_key(path)) {
      assign(*k, st.cfg, raw_of(kv.second), origin);
      st.given.insert(path);
    } else if (is_section(path)) {
      if (kv.second.IsNull()) continue;  // "model:" with nothing under it
      if (!kv.second.IsMap())
        fail(origin, path, std::string("expected a map of keys (a section), got ") + shape_of(kv.second));
      apply_map(kv.second, path, st, origin);
    } else {
      fail_unknown(origin, path, prefix.empty());
    }
  }
}

// yaml-cpp's DepthGuard limit (yaml-cpp/depthguard.h).
constexpr int kYamlDepthLimit = 2000;

// yaml-cpp marks are 0-based; editors count from 1.
std::string position_of(const YAML::Mark& m) {
  if (m.is_null()) return "";
  return ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
}

// Records whether a YAML document holds anything (and where it starts). Used to look past the first
// document without YAML::LoadAll: yaml-cpp 0.7's LoadAll never returns on some malformed input (a
// leading ',' yields empty documents forever until memory runs out; found by tests/fuzz/fuzz_config).
class DocumentProbe : public YAML::EventHandler {
 public:
  bool content = false;
  YAML::Mark mark = YAML::Mark::null_mark();
  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark& m, YAML::anchor_t) override { seen(m); }
  void OnScalar(const YAML::Mark& m, const std::string&, YAML::anchor_t, const std::string&) override { seen(m); }
  void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    seen(m);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
    seen(m);
  }
  void OnMapEnd() override {}

 private:
  void seen(const YAML::Mark& m) {
    if (!content) content = true, mark = m;
  }
};

void apply_document(const std::string& text, Parse& st, const std::string& origin) {
  YAML::Node root;
  DocumentProbe second;  // the first document after the first that holds anything
  try {
    root = YAML::Load(text);
    // A second document ('---') would otherwise be dropped without a word. Every document after the
    // first takes at least a 3-character marker, so more than that many means yaml-cpp is not advancing.
    std::istringstream in(text);
    YAML::Parser parser(in);
    const size_t most = text.size() / 3 + 1;
    size_t n = 0;
    for (DocumentProbe doc; n <= most && parser.HandleNextDocument(doc); doc = DocumentProbe(), n++)
      if (n > 0 && doc.content && !second.content) second = doc;
    if (n > most)
      throw Error(origin + ": YAML syntax error: the parser cannot read this input (it makes no progress; a " +
                  "stray ',' at the top level?)");
  } catch (const YAML::DeepRecursion&) {  // yaml-cpp says only "bad file" at line 1
    throw Error(origin + ": YAML nested deeper than the parser's limit (" + std::to_string(kYamlDepthLimit) +
                " levels); a configuration is three levels deep at most: is this the right file?");
  } catch (const YAML::Exception& e) {
    throw Error(origin + position_of(e.mark) + ": YAML syntax error: " + e.msg);
  }
  if (second.content)
    throw Error(origin + position_of(second.mark) + ": a second YAML document (after '---'); a configuration is " +
                "one document: merge the two, or give the second's keys with --set");
  if (root.IsNull()) return;  // empty file: defaults
  if (!root.IsMap())
    fail(origin, "",
         std::string("expected a map of sections (model:, optim:, ...) at the top level, got ") +
             shape_of(root));
  apply_map(root, "", st, origin);
}

// The value of a --set: a YAML scalar; string keys fall back to the raw text so that globs such as
// *.bin or text with ': ' need no quoting.
Raw override_value(const std::string& text, bool string_key) {
  Raw v{text, nullptr};
  try {
    v = raw_of(YAML::Load(text));
  } catch (const YAML::Exception&) {
    // not YAML: numbers and bools then report the text itself as what they got
  }
  if (v.not_scalar && string_key) return {text, nullptr};
  return v;
}

void apply_override(const std::string& arg, Parse& st) {
  const std::string origin = "--set " + arg;
  const size_t eq = arg.find('=');
  if (eq == std::string::npos || eq == 0) fail(origin, "", "expected KEY=VALUE, e.g. --set optim.lr=3e-4");
  const std::string path = arg.substr(0, eq);
  const Key* k = find_key(path);
  if (!k) {
    if (is_section(path))
      fail(origin, path, "is a section; set one of its keys, e.g. " + first_key_under(path));
    fail_unknown(origin, path, false);
  }
  assign(*k, st.cfg, override_value(arg.substr(eq + 1), std::holds_alternative<std::string*>(probe(*k))),
         origin);
  st.given.insert(path);
}

// Defaults that depend on another key, applied only where the user did not choose.
void resolve_defaults(Parse& st) {
  const std::string& arch = st.cfg.model.arch;
  if (!st.given.count("moe.top_k") && (arch == "scmoe" || arch == "shared_expert")) st.cfg.moe.top_k = 1;
}

void cross_check(const Config& c, const std::string& origin) {
  for (const CrossCheck& x : kCrossChecks) {
    const std::string v = x.violation(c);
    if (!v.empty()) fail(origin, "", v);
  }
}

std::string combined_origin(const std::string& origin, const std::vector<std::string>& overrides) {
  if (origin.empty()) return overrides.empty() ? "defaults" : "--set";
  return overrides.empty() ? origin : origin + " with --set";
}

// ---------------------------------------------------------------------------------------------------
// The reference
// ---------------------------------------------------------------------------------------------------

std::string md_cell(const std::string& s) {
  std::string out;
  for (char ch : s) out += ch == '|' ? std::string("\\|") : std::string(1, ch);
  return out;
}

std::string allowed_cell(const Key& k) {
  const Field f = probe(k);
  const Rule& r = k.rule;
  if (std::holds_alternative<bool*>(f)) return "`true`, `false`";
  if (std::holds_alternative<std::string*>(f)) {
    if (!r.choices) return r.non_empty ? "non-empty" : "any";
    std::string out, c;
    for (std::stringstream ss(r.choices); std::getline(ss, c, '|');)
      out += (out.empty() ? "`" : ", `") + c + "`";
    return out;
  }
  const std::string e = expected(k);
  const size_t sp = e.find(' ', e.find(' ') + 1);  // drop "a number" / "an integer"
  if (sp == std::string::npos) return "any";
  std::string rest = e.substr(sp + 1);
  return rest.rfind("in ", 0) == 0 ? rest.substr(3) : rest;
}

std::string default_cell(const Key& k) {
  Config defaults;
  const Field f = k.field(defaults);
  if (const auto* s = std::get_if<std::string*>(&f)) return (*s)->empty() ? "`\"\"`" : "`" + **s + "`";
  return "`" + value_text(k, defaults) + "`";
}

const char* section_intro(const std::string& section) {
  for (const auto& [name, intro] : kSectionIntros)
    if (section == name) return intro;
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Public interface
// ---------------------------------------------------------------------------------------------------

Config parse_config_text(const std::string& yaml_text, const std::string& origin,
                         const std::vector<std::string>& overrides) {
  Parse st;
  try {
    apply_document(yaml_text, st, origin);
  } catch (const YAML::Exception& e) {  // node access on odd documents; keep the Error-only contract
    throw Error(origin + position_of(e.mark) + ": YAML error: " + e.msg);
  }
  for (const std::string& o : overrides) apply_override(o, st);
  resolve_defaults(st);
  cross_check(st.cfg, combined_origin(origin, overrides));
  return st.cfg;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  if (path.empty()) return parse_config_text("", "", overrides);
  // An ifstream on a directory opens and reads as empty: say what is wrong instead of using defaults.
  if (std::filesystem::is_directory(path))
    throw Error("cannot read config file '" + path + "': it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read config file '" + path + "': " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error("cannot read config file '" + path + "': " + std::strerror(errno));
  return parse_config_text(text.str(), path, overrides);
}

std::string config_to_yaml(const Config& c) {
  Config copy = c;  // the schema's accessors take a mutable Config
  std::string out;
  std::vector<std::string> open;  // the sections of the previous key
  for (const Key& k : kKeys) {
    std::vector<std::string> parts;
    std::stringstream ss(k.path);
    for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
    size_t same = 0;
    while (same < open.size() && same + 1 < parts.size() && open[same] == parts[same]) ++same;
    for (size_t d = same; d + 1 < parts.size(); ++d) out += std::string(2 * d, ' ') + parts[d] + ":\n";
    open.assign(parts.begin(), parts.end() - 1);
    out += std::string(2 * (parts.size() - 1), ' ') + parts.back() + ": " + value_text(k, copy) + "\n";
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> config_key_values(const Config& c) {
  Config copy = c;  // the schema's accessors take a mutable Config
  std::vector<std::pair<std::string, std::string>> out;
  for (const Key& k : kKeys) out.push_back({k.path, value_text(k, copy)});
  return out;
}

std::string config_reference_markdown() {
  std::ostringstream md;
  md << "# Configuration reference\n\n"
        "<!-- Generated by `build/train --config-reference > docs/config.md`; do not edit by hand. -->\n\n"
        "A run is configured by a YAML file of nested sections (`build/train --config FILE`), e.g.\n\n"
        "```yaml\nmodel:\n  arch: scmoe\n  d_model: 256\noptim:\n  lr: 3.0e-4\n```\n\n"
        "followed by `--set a.b=c` overrides (e.g. `--set optim.lr=3e-4`), applied in order: the last one "
        "wins. Every key is optional and defaults to the value below. Unknown keys are errors (with a "
        "suggestion), as are values of the wrong type or outside the allowed range; nothing is silently "
        "clamped. `--print-config` prints the resolved configuration, which is also saved as "
        "`config.yaml` in the run directory and in every checkpoint.\n\n"
        "Checks across keys, made after the file and all overrides are applied:\n\n";
  for (const CrossCheck& x : kCrossChecks) md << "- " << x.rule << "\n";
  std::string section;
  for (const Key& k : kKeys) {
    if (section_of(k.path) != section) {
      section = section_of(k.path);
      md << "\n## " << section << "\n\n";
      if (*section_intro(section)) md << section_intro(section) << "\n\n";
      md << "| key | type | default | allowed | meaning |\n| --- | --- | --- | --- | --- |\n";
    }
    md << "| `" << k.path << "` | " << kTypeNames[probe(k).index()] << " | " << md_cell(default_cell(k))
       << " | " << md_cell(allowed_cell(k)) << " | " << md_cell(k.meaning) << " |\n";
  }
  return md.str();
}

}  // namespace scmoe
