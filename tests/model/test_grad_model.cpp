// The whole model's gradient against central finite differences in float64, for every architecture
// (dense, moe, shared_expert, ScMoE Pos-1/2/3 with each combine, ScMoE-2, with and without drops).
// The objective is cross-entropy + the coefficient-weighted aux and z losses.
#include <omp.h>

#include <cstdio>

#include "core/rng.h"
#include "model/gpt.h"
#include "train/config.h"
#include "tests/gradcheck.h"

using namespace scmoe;

static void check_arch(const char* label, std::vector<std::string> sets) {
  std::vector<std::string> base = {"model.n_layer=4", "model.d_model=8", "model.n_head=2", "model.d_ff=12",
                                   "model.seq_len=5", "model.vocab_size=11", "train.batch_size=2",
                                   "model.init_std=0.4", "moe.num_experts=4", "moe.z_loss_coef=0.01",
                                   "moe.aux_loss_coef=0.1"};
  base.insert(base.end(), sets.begin(), sets.end());
  Config cfg = load_config("", base);
  const int B = cfg.train.batch_size, Tn = cfg.model.seq_len, N = B * Tn;
  GPT<Cpu<double>> m(cfg, B);
  m.init(7);
  Rng r(3);
  for (const auto& s : m.table().specs())  // perturb norms/biases away from 1/0 so they matter
    if (!s.decay)
      for (size_t i = 0; i < s.numel; i++) m.params()[s.offset + i] += 0.2 * r.normal();
  for (auto& [name, b] : m.expert_biases()) {  // moe.expert_bias: as learnt, changing some choices
    for (float& v : b) v = float(0.2 * r.normal());
    m.set_expert_bias(name, b);
  }
  std::vector<int32_t> in(N), tg(N);
  for (int i = 0; i < N; i++) in[i] = int32_t(r.next_u64() % 11), tg[i] = int32_t(r.next_u64() % 11);
  auto objective = [&] { return m.forward(in.data(), tg.data(), 0.0) + m.aux_loss(); };
  m.zero_grad();
  m.forward(in.data(), tg.data(), 1.0 / N);
  m.backward();
  int64_t dropped = 0;
  for (auto& [l, st] : m.moe_stats()) dropped += st.dropped;
  std::printf("%s (%zu params, %lld dropped assignments)\n", label, m.num_params(), (long long)dropped);
  // Check a spread of elements of every tensor (all of the small ones).
  double worst = 0;
  std::string worst_name;
  for (const auto& s : m.table().specs()) {
    size_t stride = s.numel > 24 ? s.numel / 24 : 1;
    double scale = 1e-6;
    for (size_t i = 0; i < s.numel; i++) scale = std::max(scale, std::fabs(m.grads()[s.offset + i]));
    for (size_t i = 0; i < s.numel; i += stride) {
      double* p = m.params() + s.offset + i;
      double keep = *p, h = 1e-6;
      *p = keep + h;
      double fp = objective();
      *p = keep - h;
      double fm = objective();
      *p = keep;
      double err = std::fabs((fp - fm) / (2 * h) - m.grads()[s.offset + i]) / scale;
      if (err > worst) worst = err, worst_name = s.name;
    }
  }
  std::printf("  max rel err %.2e (%s)\n", worst, worst_name.c_str());
  CHECK(worst < 1e-5);
}

int main() {
  // Thousands of forward passes on tiny tensors: threads would only add fork/join overhead (10x under
  // the sanitizers). Thread-count independence is tested in test_moe_dispatch.
  omp_set_num_threads(1);
  check_arch("dense", {"model.arch=dense"});
  check_arch("dense rmsnorm", {"model.arch=dense", "model.norm=rmsnorm"});
  check_arch("moe top-2", {"model.arch=moe", "moe.top_k=2"});
  check_arch("moe top-1 every block, drops", {"model.arch=moe", "moe.top_k=1", "moe.every=1", "moe.capacity_factor=0.5"});
  check_arch("moe top-3 no renorm", {"model.arch=moe", "moe.top_k=3", "moe.renormalize=false"});
  check_arch("moe k=E dropless", {"model.arch=moe", "moe.top_k=4", "moe.capacity_factor=0"});
  check_arch("shared_expert", {"model.arch=shared_expert"});
  // Load balancing: the expert bias steers choices but enters no gradient; sigmoid scores; the
  // sequence-level balance loss.
  check_arch("moe top-2 sigmoid, expert bias, seq aux",
             {"model.arch=moe", "moe.top_k=2", "moe.score=sigmoid", "moe.expert_bias.enabled=true",
              "moe.seq_aux_loss_coef=0.1"});
  check_arch("scmoe pos-2 expert bias, seq aux, drops",
             {"model.arch=scmoe", "moe.expert_bias.enabled=true", "moe.seq_aux_loss_coef=0.1", "moe.capacity_factor=0.5"});
  for (const char* pos : {"1", "2", "3"})
    for (const char* comb : {"add", "cg1", "cg2"})
      check_arch((std::string("scmoe pos-") + pos + " " + comb).c_str(),
                 {"model.arch=scmoe", std::string("scmoe.position=") + pos, std::string("scmoe.combine=") + comb});
  check_arch("scmoe pos-1 every block", {"model.arch=scmoe", "scmoe.position=1", "moe.every=1"});
  check_arch("scmoe-2 (top-2 + SE), drops", {"model.arch=scmoe", "moe.top_k=2", "moe.capacity_factor=0.5"});
  check_arch("scmoe rmsnorm pos-3", {"model.arch=scmoe", "scmoe.position=3", "model.norm=rmsnorm"});
  TEST_MAIN_END();
}
