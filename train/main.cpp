// `train`: the command-line entry point. Parses flags, loads and validates the configuration, then
// trains (or evaluates a checkpoint). Every error ends here with a message and a non-zero status.
#include <boost/program_options.hpp>
#include <csignal>
#include <cstdio>
#include <iostream>

#include "comm/communicator.h"
#include "core/check.h"
#include "train/config.h"
#include "train/trainer.h"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  po::options_description desc(
      "scmoe train: train or evaluate a GPT / MoE / ScMoE model\n\n"
      "usage: train --config FILE [--set KEY=VALUE]... [--print-config] [--resume auto|PATH] [--eval-only]\n\n"
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
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 2;
}
