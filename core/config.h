// The run configuration's types: one struct with every key's default. Parsed and validated by
// train/config.* (a YAML file and --set overrides against one schema table, which also generates
// docs/config.md); the lower layers read it from here.
#pragma once
#include <cstdint>
#include <string>

namespace scmoe {

struct ModelConfig {
  std::string arch = "dense";  // dense | moe | shared_expert | scmoe
  int n_layer = 4;
  int d_model = 128;
  int n_head = 4;
  int d_ff = 512;      // dense MLP hidden size; also the experts' unless moe.d_expert is set
  int seq_len = 128;
  int vocab_size = 256;
  std::string norm = "layernorm";  // layernorm | rmsnorm
  double init_std = 0.02;
};

// Auxiliary-loss-free balancing (DeepSeek-V3; Megatron-Core moe_router_enable_expert_bias): a per-expert
// bias added to the routing scores for the top-k choice only, updated after every optimizer step by
// bias_e += update_rate * sign(mean_load - load_e) over the global batch's loads before capacity.
struct ExpertBiasConfig {
  bool enabled = false;
  double update_rate = 1e-3;
  bool center = true;  // re-centre the biases to mean zero after each update
};

struct MoeConfig {
  int num_experts = 8;
  int top_k = 2;               // routed experts per token (moe: 2, scmoe/shared_expert use 1 unless set)
  int every = 2;               // an MoE layer every `every` blocks (the last of each group)
  int d_expert = 0;            // hidden size of each routed expert and the shared expert; 0: model.d_ff
  double capacity_factor = 2.0;  // <= 0: dropless
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.0;
  bool gate_noise = false;
  bool renormalize = true;     // renormalise the top-k probabilities when k > 1
  int pipeline_degree = 1;     // chunks of the All-to-All + expert pipeline (Tutel-style); needs capacity_factor > 0
  bool force_balanced_routing = false;  // benchmarks only: random router logits (see config.cpp)
  std::string score = "softmax";  // softmax | sigmoid (scores normalised over the chosen k, DeepSeek-V3)
  double seq_aux_loss_coef = 0.0;  // DeepSeek-V3's sequence-level balance loss (0: off)
  ExpertBiasConfig expert_bias;
};

struct ScmoeConfig {
  int position = 2;                 // 1 | 2 | 3
  std::string combine = "cg1";      // add | cg1 | cg2
  std::string expert_slot = "auto";  // auto | 1 .. 3 (Pos-1), 4 (Pos-2), 5 (Pos-3)
};

struct OptimConfig {
  double lr = 1e-3;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;       // <= 0 disables clipping
  int warmup_steps = 100;
  std::string schedule = "cosine";  // cosine | linear | constant
  int decay_steps = 0;          // 0: train.max_steps
  double min_lr = 1e-4;
};

struct TrainConfig {
  int max_steps = 1000;
  int batch_size = 8;           // sequences per rank per micro-step
  int grad_accum = 1;           // micro-steps per optimizer step (derived when global_batch_tokens > 0)
  int64_t global_batch_tokens = 0;  // 0: batch_size * seq_len * world_size * grad_accum
  uint64_t seed = 1337;
  std::string device = "auto";  // auto | cpu | cuda
  std::string precision = "fp32";   // fp32 | bf16 (bf16: cuda only)
  std::string dtype = "float32";    // CPU compute type: float32 | float64
  std::string out_dir = "runs/quickstart";
  int log_every = 1;
  int eval_every = 100;         // 0: only at the end
  int eval_batches = 8;
  int threads = 0;              // OpenMP threads; 0: library default
  int trace_step = 0;           // write a Chrome trace of this step to out_dir/trace-rankR.json; 0: off
};

struct DataConfig {
  std::string train = "data/tinyshakespeare/train_*.bin";
  std::string val = "data/tinyshakespeare/val_*.bin";
  bool shuffle = true;          // shuffle the order of training windows each epoch (seeded)
};

struct CheckpointConfig {
  int every = 500;   // 0: only at the end and on signals
  int keep = 3;      // keep the last K checkpoints (>= 1)
};

struct SimulateLinkConfig {
  double bandwidth_gb_s = 0.0;  // 0: no simulated link
  double latency_us = 0.0;
};

struct CommConfig {
  double timeout_s = 300.0;     // rendezvous and collective timeout (a dead peer becomes an error)
  bool overlap = true;          // ScMoE: run All-to-Alls on a communication stream, overlapped
  bool measure_peer_wait = false;  // a barrier before each MoE exchange splits its time (see config.cpp)
  std::string transport = "auto";  // MoE All-to-Alls: auto | gloo | shm (see config.cpp)
  SimulateLinkConfig simulate_link;
};

// Generation (`train generate`): expert offloading and the tokenizer.
struct InferenceConfig {
  bool offload_experts = false;     // routed experts in host memory, a device cache of them per layer
  int expert_cache_slots = 2;       // experts per MoE layer the device cache holds (>= top_k)
  std::string migration = "async";  // async | blocking | speculative
  double host_link_gb_s = 0.0;      // CPU backend: simulated host-to-device bandwidth; 0: memcpy speed
  double host_link_latency_us = 0.0;
  std::string tokenizer = "auto";   // auto | byte | gpt2
};

struct Config {
  ModelConfig model;
  MoeConfig moe;
  ScmoeConfig scmoe;
  OptimConfig optim;
  TrainConfig train;
  DataConfig data;
  CheckpointConfig checkpoint;
  CommConfig comm;
  InferenceConfig inference;
};

}  // namespace scmoe
