// Generation on the CUDA backend: the twin of model/infer.h's Generator<T> with the parameters, the
// per-layer KV cache and the activations in device memory. Each step appends one token and computes
// one position with our kernels (cuda::attention_decode over the cache), in the order of the CPU
// generator: a routed branch's gate runs as soon as its input (the tap) exists, its experts just
// before the block's output is summed, so ScMoE's shortcut gate decides one block early. T is the
// storage type of weights and activations (float or bf16; arithmetic, norms' statistics and the
// router's probabilities in fp32). Dropless, no gate noise, batch size 1; the window slides as on the
// CPU (the newest seq_len/2 tokens are recomputed into an empty cache).
//
// With inference.offload_experts the routed experts live in pinned host memory and each MoE layer keeps
// inference.expert_cache_slots of them in device slots (model/expert_cache.h's LRU cache); a miss copies
// the expert over PCIe with cudaMemcpyAsync on a copy stream, and the compute stream waits for that
// copy's event only where the expert's matmuls start (inference.migration as on the CPU: blocking,
// async, speculative). The host reads the chosen experts after each gate (one small synchronisation per
// MoE layer, offloading or not: it picks the experts' weights; speculation adds one more) to know which
// weights to use and which slots to fill. Built twice like the kernels: natively, and under the SIMT
// emulation (tests/emu/infer_cuda.cpp) where the CPU's HostLink thread plays the copy engine.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/abi.h"
#include "kernels/cuda/device_memory.h"
#include "model/expert_cache.h"
#include "model/infer_types.h"
#include "model/params.h"
#include "train/config.h"

SCMOE_CUDA_BEGIN

template <class T>
class GeneratorCuda {
 public:
  // `table`: the CPU model's parameter table (GPT<float>::table()); `params`: its values (fp32,
  // the table's layout), copied to the device (rounded to T) and, when offloading, the routed experts
  // to pinned host memory. Nothing refers to `params` afterwards.
  GeneratorCuda(const Config& cfg, const ParamTable& table, const float* params);
  ~GeneratorCuda();
  GeneratorCuda(const GeneratorCuda&) = delete;
  GeneratorCuda& operator=(const GeneratorCuda&) = delete;

  // Appends one token and returns the logits [V] of the next one, fp32 on the host (valid until the
  // next call).
  const float* step(int32_t token);
  void reset() { window_.clear(); }  // empty context (the expert caches keep their contents)
  void finish();  // waits for the device and transfers still in flight, so that the figures count them

  const std::vector<int32_t>& context() const { return window_.tokens(); }
  int slides() const { return window_.slides(); }
  int64_t positions() const { return positions_; }
  bool offloading() const { return !caches_.empty(); }
  Migration migration() const { return migration_; }
  // Device bytes as allocated (the expert parameters counted whether resident or not).
  DeviceMemory device_memory() const { return mem_; }
  std::vector<std::pair<int, OffloadStats>> layer_stats() const { return per_layer_stats(caches_); }
  OffloadStats offload_stats() const { return sum_stats(layer_stats()); }
  const ExpertLink* link() const { return link_.get(); }
  const ExpertCache<T>* cache(int layer) const { return caches_.empty() ? nullptr : caches_.at(layer).get(); }

 private:
  struct Layer;
  void forward_position(int32_t token);
  void norm(T* y, const T* x, size_t w, size_t b);
  void route(int m);
  void speculate(int m, const T* a);
  void run_experts(int m);
  void block_out(int l, T* out);
  const T* expert_weights(int m, int e);

  int L_, C_, V_, Tn_, H_, F_, E_ = 0, k_ = 0, Fe_ = 0;
  bool rms_ = false, renormalize_ = true;
  Migration migration_ = Migration::async;
  cudaStream_t stream_ = nullptr;
  std::vector<Layer> layers_;
  struct PinnedFree {
    void operator()(T* p) const;
  };
  // Device: the parameter table's layout, routed experts left out when offloading (params_ points in).
  DeviceArray<T> params_store_;
  T* params_ = nullptr;
  size_t wte_ = 0, wpe_ = 0, lnf_w_ = 0, lnf_b_ = 0;
  size_t fc_b_ = 0, proj_w_ = 0, proj_b_ = 0, expert_span_ = 0;  // one expert's tensors, from its start
  std::unique_ptr<T, PinnedFree> host_experts_;  // pinned: every routed expert (offloading only)
  DeviceArray<char> arena_;                       // device: KV caches and activations
  T *resid_ = nullptr, *tmp_ = nullptr, *hidden_h_ = nullptr, *hidden_g_ = nullptr, *ye_ = nullptr;
  T *glogits_ = nullptr, *spec_x_ = nullptr, *lnf_out_ = nullptr, *logits_ = nullptr;
  float *stats_ = nullptr, *att_ = nullptr, *probs_ = nullptr, *pmean_ = nullptr, *losses_ = nullptr;
  float* spec_gate_ = nullptr;
  int32_t *pos_k_ = nullptr, *spec_idx_ = nullptr;
  int64_t* counts_ = nullptr;
  void* workspace_ = nullptr;
  std::vector<std::vector<int>> spec_at_;  // per block: MoE blocks predicted after its attention
  std::vector<T> host_logits_t_;
  std::vector<float> host_logits_;
  std::vector<int32_t> host_idx_;
  ContextWindow window_;
  int64_t positions_ = 0;
  DeviceMemory mem_;
  std::unique_ptr<ExpertLink> link_;  // declared before the caches: they are destroyed first
  std::vector<std::unique_ptr<ExpertCache<T>>> caches_;  // per block (null for blocks without experts)
};

SCMOE_CUDA_END
