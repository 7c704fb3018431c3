// Small types both kernel sets (kernels/cpu/backend.h, kernels/cuda/backend.h) take, so that the model
// written against a backend passes them the same way on either.
#pragma once
#include <cstddef>
#include <cstdint>

namespace scmoe {

// Element counts of the attention buffers a backend's path needs (see Attention in model/layers.h):
// `saved*` live from the forward to the backward, `scratch*` only during one call.
struct AttentionSizes {
  size_t saved = 0, saved_s = 0, scratch = 0, scratch_s = 0;
};
template <class T, class S>
struct AttentionBuffers {
  T* saved = nullptr;
  S* saved_s = nullptr;
  T* scratch = nullptr;
  S* scratch_s = nullptr;
};

// The rows of a grouped product (the experts of a MoE layer): group g takes rows [begin[g], begin[g] +
// count[g]) of its input and output. With begin null group g starts at g * rows; with count null every
// group runs all of its `rows` (a device that has not read the counts runs the padding too: its rows
// are finite and their gradients zero). begin and count are host arrays.
struct GroupRows {
  int groups = 0;
  const int64_t* begin = nullptr;
  const int64_t* count = nullptr;
  int64_t rows = 0;
  int64_t first(int g) const { return begin ? begin[g] : int64_t(g) * rows; }
  int64_t size(int g) const { return count ? count[g] : rows; }
  bool uniform() const { return !begin && !count; }
};

// How a MoE router turns gate logits [N,E] into choices and gates (both backends' router kernels):
//   scores p = softmax(logits) over the experts, or sigmoid(logits) per expert (moe.score);
//   the top-k choice ranks p + bias (moe.expert_bias; the bias never enters a gate or a gradient),
//     ties to the lower expert index;
//   gates = the chosen p, divided by their sum when renormalize and k > 1;
//   the balance losses use q = p normalised over the experts (q = p for softmax): the GShard/Switch aux
//     loss E sum_e mean_n(q[n,e]) f_e, and with seq_len > 0 DeepSeek-V3's sequence-level loss, per
//     sequence of seq_len tokens E/(k T) sum_e count_{s,e} mean_t q[t,e], averaged over sequences.
struct RouterSpec {
  int E = 0, k = 1;
  bool renormalize = true;
  bool sigmoid = false;
  const float* bias = nullptr;  // [E] in the backend's memory, or null
  int seq_len = 0;              // tokens per sequence for the sequence-level statistics; 0: off
  int64_t sequences(int N) const { return seq_len > 0 ? N / seq_len : 0; }
};

// Coefficients of the router's backward: d(objective)/d(aux), d/d(z), d/d(seq aux), already scaled for
// this rank's share of the global batch.
struct RouterGradScales {
  double aux = 0, z = 0, seq = 0;
};

// The router's statistics as ranks exchange them: {counts[E], N * pmean[E], N * z, S * seq}.
inline int64_t router_stats_size(int E) { return 2 * int64_t(E) + 2; }

// The largest shapes a model runs, so that a backend can size its scratch (workspaces) once.
struct KernelShapes {
  int B = 0, Tn = 0, C = 0, V = 0, H = 0, F = 0;  // F: the largest hidden size (MLP, expert)
  int E = 0, k = 0;                               // experts, top-k (0: dense)
};

}  // namespace scmoe
