// Whole-model test of the CUDA backend: GPT<cuda::Cuda<float|bf16>> against GPT<Cpu<float>>, the same
// model code on the two kernel sets, on the same weights and tokens: the loss, every gradient, and
// three AdamW steps with clipping (optim/adamw.h on each backend), for the dense model and each MoE
// variant (moe with and without drops, shared_expert, ScMoE positions 1-3 with each combine, ScMoE-2,
// with and without gate noise), where also the router statistics and the auxiliary losses must agree.
// With a capacity factor the device exchanges fixed-size slots and admits rows with a kernel (its
// experts run every row of their segments), while the CPU runs the packed layout: the drops, loads and
// gradients must still agree.
// Emulated in CI (every kernel of a training step runs under the SIMT emulation on its stream's thread,
// with random delays), native with a GPU.
// Tolerances: fp32 loss 1e-5 relative, gradients 2e-3 of the tensor's largest gradient (summation
// orders differ: cuBLAS/tiled GEMMs, two-stage reductions), parameters after a step 1e-5 absolute
// (lr 1e-3, so a step moves a weight by ~1e-3); bf16: loss within 3% (bf16 keeps 8 mantissa bits).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/cuda_models.h"
#include "optim/adamw.h"
#include "train/config.h"
#include "tests/kernels/emu/kernel_test.h"

using namespace scmoe;
using GpuF = cuda::Cuda<float>;
using Gpu16 = cuda::Cuda<cuda::bf16>;

