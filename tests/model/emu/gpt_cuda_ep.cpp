// Expert parallelism on the CUDA backend: GPT<cuda::Cuda<T>> on each of W ranks (started by
// train/launch) against GPT<Cpu<float>> on the same rank, the same model code on the two kernel sets,
// both expert parallel over the same layout (rank r holds experts [r*E/W, (r+1)*E/W)) and data parallel
// over the replicated weights; each optimizer step is optim/adamw.h's on its backend.
// Per rank and step: the local loss (1e-5 relative), the router's global statistics (aux, z; the
// admitted rows of this rank's experts exactly; drops summed over ranks exactly), every local gradient
// before the all-reduce (2e-3 of the tensor's largest), then the clipped global gradient norm and one
// AdamW step (>= 99% of weights within 1e-5). Variants: top-2 MoE with drops, ScMoE Pos-2 with gate
// noise, shared expert; fp32, and bf16 storage (rows exchanged as bytes) to its rounding: loss within 3%,
// gradient norm within 5%.
// Emulated in CI over Gloo (the emulated device's memory is host memory); natively it needs one GPU per
// rank and NCCL, else it is skipped (exit 77).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/rng.h"
#include "model/cuda_models.h"
#include "optim/adamw.h"
#include "train/config.h"
#include "tests/kernels/emu/kernel_test.h"
#if !defined(SCMOE_SIMT_EMU) && defined(SCMOE_HAVE_NCCL)
#include "comm/nccl_communicator.h"
#endif

using namespace scmoe;

namespace {

struct Case {
  const char* label;
  std::vector<std::string> sets;
};

void check(const Case& c, Communicator& host, Communicator& dev) {
  const int W = host.world_size(), rank = host.rank();
  std::vector<std::string> base = {"model.n_layer=2",   "model.d_model=32",   "model.n_head=2",
                                   "model.d_ff=40",     "model.seq_len=9",    "model.vocab_size=37",
                                   "train.batch_size=2", "optim.lr=1e-3",     "optim.grad_clip=0.5",
                                   "optim.weight_decay=0.1", "model.init_std=0.2", "moe.num_experts=4",
                                   "moe.aux_loss_coef=0.1", "moe.z_loss_coef=0.01", "comm.overlap=false"};
  base.insert(base.end(), c.sets.begin(), c.sets.end());
  Config cfg = load_config("", base);
  const int B = cfg.train.batch_size, N = B * cfg.model.seq_len, V = cfg.model.vocab_size;
  GPT<Cpu<float>> cpu(cfg, B, &host);
  cpu.init(11);
  Rng r(5);
  for (const auto& s : cpu.table().specs())  // norms and biases away from 1 and 0
    if (!s.decay)
      for (size_t i = 0; i < s.numel; i++) cpu.params()[s.offset + i] += float(0.2 * r.normal());
  const size_t P = cpu.table().total();
  cuda::Cuda<float>::attention_override() = cuda::Cuda<cuda::bf16>::attention_override() = 0;
  GPT<cuda::Cuda<float>> gpu(cfg, B, &dev);
  GPT<cuda::Cuda<cuda::bf16>> gpu16(cfg, B, &dev);  // bf16 rows travel as bytes
  gpu.set_params(cpu.params());
  gpu16.set_params(cpu.params());
  if (rank == 0) std::printf("%s: %d ranks, %zu parameters per rank [%s]\n", c.label, W, P, kt::mode());

  AdamW<Cpu<float>> opt(cfg.optim, cpu);
  AdamW<cuda::Cuda<float>> opt_gpu(cfg.optim, gpu);
  AdamW<cuda::Cuda<cuda::bf16>> opt_16(cfg.optim, gpu16);
  Rng data(21), noise_cpu(77), noise_gpu(77), noise_16(77);
  std::vector<int32_t> all_in(size_t(N) * W), all_tg(size_t(N) * W);
  for (int step = 1; step <= 2; step++) {
    for (size_t i = 0; i < all_in.size(); i++) all_in[i] = int32_t(data.next_u64() % V), all_tg[i] = int32_t(data.next_u64() % V);
    const int32_t* in = all_in.data() + size_t(rank) * N;
    const int32_t* tg = all_tg.data() + size_t(rank) * N;
    const double scale = 1.0 / double(N * W);  // the trainer's grad_scale: this rank's share of the global mean
    cpu.zero_grad(), gpu.zero_grad(), gpu16.zero_grad();
    const double l_cpu = cpu.forward(in, tg, scale, &noise_cpu);
    cpu.backward();
    gpu.forward_async(in, tg, scale, &noise_gpu);
    gpu.backward();
    const double l_gpu = gpu.loss();
    gpu16.forward_async(in, tg, scale, &noise_16);
    gpu16.backward();
    const double l_16 = gpu16.loss();
    std::printf("  rank %d step %d: loss cpu %.7f cuda %.7f cuda-bf16 %.5f\n", rank, step, l_cpu, l_gpu, l_16);
    CHECK_NEAR(l_gpu, l_cpu, (step == 1 ? 1e-5 : 1e-3) * std::fabs(l_cpu));
    CHECK_NEAR(l_16, l_cpu, 0.03 * std::fabs(l_cpu));
    if (step == 1) {
      // Router: global losses, this rank's experts' admitted rows, drops over all ranks.
      const auto want = cpu.moe_stats();
      const auto got = gpu.moe_stats();
      CHECK(got.size() == want.size());
      int64_t drops[2] = {0, 0};
      for (size_t i = 0; i < std::min(got.size(), want.size()); i++) {
        const MoeStats& w = want[i].second;
        const MoeStats& g = got[i].second;
        CHECK(g.tokens_per_expert == w.tokens_per_expert);
        CHECK_NEAR(g.aux, w.aux, 1e-5 * std::fabs(w.aux) + 1e-7);
        CHECK_NEAR(g.z, w.z, 1e-5 * std::fabs(w.z) + 1e-7);
        drops[0] += g.dropped, drops[1] += w.dropped;
      }
      host.all_reduce_sum(drops, 2, DType::i64, nullptr);
      if (rank == 0) std::printf("  dropped over ranks: cuda %lld cpu %lld\n", (long long)drops[0], (long long)drops[1]);
      CHECK(drops[0] == drops[1]);
      // Local gradients, before any reduction.
      std::vector<float> g(P);
      gpu.get_grads(g.data());
      double worst = 0;
      for (const auto& s : cpu.table().specs()) {
        float gmax = 0;
        for (size_t i = 0; i < s.numel; i++) gmax = std::max(gmax, std::fabs(cpu.grads()[s.offset + i]));
        std::vector<float> got_g(g.begin() + s.offset, g.begin() + s.offset + s.numel);
        std::vector<float> want_g(cpu.grads() + s.offset, cpu.grads() + s.offset + s.numel);
        kt::expect_close(std::string(c.label) + " rank " + std::to_string(rank) + " grad " + s.name, got_g, want_g,
                         0.0, 2e-3 * gmax + 1e-9);
        for (size_t i = 0; i < s.numel; i++)
          worst = std::max(worst, std::fabs(double(got_g[i]) - want_g[i]) / std::max(double(gmax), 1e-30));
      }
      std::printf("  rank %d gradients: worst difference %.3g of the tensor's largest\n", rank, worst);
    }
    // The optimizer step on each backend: replicated gradients summed over ranks, the global norm
    // (experts counted once), clipping, AdamW.
    const double norm = opt.step(cfg.optim.lr, &host);
    const double gnorm = opt_gpu.step(cfg.optim.lr, &dev);
    const double gnorm16 = opt_16.step(cfg.optim.lr, &dev);
    CHECK_NEAR(gnorm16, norm, 0.05 * norm);
    CHECK_NEAR(gnorm, norm, (step == 1 ? 1e-4 : 1e-2) * norm);
    if (step == 1) {
      std::vector<float> p(P);
      gpu.get_params(p.data());
      size_t close = 0;
      for (size_t i = 0; i < P; i++) close += std::fabs(double(p[i]) - cpu.params()[i]) <= 1e-5;
      std::printf("  rank %d: gradient norm cpu %.6f cuda %.6f; %zu of %zu weights within 1e-5 after a step\n", rank,
                  norm, double(gnorm), close, P);
      CHECK(close >= P * 99 / 100);
    }
  }
}

}  // namespace

