// The overlapped schedule on the CUDA backend, proved without a GPU. Under the SIMT emulation every
// stream is a thread with random delays before its work (kernels/cuda/emu/async_runtime.h), so a missing
// cudaStreamWaitEvent shows as a wrong result. One executable, several ctest entries (tests/model/emu/
// overlap.cmake):
//   1rank      overlapped (a communication stream, ordered by events; comm.overlap true) == sequential
//              (every exchange on the compute stream; comm.overlap false) bit for bit: loss, every
//              gradient, the weights after an AdamW step, the router's statistics, over 2 steps; for
//              ScMoE Pos-1/2/3 (add, cg1, cg2), with fixed-size slots admitted on the device (capacity)
//              and with the host reading the counts (dropless), top-2 MoE and the shared expert pipelined
//              in 2 chunks; and against the CPU backend within emu_gpt_cuda's tolerances. Also the
//              overlap measured from the events with a simulated link (>= 0.9 expected), the trace, and
//              scmoe.expert_slot auto choosing a slot from the events' op times.
//   2ranks     the same over 2 ranks started by train/launch (Gloo on the emulated device's memory).
//   mutation   drops the k-th cross-stream wait of a step (WaitCounter), for every k the schedule has:
//              each must change the result (caught), under up to 3 delay seeds.
//   host_sync  host-blocking runtime calls while a step is queued: none with a capacity factor (sizes
//              fixed, admission on the device), one per MoE layer's forward when dropless on one rank
//              (the counts' copy, after the backbone work that overlaps the dispatch is queued; two on
//              several ranks: the count exchange's event too), none in the backward.
//   tsan       one small overlapped step (the ThreadSanitizer build runs this one).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/rng.h"
#include "core/trace.h"
#include "model/cuda_models.h"
#include "optim/adamw.h"
#include "train/config.h"
#include "tests/kernels/emu/kernel_test.h"
#if defined(SCMOE_SIMT_EMU)
#include "kernels/cuda/emu/async_runtime.h"
#elif defined(SCMOE_HAVE_NCCL)
#include "comm/nccl_communicator.h"
#endif

using namespace scmoe;
using Gpu = cuda::Cuda<float>;