namespace {

// After one AdamW step from the same state. Adam divides by sqrt(v): where a gradient is tiny, a
// difference in its last digits changes the step's size, so a few weights may differ by up to one step
// (lr). Bound all by one step's worth, and require nearly all to agree to 1e-5.
void check_params(const char* label, GPT<GpuF>& gpu, GPT<Cpu<float>>& cpu, double lr) {
  const size_t P = cpu.table().total();
  std::vector<float> p(P);
  gpu.get_params(p.data());
  size_t close = 0;
  double worst = 0;
  for (size_t i = 0; i < P; i++) {
    double d = std::fabs(double(p[i]) - cpu.params()[i]);
    close += d <= 1e-5;
    worst = std::max(worst, d);
  }
  std::printf("  %s parameters after one step: %zu of %zu within 1e-5, worst %.3g (lr %g)\n", label, close, P,
              worst, lr);
  CHECK(close >= P * 99 / 100);
  CHECK(worst <= 1.01 * lr);
}

struct Case {
  const char* label;
  std::vector<std::string> sets;
  int attention;  // the CUDA attention path: 0 GEMM + softmax, 1 flash
  bool drops = false;  // the case must drop assignments over capacity (checked on the CPU side)
};

// The router statistics of the last forward: the same routing (counts and drops exactly), the same losses.
void check_moe_stats(const Case& c, GPT<GpuF>& gpu, GPT<Cpu<float>>& cpu) {
  const auto want = cpu.moe_stats();
  const auto got = gpu.moe_stats();
  CHECK(got.size() == want.size());
  if (got.size() != want.size()) return;
  int64_t dropped = 0;
  for (size_t i = 0; i < got.size(); i++) {
    const MoeStats& w = want[i].second;
    const MoeStats& g = got[i].second;
    CHECK(got[i].first == want[i].first);
    CHECK(g.tokens_per_expert == w.tokens_per_expert);
    CHECK(g.dropped == w.dropped && g.assignments == w.assignments);
    CHECK_NEAR(g.aux, w.aux, 1e-5 * std::fabs(w.aux) + 1e-7);
    CHECK_NEAR(g.z, w.z, 1e-5 * std::fabs(w.z) + 1e-7);
    CHECK_NEAR(g.seq, w.seq, 1e-5 * std::fabs(w.seq) + 1e-7);
    CHECK(g.routed == w.routed);
    CHECK(g.bias_min == w.bias_min && g.bias_max == w.bias_max);
    dropped += w.dropped;
  }
  CHECK(!c.drops || dropped > 0);
  CHECK(c.drops || dropped == 0);
  CHECK_NEAR(gpu.aux_loss(), cpu.aux_loss(), 1e-5 * std::fabs(cpu.aux_loss()) + 1e-9);
  std::printf("  router: %zu MoE layers, %lld dropped, aux loss cpu %.7f cuda %.7f\n", got.size(), (long long)dropped,
              cpu.aux_loss(), gpu.aux_loss());
}

void check(const Case& c) {
  std::vector<std::string> base = {"model.arch=dense", "model.n_layer=2", "model.d_model=32", "model.n_head=2",
                                   "model.d_ff=40", "model.seq_len=9", "model.vocab_size=37", "train.batch_size=2",
                                   "optim.lr=1e-3", "optim.grad_clip=0.5", "optim.weight_decay=0.1",
                                   "model.init_std=0.2"};
  base.insert(base.end(), c.sets.begin(), c.sets.end());
  Config cfg = load_config("", base);
  const int B = cfg.train.batch_size, N = B * cfg.model.seq_len, V = cfg.model.vocab_size;
  GPT<Cpu<float>> cpu(cfg, B);
  cpu.init(11);
  Rng r(5);
  for (const auto& s : cpu.table().specs())  // norms and biases away from 1 and 0, so their gradients matter
    if (!s.decay)
      for (size_t i = 0; i < s.numel; i++) cpu.params()[s.offset + i] += float(0.2 * r.normal());
  const size_t P = cpu.table().total();
  std::vector<float> init(cpu.params(), cpu.params() + P);
  GpuF::attention_override() = Gpu16::attention_override() = c.attention;
  GPT<GpuF> gpu(cfg, B);
  GPT<Gpu16> gpu16(cfg, B);
  gpu.set_params(init.data());
  gpu16.set_params(init.data());
  for (auto& [name, b] : cpu.expert_biases()) {  // moe.expert_bias: as learnt, the same on every backend
    for (float& v : b) v = float(0.05 * r.normal());
    cpu.set_expert_bias(name, b), gpu.set_expert_bias(name, b), gpu16.set_expert_bias(name, b);
  }
  std::printf("%s: %zu parameters, device activations %zu KiB (fp32), %zu KiB (bf16) [%s]\n", c.label, P,
              gpu.activation_bytes() / 1024, gpu16.activation_bytes() / 1024, kt::mode());

  AdamW<Cpu<float>> opt(cfg.optim, cpu);
  AdamW<GpuF> opt_gpu(cfg.optim, gpu);
  AdamW<Gpu16> opt_16(cfg.optim, gpu16);
  std::vector<int32_t> in(N), tg(N);
  Rng noise_cpu(77), noise_gpu(77), noise_16(77);  // the trainer's RNG: gate noise draws (when enabled)
  for (int step = 1; step <= 3; step++) {
    for (int i = 0; i < N; i++) in[i] = int32_t(r.next_u64() % V), tg[i] = int32_t(r.next_u64() % V);
    const double scale = 1.0 / N;
    cpu.zero_grad(), gpu.zero_grad(), gpu16.zero_grad();
    double l_cpu = cpu.forward(in.data(), tg.data(), scale, &noise_cpu);
    cpu.backward();
    gpu.forward_async(in.data(), tg.data(), scale, &noise_gpu);
    gpu.backward();
    double l_gpu = gpu.loss();
    gpu16.forward_async(in.data(), tg.data(), scale, &noise_16);
    gpu16.backward();
    double l_16 = gpu16.loss();
    std::printf("  step %d loss cpu %.7f cuda-fp32 %.7f cuda-bf16 %.5f\n", step, l_cpu, l_gpu, l_16);
    // From step 2 on the weights differ by the optimizer's rounding (check_params): looser loss check.
    CHECK_NEAR(l_gpu, l_cpu, (step == 1 ? 1e-5 : 1e-3) * std::fabs(l_cpu));
    CHECK_NEAR(l_16, l_cpu, 0.03 * std::fabs(l_cpu));
    if (step == 1) {  // the same weights: every gradient, and the router's view
      if (gpu.arch().has_moe()) check_moe_stats(c, gpu, cpu);
      std::vector<float> g(P);
      gpu.get_grads(g.data());
      double worst = 0;  // largest |difference| / the tensor's largest gradient
      std::string worst_name;
      int idle = 0;  // tensors without gradient: experts no token was routed to (their path is skipped)
      for (const auto& s : cpu.table().specs()) {
        float gmax = 0;
        for (size_t i = 0; i < s.numel; i++) gmax = std::max(gmax, std::fabs(cpu.grads()[s.offset + i]));
        std::vector<float> got(g.begin() + s.offset, g.begin() + s.offset + s.numel);
        std::vector<float> want(cpu.grads() + s.offset, cpu.grads() + s.offset + s.numel);
        kt::expect_close(std::string(c.label) + " grad " + s.name, got, want, 0.0, 2e-3 * gmax + 1e-9);
        if (!(gmax > 0)) {
          CHECK(s.expert);
          idle++;
        }
        for (size_t i = 0; i < s.numel; i++) {
          const double r = std::fabs(double(got[i]) - want[i]) / std::max(double(gmax), 1e-30);
          if (r > worst) worst = r, worst_name = s.name;
        }
      }
      std::printf("  gradients: worst difference %.3g of the tensor's largest (%s); %d expert tensors idle\n", worst,
                  worst_name.c_str(), idle);
    }
    // Clipping and AdamW on each backend (optim/adamw.h).
    const double norm = opt.step(cfg.optim.lr, nullptr);
    const double gnorm = opt_gpu.step(cfg.optim.lr, nullptr);
    opt_16.step(cfg.optim.lr, nullptr);
    cpu.update_expert_biases(), gpu.update_expert_biases(), gpu16.update_expert_biases();
    if (step == 1)  // the same loads (the choices agree on the same weights): the same biases, bit for bit
      for (const auto& [name, b] : cpu.expert_biases()) {
        const auto gb = gpu.expert_biases();
        auto it = std::find_if(gb.begin(), gb.end(), [&](const auto& x) { return x.first == name; });
        CHECK(it != gb.end() && it->second == b);
      }
    CHECK_NEAR(gnorm, norm, (step == 1 ? 1e-4 : 1e-2) * norm);
    if (step == 1) check_params(c.label, gpu, cpu, cfg.optim.lr);
  }
}

}  // namespace

