// `train`: the command-line entry point. Parses flags, loads and validates the configuration, then
// trains (or evaluates a checkpoint), or with the `generate` subcommand continues a prompt from a
// checkpoint. Every error ends here with a message and a non-zero status.
#include <boost/program_options.hpp>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <new>

#include "comm/communicator.h"
#include "core/check.h"
#include "train/config.h"
#include "train/generate.h"
#include "train/trainer.h"

namespace po = boost::program_options;

namespace {

// `train generate ...`: argv[0] is "generate".
int generate_main(int argc, char** argv) {
  po::options_description desc(
      "scmoe train generate: continue a prompt with a trained checkpoint (KV cache; optional expert offloading)\n\n"
      "usage: train generate --config FILE --resume auto|PATH (--prompt TEXT | --prompt-file FILE)\n"
      "                      [--max-new-tokens N] [--seed S] [--temperature T] [--top-k K] [--top-p P] [--set KEY=VALUE]...\n\n"
      "The continuation goes to stdout as it is generated; figures (tokens/s, per-token latency, device memory,\n"
      "expert migration) to stderr. Offloading: --set inference.offload_experts=true, inference.expert_cache_slots,\n"
      "inference.migration (async|blocking|speculative), inference.host_link_gb_s (docs/inference.md).\n\n"
      "options");
  std::string config_path;
  std::vector<std::string> sets;
  scmoe::GenerateOptions opt;
  desc.add_options()
      ("help,h", "show this help")
      ("config,c", po::value(&config_path), "YAML configuration of the trained model (the run's config.yaml will do)")
      ("set,s", po::value(&sets)->composing(), "override one key, e.g. --set inference.offload_experts=true (repeatable)")
      ("resume,r", po::value(&opt.resume), "checkpoint: 'auto' (newest in train.out_dir) or a checkpoint directory (required)")
      ("prompt,p", po::value(&opt.prompt), "the text to continue")
      ("prompt-file", po::value(&opt.prompt_file), "read the text to continue from this file")
      ("max-new-tokens,n", po::value(&opt.max_new_tokens)->default_value(256), "tokens to generate")
      ("seed", po::value(&opt.seed)->default_value(0), "sampling seed (same seed, same tokens)")
      ("temperature,t", po::value(&opt.sampling.temperature)->default_value(1.0, "1"), "softmax temperature; 0: greedy")
      ("top-k", po::value(&opt.sampling.top_k)->default_value(0), "sample among the k most likely tokens; 0: all")
      ("top-p", po::value(&opt.sampling.top_p)->default_value(1.0, "1"), "sample among the most likely tokens holding p of the probability; 1: all");
  try {
    po::variables_map vm;
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::notify(vm);
    if (vm.count("help")) {
      std::cout << desc << "\nConfiguration keys: docs/config.md; generation and offloading: docs/inference.md.\n";
      return 0;
    }
    if (!vm.count("resume")) throw po::error("--resume auto|PATH is required: the checkpoint to generate with");
    opt.prompt_given = vm.count("prompt") > 0;
    opt.prompt_file_given = vm.count("prompt-file") > 0;
    if (!opt.prompt_given && !opt.prompt_file_given) throw po::error("give the prompt: --prompt TEXT or --prompt-file FILE");
    scmoe::Config cfg = scmoe::load_config(config_path, sets);
    return scmoe::run_generate(cfg, opt);
  } catch (const po::error& e) {
    std::fprintf(stderr, "error: %s (see train generate --help)\n", e.what());
  } catch (const std::bad_alloc&) {  // a host allocation outside the model's named arrays
    std::fprintf(stderr,
                 "error: out of host memory (std::bad_alloc outside the model's arrays, which are "
                 "checked by name); the run needs more memory than this machine has\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "generate") return generate_main(argc - 1, argv + 1);
  po::options_description desc(
      "scmoe train: train or evaluate a GPT / MoE / ScMoE model\n\n"
      "usage: train --config FILE [--set KEY=VALUE]... [--print-config] [--resume auto|PATH] [--eval-only]\n"
      "       train generate --config FILE --resume auto|PATH --prompt TEXT ...  (see train generate --help)\n\n"
      "options");
  std::string config_path, resume;
  std::vector<std::string> sets;
  desc.add_options()
      ("help,h", "show this help")
      ("config,c", po::value(&config_path), "YAML configuration file (configs/*.yaml); defaults when omitted")
      ("set,s", po::value(&sets)->composing(), "override one key, e.g. --set optim.lr=3e-4 (repeatable; last wins)")
      ("print-config", "print the resolved configuration as YAML and exit")
      ("config-reference", "print the Markdown reference of every configuration key and exit")
      ("resume,r", po::value(&resume), "resume from 'auto' (newest checkpoint in train.out_dir) or a checkpoint directory")
      ("eval-only", "evaluate the checkpoint given by --resume on train.eval_batches validation batches and exit");
  try {
    po::variables_map vm;
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::notify(vm);
    if (vm.count("help")) {
      std::cout << desc << "\nConfiguration keys: docs/config.md (or --config-reference).\n";
      return 0;
    }
    if (vm.count("config-reference")) {
      std::cout << scmoe::config_reference_markdown();
      return 0;
    }
    scmoe::Config cfg = scmoe::load_config(config_path, sets);
    if (vm.count("print-config")) {
      std::cout << scmoe::config_to_yaml(cfg);
      return 0;
    }
    if (scmoe::read_process_group_env().rank == 0)  // one copy, not one per rank
      std::printf("# resolved configuration%s%s\n%s", config_path.empty() ? "" : " from ", config_path.c_str(),
                  scmoe::config_to_yaml(cfg).c_str());
    scmoe::install_stop_signal_handlers();
    // A peer that died makes Gloo's socket writes fail; report that error instead of dying of SIGPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    scmoe::RunOptions opt;
    opt.resume = resume;
    opt.eval_only = vm.count("eval-only") > 0;
    return scmoe::run_training(cfg, opt);
  } catch (const po::error& e) {
    std::fprintf(stderr, "error: %s (see train --help)\n", e.what());
  } catch (const std::bad_alloc&) {  // a host allocation outside the model's named arrays
    std::fprintf(stderr,
                 "error: out of host memory (std::bad_alloc outside the model's arrays, which are "
                 "checked by name); the run needs more memory than this machine has\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 2;
}