namespace {

struct Variant {
  const char* label;
  std::vector<std::string> sets;
};

Config config_of(const Variant& v, bool overlap, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> sets = {"model.n_layer=4", "model.d_model=16", "model.n_head=2", "model.d_ff=24",
                                   "model.seq_len=8", "model.vocab_size=29", "train.batch_size=2",
                                   "model.init_std=0.3", "moe.num_experts=4", "moe.aux_loss_coef=0.1",
                                   "moe.z_loss_coef=0.01", "optim.lr=1e-3", "optim.grad_clip=0.5",
                                   "comm.simulate_link.latency_us=300", "scmoe.expert_slot=2"};
  sets.insert(sets.end(), v.sets.begin(), v.sets.end());
  sets.insert(sets.end(), extra.begin(), extra.end());
  sets.push_back(overlap ? "comm.overlap=true" : "comm.overlap=false");
  return load_config("", sets);
}

// Weights with norms and biases away from 1 and 0 (so their gradients matter), the same on every rank.
std::vector<float> weights_of(const Config& cfg, Communicator* comm) {
  GPT<Cpu<float>> m(cfg, 0, comm);
  m.init(11);
  Rng r(5);
  for (const auto& s : m.table().specs())
    if (!s.decay)
      for (size_t i = 0; i < s.numel; i++) m.params()[s.offset + i] += float(0.2 * r.normal());
  return std::vector<float>(m.params(), m.params() + m.table().total());
}

// What a run produced, step by step.
struct Result {
  std::vector<double> loss;
  std::vector<std::vector<float>> grads, params;
  std::vector<std::vector<MoeStats>> stats;
  double comm_ms = 0, exposed_ms = 0;
  int waits = 0;
};

// `steps` training steps of a B-backend model on fixed tokens (this rank's slice of a global batch).
template <class B>
Result run(const Config& cfg, const std::vector<float>& w, Communicator* comm, int steps) {
  const int Bn = cfg.train.batch_size, N = Bn * cfg.model.seq_len, V = cfg.model.vocab_size;
  const int W = comm ? comm->world_size() : 1, rank = comm ? comm->rank() : 0;
  GPT<B> m(cfg, Bn, comm);
  m.set_params(w.data());
  AdamW<B> opt(cfg.optim, m);
  Rng data(21), noise(77);
  std::vector<int32_t> in(size_t(N) * W), tg(size_t(N) * W);
  Result r;
  const size_t P = m.table().total();
  for (int step = 0; step < steps; step++) {
    for (size_t i = 0; i < in.size(); i++) in[i] = int32_t(data.next_u64() % V), tg[i] = int32_t(data.next_u64() % V);
    m.zero_grad();
    m.forward_async(in.data() + size_t(rank) * N, tg.data() + size_t(rank) * N, 1.0 / (double(N) * W), &noise);
    m.backward();
    r.loss.push_back(m.loss());
    r.waits = m.waits_per_step();
    std::vector<MoeStats> st;
    for (auto& [l, s] : m.moe_stats()) st.push_back(s);
    r.stats.push_back(st);
    std::vector<float> g(P), p(P);
    m.get_grads(g.data());
    opt.step(cfg.optim.lr, comm);
    m.get_params(p.data());
    r.grads.push_back(g), r.params.push_back(p);
    for (const auto& t : m.take_comm_timings()) r.comm_ms += t.comm_ms, r.exposed_ms += t.exposed_ms;
  }
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
bool same_stats(const std::vector<MoeStats>& a, const std::vector<MoeStats>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (a[i].aux != b[i].aux || a[i].z != b[i].z || a[i].dropped != b[i].dropped ||
        a[i].tokens_per_expert != b[i].tokens_per_expert)
      return false;
  return true;
}

// Overlapped == sequential on the device, bit for bit, and both near the CPU backend. comm: the device
// buffers' communicator; host: the CPU model's (the same under the emulation).
void check_equivalence(const Variant& v, Communicator* comm, Communicator* host) {
  const int rank = comm ? comm->rank() : 0;
  const Config seq = config_of(v, false), ovl = config_of(v, true);
  const std::vector<float> w = weights_of(seq, host);
  const int steps = 2;
  const Result a = run<Gpu>(seq, w, comm, steps), b = run<Gpu>(ovl, w, comm, steps);
  const Result c = run<Cpu<float>>(seq, w, host, 1);
  bool same = true;
  for (int s = 0; s < steps; s++) {
    CHECK(a.loss[s] == b.loss[s]);
    CHECK(same_bits(a.grads[s], b.grads[s]));
    CHECK(same_bits(a.params[s], b.params[s]));
    CHECK(same_stats(a.stats[s], b.stats[s]));
    same = same && a.loss[s] == b.loss[s] && same_bits(a.grads[s], b.grads[s]) &&
           same_bits(a.params[s], b.params[s]) && same_stats(a.stats[s], b.stats[s]);
  }
  // Against the CPU backend (the first step, the same weights): emu_gpt_cuda's tolerances.
  CHECK_NEAR(b.loss[0], c.loss[0], 1e-5 * std::fabs(c.loss[0]));
  double gmax = 0, worst = 0;
  for (float x : c.grads[0]) gmax = std::max(gmax, double(std::fabs(x)));
  for (size_t i = 0; i < c.grads[0].size(); i++)
    worst = std::max(worst, std::fabs(double(b.grads[0][i]) - c.grads[0][i]));
  CHECK(worst <= 2e-3 * gmax);
  const double overlap = b.comm_ms > 0 ? 1 - b.exposed_ms / b.comm_ms : 0;
  std::printf("  rank %d %-44s overlapped == sequential: %s (%d cross-stream waits per step); vs cpu: loss %.2e, "
              "gradients %.2e of the largest; overlapped comm %.1f ms exposed %.1f (overlap %.2f), sequential "
              "exposed %.1f of %.1f ms\n",
              rank, v.label, same ? "bit for bit" : "DIFFERENT", b.waits,
              std::fabs(b.loss[0] - c.loss[0]) / std::fabs(c.loss[0]), worst / gmax, b.comm_ms, b.exposed_ms,
              overlap, a.exposed_ms, a.comm_ms);
  CHECK(b.waits > 0 && a.waits == 0);  // the sequential reference really ran on one stream
}

const std::vector<Variant> kVariants = {
    {"scmoe pos-2 cg1, capacity 2 (device admission)", {"model.arch=scmoe", "scmoe.position=2", "scmoe.combine=cg1"}},
    {"scmoe pos-1 add, dropless (host reads counts)",
     {"model.arch=scmoe", "scmoe.position=1", "scmoe.combine=add", "moe.every=2", "moe.capacity_factor=0"}},
    {"scmoe pos-3 cg2, capacity 1, gate noise (drops)",
     {"model.arch=scmoe", "scmoe.position=3", "scmoe.combine=cg2", "moe.capacity_factor=1.0", "moe.gate_noise=true"}},
    {"moe top-2, pipelined in 2 chunks", {"model.arch=moe", "moe.top_k=2", "moe.pipeline_degree=2"}},
    {"shared_expert, pipelined in 2 chunks", {"model.arch=shared_expert", "moe.pipeline_degree=2"}},
};

// The overlap the events measure with a link the windows can hide, and the trace's two tracks.
void check_measured_overlap() {
#if defined(SCMOE_SIMT_EMU)
  simt::rt::set_delays(1, 0, 0);  // the random delays are there to break orderings, not to be timed
#endif
  const Variant v{"scmoe pos-2 cg1", {"model.arch=scmoe", "model.n_layer=2"}};
  const Config cfg = config_of(v, true);
  const std::vector<float> w = weights_of(cfg, nullptr);
  GPT<Gpu> m(cfg, cfg.train.batch_size);
  m.set_params(w.data());
  const int N = cfg.train.batch_size * cfg.model.seq_len;
  std::vector<int32_t> in(N, 3), tg(N, 4);
  double comm = 0, exposed = 0;
  for (int step = 0; step < 4; step++) {
    const bool traced = step == 3;
    if (traced) Tracer::get().start();
    m.zero_grad();
    m.forward_async(in.data(), tg.data(), 1.0 / N);
    m.backward();
    m.synchronize();
    const auto t = m.take_comm_timings();
    if (step > 0) comm += t[0].comm_ms, exposed += t[0].exposed_ms;
    if (traced) Tracer::get().write("overlap_trace.json", 0);
  }
#if defined(SCMOE_SIMT_EMU)
  simt::rt::set_delays(1, 200, 30);
#endif
  const double overlap = 1 - exposed / comm;
  std::printf("measured on the emulated device, %s, 300 us simulated link: comm %.2f ms, exposed %.2f ms, overlap "
              "%.3f over 3 steps\n",
              v.label, comm, exposed, overlap);
  CHECK(comm > 3 * 4 * 0.3);  // four exchanges a step, each at least the link's latency
  CHECK(overlap >= 0.9);
  // The trace: the backbone's actions on the compute track, the exchanges on the communication track.
  std::FILE* f = std::fopen("overlap_trace.json", "r");
  CHECK(f != nullptr);
  if (!f) return;
  std::string text;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  std::fclose(f);
  CHECK(text.find("\"name\":\"dispatch L1\",\"ph\":\"X\",\"pid\":0,\"tid\":1") != std::string::npos);
  CHECK(text.find("\"name\":\"combine grad L1\",\"ph\":\"X\",\"pid\":0,\"tid\":1") != std::string::npos);
  CHECK(text.find("\"name\":\"attn1\",\"ph\":\"X\",\"pid\":0,\"tid\":0") != std::string::npos);
}

// scmoe.expert_slot auto on the device: after kAutoSlotSteps steps the slot comes from the op times the
// compute stream's events measured (the paper's Eq. 11), and training goes on with the new plan.
void check_auto_slot() {
  const Variant v{"scmoe pos-2 cg1, expert slot auto", {"model.arch=scmoe", "model.n_layer=2"}};
  const Config cfg = config_of(v, true, {"scmoe.expert_slot=auto"});
  const std::vector<float> w = weights_of(cfg, nullptr);
  GPT<Gpu> m(cfg, cfg.train.batch_size);
  m.set_params(w.data());
  const int N = cfg.train.batch_size * cfg.model.seq_len;
  std::vector<int32_t> in(N, 3), tg(N, 4);
  const std::string before = describe(m.forward_schedule());
  std::string line;
  for (int step = 1; step <= GPT<Gpu>::kAutoSlotSteps + 1; step++) {
    m.zero_grad();
    m.forward_async(in.data(), tg.data(), 1.0 / N);
    m.backward();
    CHECK(std::isfinite(m.loss()));
    const std::string l = m.tune_slots(step);
    CHECK(l.empty() == (step != GPT<Gpu>::kAutoSlotSteps));
    if (!l.empty()) line = l;
  }
  std::printf("%s: %s\n  plan before: %s\n  plan after:  %s\n", v.label, line.c_str(), before.c_str(),
              describe(m.forward_schedule()).c_str());
  CHECK(line.find("block 1: expert slot ") != std::string::npos);
  CHECK(m.branches()[0].slot >= 1 && m.branches()[0].slot <= 4);
}

// Drops each cross-stream wait in turn: the result must change. A wait orders one stream after the
// other, so its absence shows only when the stream it guards runs ahead: each dropped wait is tried
// with a slow communication stream (a 150 ms simulated link: the compute stream would read rows that
// have not arrived) and then with a slow compute stream (long random delays before every
// piece of work, a 1 us link: the communication stream would send rows not yet written), under three seeds;
// last, a 1 s link, longer than any window of the emulated backbone.
// One MoE block per model: the waits are the dispatcher's, the same code for every block.
void check_mutations() {
  int caught = 0, total = 0;
  const std::vector<Variant> variants = {
      {"scmoe pos-2 cg1, capacity 2 (device admission)", {"model.arch=scmoe", "model.n_layer=2"}},
      {"scmoe pos-1 add, dropless (host reads counts)",
       {"model.arch=scmoe", "model.n_layer=2", "scmoe.position=1", "scmoe.combine=add", "moe.capacity_factor=0"}},
      {"moe top-2, pipelined in 2 chunks",
       {"model.arch=moe", "model.n_layer=2", "moe.top_k=2", "moe.pipeline_degree=2"}}};
  struct Try {
    const char* what;
    std::vector<std::string> sets;
    int delay_us, percent;
  };
  const std::vector<Try> tries = {{"slow link", {"comm.simulate_link.latency_us=150000"}, 200, 30},
                                  {"slow compute", {"comm.simulate_link.latency_us=1"}, 3000, 60},
                                  {"slow compute", {"comm.simulate_link.latency_us=1"}, 3000, 60},
                                  {"slow compute", {"comm.simulate_link.latency_us=1"}, 3000, 60},
                                  {"very slow link", {"comm.simulate_link.latency_us=1000000"}, 200, 30}};
  for (const Variant& v : variants) {
    const Config seq = config_of(v, false);
    const std::vector<float> w = weights_of(seq, nullptr);
    const Result ref = run<Gpu>(seq, w, nullptr, 1);
    const Result intact = run<Gpu>(config_of(v, true), w, nullptr, 1);
    CHECK(same_bits(intact.grads[0], ref.grads[0]));
    std::printf("%s: %d cross-stream waits per step\n", v.label, intact.waits);
    for (int k = 0; k < intact.waits; k++) {
      std::string how = "NOT CAUGHT";
      for (size_t t = 0; t < tries.size() && how == "NOT CAUGHT"; t++) {
#if defined(SCMOE_SIMT_EMU)
        simt::rt::set_delays(1000 + 7 * k + t, tries[t].delay_us, tries[t].percent);
#endif
        WaitCounter::set_drop_wait(k);
        const Result r = run<Gpu>(config_of(v, true, tries[t].sets), w, nullptr, 1);
        WaitCounter::set_drop_wait(-1);
        if (!same_bits(r.grads[0], ref.grads[0]) || r.loss[0] != ref.loss[0]) how = std::string("caught (") + tries[t].what + ")";
      }
      std::printf("  without wait %d: %s\n", k, how.c_str());
      caught += how != "NOT CAUGHT", total++;
      CHECK(how != "NOT CAUGHT");
    }
  }
#if defined(SCMOE_SIMT_EMU)
  simt::rt::set_delays(1, 200, 30);
#endif
  std::printf("mutation test: %d of %d dropped waits caught\n", caught, total);
}

// Host-blocking calls while a step is being queued (between the forward's start and the backward's end).
void check_host_sync() {
  for (bool capacity : {true, false}) {
    const Variant v{capacity ? "scmoe pos-2, capacity 2" : "scmoe pos-2, dropless",
                    {"model.arch=scmoe", capacity ? "moe.capacity_factor=2" : "moe.capacity_factor=0"}};
    const Config cfg = config_of(v, true);
    const std::vector<float> w = weights_of(cfg, nullptr);
    GPT<Gpu> m(cfg, cfg.train.batch_size);
    m.set_params(w.data());
    const int N = cfg.train.batch_size * cfg.model.seq_len, layers = int(m.branches().size());
    std::vector<int32_t> in(N, 3), tg(N, 4);
    for (int step = 0; step < 2; step++) {
      m.zero_grad();
      m.synchronize();
      const int64_t c0 = cuda::host_blocking_calls();
      m.forward_async(in.data(), tg.data(), 1.0 / N);
      const int64_t c1 = cuda::host_blocking_calls();
      m.backward();
      const int64_t c2 = cuda::host_blocking_calls();
      m.loss();
      const int64_t c3 = cuda::host_blocking_calls();
      std::printf("%s, step %d: host-blocking calls: forward %lld, backward %lld (%d MoE layers); reading the loss "
                  "%lld\n",
                  v.label, step, (long long)(c1 - c0), (long long)(c2 - c1), layers, (long long)(c3 - c2));
      CHECK(c1 - c0 == (capacity ? 0 : layers));  // one rank: the counts' copy (no count exchange to wait for)
      CHECK(c2 - c1 == 0);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  kt::require_device();
  const std::string mode = argc > 1 ? argv[1] : "1rank";
  std::printf("overlapped schedule on the CUDA backend: %s [%s]\n", mode.c_str(), kt::mode());
  if (mode == "1rank") {
    for (const Variant& v : kVariants) check_equivalence(v, nullptr, nullptr);
    check_measured_overlap();
    check_auto_slot();
  } else if (mode == "2ranks") {
    const ProcessGroupEnv env = read_process_group_env();
    if (env.world_size < 2) {
      std::printf("SKIPPED: run it through train/launch --nproc-per-node 2\n");
      return 77;
    }
    auto host = make_gloo_communicator(env, 120);
#if defined(SCMOE_SIMT_EMU)
    Communicator* dev = host.get();  // the emulated device's buffers are host memory
#elif defined(SCMOE_HAVE_NCCL)
    int devices = 0;
    cudaGetDeviceCount(&devices);
    if (devices < env.local_world_size) {
      std::printf("SKIPPED: %d ranks on this node need as many GPUs, %d found\n", env.local_world_size, devices);
      return 77;
    }
    auto nccl = make_nccl_communicator(env, 120, nullptr, host.get());
    Communicator* dev = nccl.get();
#else
    std::printf("SKIPPED: built without NCCL\n");
    return 77;
#endif
    for (const Variant& v : {kVariants[0], kVariants[1], kVariants[3]}) check_equivalence(v, dev, host.get());
  } else if (mode == "mutation") {
    check_mutations();
  } else if (mode == "host_sync") {
    check_host_sync();
  } else if (mode == "tsan") {
    check_equivalence({"scmoe pos-2 cg1, 2 blocks", {"model.arch=scmoe", "model.n_layer=2"}}, nullptr, nullptr);
  } else {
    std::fprintf(stderr, "usage: %s 1rank|2ranks|mutation|host_sync|tsan\n", argv[0]);
    return 2;
  }
  TEST_MAIN_END();
}