// Running out of device memory while the model is built: the error names the allocation and quotes the
// start-up estimate the model recorded before allocating its activations (the first model of the
// process, so that no earlier estimate can stand in for it). A 1 TiB arena (the logits of 4M tokens x
// 65,536 words) exceeds any device, and the emulated one, the host's memory.
void check_out_of_memory() {
  const Config cfg =
      load_config("", {"model.arch=dense", "model.n_layer=1", "model.d_model=32", "model.n_head=2",
                       "model.d_ff=40", "model.seq_len=16", "model.vocab_size=65536"});
  GpuF::attention_override() = 0;
  std::string error;
  try {
    GPT<GpuF> too_big(cfg, 262144);
  } catch (const Error& e) {
    error = e.what();
  }
  std::printf("out of memory: %s\n", error.c_str());
  for (const char* part :
       {"out of device memory allocating the activation arena", "the start-up estimate was 1.0", " TiB (",
        "): weights and gradients ", ", AdamW state ", ", activations 10"})
    CHECK(error.find(part) != std::string::npos);  // 1.0x TiB in all; activations 1,048,576 MiB and more
}

int main() {
  kt::require_device();
  check_out_of_memory();
  check({"dense layernorm, GEMM attention", {}, 0});
  check({"dense rmsnorm, flash attention", {"model.norm=rmsnorm"}, 1});
  // The MoE family: 4 experts; aux and z losses weighted up so that their gradients count.
  const std::vector<std::string> moe = {"moe.num_experts=4", "moe.aux_loss_coef=0.1", "moe.z_loss_coef=0.01"};
  auto with = [&](std::vector<std::string> v) {
    v.insert(v.begin(), moe.begin(), moe.end());
    return v;
  };
  check({"moe top-2, capacity factor 1.0 (drops)",
         with({"model.arch=moe", "model.n_layer=4", "moe.every=2", "moe.capacity_factor=1.0"}), 0, true});
  check({"moe top-2 dropless, rmsnorm",
         with({"model.arch=moe", "model.n_layer=2", "moe.every=1", "moe.capacity_factor=0", "model.norm=rmsnorm"}),
         1});
  check({"shared_expert, d_expert 24",
         with({"model.arch=shared_expert", "model.n_layer=2", "moe.every=1", "moe.d_expert=24",
               "moe.capacity_factor=0"}),
         0});
  check({"scmoe pos 1 cg1, MoE in every block",
         with({"model.arch=scmoe", "model.n_layer=2", "moe.every=1", "scmoe.position=1", "scmoe.combine=cg1",
               "moe.capacity_factor=2.0"}),
         0});
  check({"scmoe pos 2 cg1",
         with({"model.arch=scmoe", "model.n_layer=4", "moe.every=2", "scmoe.position=2", "scmoe.combine=cg1",
               "moe.capacity_factor=0"}),
         0});
  check({"scmoe pos 2 cg2, rmsnorm",
         with({"model.arch=scmoe", "model.n_layer=4", "moe.every=2", "scmoe.position=2", "scmoe.combine=cg2",
               "moe.capacity_factor=0", "model.norm=rmsnorm"}),
         1});
  check({"scmoe pos 3 add",
         with({"model.arch=scmoe", "model.n_layer=4", "moe.every=2", "scmoe.position=3", "scmoe.combine=add",
               "moe.capacity_factor=0"}),
         0});
  check({"scmoe pos 3 cg1, rmsnorm",
         with({"model.arch=scmoe", "model.n_layer=2", "moe.every=2", "scmoe.position=3", "scmoe.combine=cg1",
               "moe.capacity_factor=0", "model.norm=rmsnorm"}),
         0});
  // Noisy gating: the device draws the CPU's eps from the same RNG; the noise linear's gradient is checked
  // with the others.
  check({"moe top-2 with gate noise, capacity 1.5",
         with({"model.arch=moe", "model.n_layer=2", "moe.every=1", "moe.gate_noise=true", "moe.capacity_factor=1.5"}),
         0, true});
  check({"scmoe pos 2 cg2 with gate noise",
         with({"model.arch=scmoe", "model.n_layer=4", "moe.every=2", "scmoe.position=2", "scmoe.combine=cg2",
               "moe.gate_noise=true", "moe.capacity_factor=0"}),
         0});
  check({"ScMoE-2 (top-2 + shared expert), pos 2 cg1, no renormalisation",
         with({"model.arch=scmoe", "model.n_layer=4", "moe.every=2", "moe.top_k=2", "moe.renormalize=false",
               "scmoe.position=2", "scmoe.combine=cg1", "moe.capacity_factor=0"}),
         0});
  // Load balancing: sigmoid scores, the expert bias (steering choices, updated after each step) and the
  // sequence-level loss, with drops on the device's fixed slots and in dropless exchanges.
  check({"moe top-2 sigmoid, expert bias, seq aux, capacity 1.0 (drops)",
         with({"model.arch=moe", "model.n_layer=4", "moe.every=2", "moe.capacity_factor=1.0", "moe.score=sigmoid",
               "moe.expert_bias.enabled=true", "moe.seq_aux_loss_coef=0.1"}),
         0, true});
  check({"scmoe pos 2 cg1, expert bias, seq aux",
         with({"model.arch=scmoe", "model.n_layer=4", "moe.every=2", "scmoe.position=2", "scmoe.combine=cg1",
               "moe.capacity_factor=0", "moe.expert_bias.enabled=true", "moe.seq_aux_loss_coef=0.1"}),
         0});
  // Checkpoint state round trip through the device buffers.
  {
    Config cfg = load_config("", {"model.n_layer=1", "model.d_model=16", "model.n_head=2", "model.seq_len=4",
                                  "model.vocab_size=11", "train.batch_size=1"});
    GPT<Cpu<float>> cpu(cfg, 1);
    cpu.init(3);
    const size_t P = cpu.table().total();
    GPT<GpuF> gpu(cfg, 1);
    AdamW<GpuF> opt(cfg.optim, gpu);
    std::vector<float> m(P), v(P), m2(P), v2(P), p2(P);
    for (size_t i = 0; i < P; i++) m[i] = float(i) * 0.5f, v[i] = float(i) + 1;
    gpu.set_params(cpu.params());
    opt.set_moments(m.data(), v.data());
    opt.get_moments(m2.data(), v2.data());
    gpu.get_params(p2.data());
    CHECK(m2 == m && v2 == v);
    CHECK(std::equal(p2.begin(), p2.end(), cpu.params()));
  }
  TEST_MAIN_END();
}
