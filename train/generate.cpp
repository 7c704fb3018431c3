// The generate command (see generate.h).
#include "train/generate.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/check.h"
#include "data/tokenizer.h"
#include "infer/infer.h"
#include "model/architecture.h"
#include "train/backend_select.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"

namespace fs = std::filesystem;

namespace scmoe {

namespace {

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

double mib(size_t bytes) { return double(bytes) / 1048576.0; }

// Nearest-rank percentile (q in (0, 1]) of unsorted values; 0 for none.
double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = size_t(std::max(1.0, std::ceil(q * double(v.size())))) - 1;
  return v[std::min(i, v.size() - 1)];
}

std::string prompt_text(const GenerateOptions& opt) {
  SCMOE_CHECK(opt.prompt_given != opt.prompt_file_given,
              "give the prompt with exactly one of --prompt TEXT and --prompt-file FILE");
  if (opt.prompt_given) return opt.prompt;
  SCMOE_CHECK(!fs::is_directory(opt.prompt_file), "--prompt-file '" << opt.prompt_file << "' is a directory");
  std::ifstream in(opt.prompt_file, std::ios::binary);
  SCMOE_CHECK_IO(in, opt.prompt_file, "cannot read --prompt-file");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A non-finite logit means the weights (or an overflow in the model) went bad: an error, never a
// sampled token printed as if nothing had happened.
template <class T>
void check_logits(const T* logits, int V, int64_t position) {
  for (int i = 0; i < V; i++)
    SCMOE_CHECK(std::isfinite(logits[i]), "generate: the logit of token "
                                              << i << " at position " << position << " is "
                                              << double(logits[i])
                                              << ": the model's output is not finite (damaged weights, or "
                                                 "activations overflowing the precision); nothing sampled");
}

// Prompt in, continuation out: the decode loop and the figures (logits on the host: T on the CPU, fp32
// from the CUDA backend).
template <class Gen>
int decode(const Config& cfg, const GenerateOptions& opt, Gen& gen, const std::vector<int32_t>& prompt,
           const Tokenizer& tok, const char* device) {
  const double t_prefill = now_ms();
  decltype(gen.step(0)) logits = nullptr;
  for (int32_t id : prompt) logits = gen.step(id);
  const double prefill_ms = now_ms() - t_prefill;

  Rng rng(opt.seed);
  std::vector<double> latency_ms;  // per new token: sampling it, printing it and computing its position
  const double t_decode = now_ms();
  for (int i = 0; i < opt.max_new_tokens; i++) {
    const double t0 = now_ms();
    check_logits(logits, cfg.model.vocab_size, int64_t(prompt.size()) + i - 1);
    const int32_t next = sample_token(logits, cfg.model.vocab_size, opt.sampling, rng);
    const std::string bytes = tok.decode(next);
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
    if (i + 1 == opt.max_new_tokens) break;  // the last token's position is never needed
    logits = gen.step(next);
    latency_ms.push_back(now_ms() - t0);
  }
  const double decode_s = (now_ms() - t_decode) / 1000;
  gen.finish();  // transfers still in flight (a last prefetch) are counted in the figures
  const double tok_s = decode_s > 0 ? opt.max_new_tokens / decode_s : 0;
  const double med = percentile(latency_ms, 0.5), p90 = percentile(latency_ms, 0.9);

  std::fprintf(stderr,
               "\nprompt %zu tokens (prefill %.1f ms); %d new tokens in %.3f s: %.1f tokens/s; per-token "
               "latency median %.3f ms, p90 %.3f ms%s\n",
               prompt.size(), prefill_ms, opt.max_new_tokens, decode_s, tok_s, med, p90,
               gen.slides() ? (", window slid " + std::to_string(gen.slides()) + "x").c_str() : "");
  const DeviceMemory mem = gen.device_memory();
  const size_t peak = gen.offloading() ? mem.offloaded() : mem.resident();
  const double cut = 100.0 * (1.0 - double(peak) / double(mem.resident()));
  const OffloadStats os = gen.offload_stats();
  const char* migration = cfg.inference.migration.c_str();
  if (gen.offloading()) {
    const ExpertLink& link = *gen.link();
    std::fprintf(stderr, "offload: %s migration, %d of %d experts cached per MoE layer, %s\n", migration,
                 cfg.inference.expert_cache_slots, cfg.moe.num_experts, link.describe().c_str());
    char spec[96] = "";
    if (os.spec_transfers > 0)
      std::snprintf(spec, sizeof spec, " (%lld speculative, %lld of them used)", (long long)os.spec_transfers,
                    (long long)os.spec_hits);
    std::fprintf(
        stderr,
        "device memory %.2f MiB (all experts resident: %.2f MiB; cut %.1f%%); migrated %.2f MiB in "
        "%lld transfers%s; hit rate %.1f%%; exposed transfer %.2f ms (%.3f ms/position), link busy %.2f ms\n",
        mib(peak), mib(mem.resident()), cut, mib(os.bytes), (long long)os.transfers, spec,
        100 * os.hit_rate(), os.exposed_ms, os.exposed_ms / double(std::max<int64_t>(1, gen.positions())),
        link.busy_ms());
    std::string per;
    for (const auto& [l, s] : gen.layer_stats()) {
      char buf[128];
      std::snprintf(buf, sizeof buf, "%sblock %d: %lld requests, hit %.1f%%, %.2f MiB, exposed %.2f ms",
                    per.empty() ? "" : "; ", l, (long long)s.requests, 100 * s.hit_rate(), mib(s.bytes),
                    s.exposed_ms);
      per += buf;
    }
    std::fprintf(stderr, "per layer: %s\n", per.c_str());
  } else {
    std::fprintf(stderr, "device memory %.2f MiB (all experts resident)\n", mib(peak));
  }
  // One machine-readable line for scripts (bench/offload.sh).
  std::fprintf(
      stderr,
      "generate_stats {\"device\": \"%s\", \"arch\": \"%s\", \"offload\": %s, \"migration\": \"%s\", \"cache_slots\": %d, "
      "\"num_experts\": %d, \"host_link_gb_s\": %g, \"prompt_tokens\": %zu, \"new_tokens\": %d, "
      "\"positions\": %lld, "
      "\"prefill_ms\": %.3f, \"tokens_per_s\": %.2f, \"latency_ms_median\": %.4f, \"latency_ms_p90\": %.4f, "
      "\"peak_device_bytes\": %zu, \"resident_device_bytes\": %zu, \"memory_cut\": %.4f, "
      "\"bytes_migrated\": %lld, \"transfers\": %lld, \"spec_transfers\": %lld, \"spec_hits\": %lld, "
      "\"requests\": %lld, \"hit_rate\": %.4f, \"exposed_transfer_ms\": %.3f, \"link_busy_ms\": %.3f, "
      "\"threads\": %d}\n",
      device, cfg.model.arch.c_str(), gen.offloading() ? "true" : "false", migration,
      cfg.inference.expert_cache_slots, cfg.moe.num_experts, gen.link() ? gen.link()->gb_s() : 0.0, prompt.size(),
      opt.max_new_tokens, (long long)gen.positions(), prefill_ms, tok_s, med, p90, peak, mem.resident(),
      cut / 100, (long long)os.bytes, (long long)os.transfers, (long long)os.spec_transfers,
      (long long)os.spec_hits, (long long)os.requests, os.hit_rate(), os.exposed_ms,
      gen.link() ? gen.link()->busy_ms() : 0.0, omp_get_max_threads());
  return 0;
}


template <class B>
int generate(const Config& cfg, const GenerateOptions& opt) {
  using G = typename B::G;
  if (cfg.train.threads > 0) omp_set_num_threads(cfg.train.threads);
  check_sampling(opt.sampling);
  SCMOE_CHECK(!cfg.moe.force_balanced_routing,
              "moe.force_balanced_routing is a training benchmark option (random routing): generation routes with the "
              "trained gate; set it to false");
  SCMOE_CHECK(opt.max_new_tokens >= 0, "--max-new-tokens must be >= 0, got " << opt.max_new_tokens);

  const std::string root = (fs::path(cfg.train.out_dir) / "checkpoints").string();
  const std::string dir = resolve_resume(opt.resume, root);
  SCMOE_CHECK(!dir.empty(), "generate needs a checkpoint and there is none in "
                                << root << ": train first (train --config ...) or pass --resume PATH");

  const std::string text = prompt_text(opt);
  std::string tok_notice;
  const Tokenizer tok = Tokenizer::for_config(cfg, &tok_notice);
  const std::vector<int32_t> prompt = tok.encode(text);
  SCMOE_CHECK(!prompt.empty(), "the prompt is empty: generation needs at least one token to continue");
  for (int32_t id : prompt)
    SCMOE_CHECK(id >= 0 && id < cfg.model.vocab_size,
                "prompt token " << id << " (" << tok.name() << " tokenizer) is not below model.vocab_size "
                                << cfg.model.vocab_size);
  const Architecture arch = describe_architecture(cfg);
  std::vector<G> params(arch.table.total());
  StateTensors biases;
  read_model_file<G>((fs::path(dir) / "model.safetensors").string(), arch.table, params.data(), Subset::replicated,
                     &biases);
  if (arch.has_moe()) read_all_experts<G>(dir, arch.table, params.data());
  // A model trained with expert biases routes with them, whatever this configuration says.
  Config gcfg = cfg;
  if (!biases.empty() && !cfg.moe.expert_bias.enabled) {
    gcfg.moe.expert_bias.enabled = true;
    std::fprintf(stderr, "generate: routing with the checkpoint's expert biases (moe.expert_bias)\n");
  }
  if (cfg.inference.offload_experts && !arch.has_moe())
    std::fprintf(stderr,
                 "inference.offload_experts: model.arch dense has no routed experts; nothing to offload\n");
  if (!B::kHostMemory && cfg.inference.offload_experts &&
      (cfg.inference.host_link_gb_s > 0 || cfg.inference.host_link_latency_us > 0))
    std::fprintf(stderr, "inference.host_link_gb_s / host_link_latency_us simulate the link on the cpu "
                         "backend; on cuda the experts cross the real host-to-device link\n");
  Generator<B> gen(gcfg, params.data());
  for (const auto& [name, b] : biases) gen.model().set_expert_bias(name, b);
  if (B::kHostMemory)
    std::fprintf(stderr, "generate: %s | %s, %.2f M parameters | %s | %s | OpenMP threads: %d\n", dir.c_str(),
                 cfg.model.arch.c_str(), arch.table.count() / 1e6, tok_notice.c_str(), cfg.train.dtype.c_str(),
                 omp_get_max_threads());
  else
    std::fprintf(stderr, "generate: %s | %s, %.2f M parameters | %s | cuda, precision %s%s\n", dir.c_str(),
                 cfg.model.arch.c_str(), arch.table.count() / 1e6, tok_notice.c_str(), cfg.train.precision.c_str(),
                 gen.offloading() ? ", routed experts in pinned host memory" : "");
  return decode(cfg, opt, gen, prompt, tok, B::name());
}

}  // namespace

// The backend (train/backend_select.h): the CUDA backend generates in fp32 or bf16 storage; float64 is
// the CPU's (auto falls back to it, an explicit cuda is an error).
int run_generate(const Config& cfg, const GenerateOptions& opt) {
  std::string notice;
  const BackendKind kind = select_backend(cfg, 1, 1, &notice);
  std::fprintf(stderr, "%s\n", notice.c_str());
  return with_backend(kind, [&](auto tag) { return generate<typename decltype(tag)::type>(cfg, opt); });
}

}  // namespace scmoe