int main() {
  kt::require_device();
  const ProcessGroupEnv env = read_process_group_env();
  if (env.world_size < 2) {
    std::printf("SKIPPED: expert parallelism needs several ranks: run it through train/launch --nproc-per-node 2\n");
    return 77;
  }
  auto host = make_gloo_communicator(env, 120);
#if defined(SCMOE_SIMT_EMU)
  Communicator& dev = *host;  // the emulated device's buffers are host memory
#elif defined(SCMOE_HAVE_NCCL)
  int devices = 0;
  cudaGetDeviceCount(&devices);
  if (devices < env.local_world_size) {
    std::printf("SKIPPED: %d ranks on this node need as many GPUs, %d found\n", env.local_world_size, devices);
    return 77;
  }
  auto nccl = make_nccl_communicator(env, 120, nullptr, host.get());
  Communicator& dev = *nccl;
#else
  std::printf("SKIPPED: built without NCCL\n");
  return 77;
#endif
  check({"moe top-2, capacity 1.0 (drops)", {"model.arch=moe", "moe.every=1", "moe.capacity_factor=1.0"}}, *host, dev);
  check({"scmoe pos-2 cg1, gate noise, dropless",
         {"model.arch=scmoe", "model.n_layer=4", "moe.every=2", "scmoe.combine=cg1", "moe.gate_noise=true",
          "moe.capacity_factor=0"}},
        *host, dev);
  check({"shared_expert, capacity 2.0", {"model.arch=shared_expert", "moe.every=1", "moe.capacity_factor=2.0"}}, *host, dev);
  TEST_MAIN_END();
}
