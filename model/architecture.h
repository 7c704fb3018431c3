// The one description of a configuration's model: which blocks carry routed experts, each block's
// feed-forward variant and combine, where each routed branch reads its input (its tap), and every
// parameter tensor with its place in the parameter buffer, as typed handles the layers bind to.
// It is the only code that reads model.arch: adding an architecture touches the config's enum, one
// case in describe_architecture(), one block variant (model/block.h) and the PyTorch reference.
// Both backends, the checkpoints and the generator take their tables from here; nothing builds a
// model to learn its tensors.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/params.h"

namespace scmoe {

// How a block adds its shared expert (or MLP) and its routed experts to the residual stream:
// a plain sum, or a ScMoE combine gate (cg1: sigmoid(w.v) scales the shared expert; cg2: a softmax
// over two logits weights the shared and the routed outputs).
enum class Combine { add, cg1, cg2 };

// Where a routed branch reads its input: the u (LN2 output) of block src, or the input of block src
// normalised by the branch's own norm (ScMoE Pos-1 and Pos-3).
enum class TapKind { none, u, norm_of_input };

// A tensor in the parameter buffer (and, at the same offsets, the gradient and master buffers):
// its offset, size and index in the ParamTable.
struct TensorRef {
  size_t offset = 0, numel = 0;
  int index = -1;
  bool present() const { return numel > 0; }
};
struct LinearParams {
  TensorRef w, b;  // [out, in], [out] (b absent: no bias)
  int in = 0, out = 0;
};
struct NormParams {
  TensorRef w, b;  // b absent for RMSNorm
  int C = 0;
  bool rms = false;
};
struct MlpParams {
  LinearParams fc, proj;  // C -> F -> C
};
struct AttentionParams {
  LinearParams qkv, proj;
  int heads = 0;
};
// One MoE layer's local experts, laid out alike: expert le's tensors start at first's offsets +
// le * stride (fc.weight, fc.bias, proj.weight, proj.bias one after the other), so they can be run
// as one grouped product and copied as one span (expert offloading).
struct ExpertParams {
  MlpParams first;
  size_t stride = 0;  // elements from one expert's fc.weight to the next one's
  size_t span = 0;    // elements of one expert (its four tensors with their alignment padding)
  int count = 0;      // local experts (E / W)
  int first_expert = 0;
};

struct BlockArch {
  bool moe = false;       // has routed experts
  bool has_mlp = true;    // the dense MLP, or the shared expert of a MoE block
  int F = 0;              // hidden size of that MLP / shared expert
  Combine combine = Combine::add;
  TapKind tap = TapKind::none;
  int src = -1;           // the block whose u (or input) the routed branch reads
  // tensors
  NormParams ln1, ln2;
  AttentionParams attn;
  MlpParams mlp;          // dense MLP or shared expert (when has_mlp)
  LinearParams combine_gate;  // cg1: [1, C]; cg2: [2, C]; no bias
  NormParams moe_norm;    // the branch's own norm (TapKind::norm_of_input)
  LinearParams gate, noise;  // router logits; gate noise (moe.gate_noise)
  ExpertParams experts;
};

struct Architecture {
  int n_layer = 0, C = 0, V = 0, Tn = 0, heads = 0, d_ff = 0;
  int E = 0, k = 0, Fe = 0;      // experts, top-k, expert hidden size (0 for dense)
  int W = 1, El = 0, first_expert = 0;  // ranks over which experts are spread; this rank's share
  bool rms = false;
  ParamTable table;              // this rank's tensors (its experts only)
  TensorRef wte, wpe;
  NormParams lnf;
  std::vector<BlockArch> blocks;
  bool has_moe() const { return E > 0; }
};

// Validates the model keys and lays the model out for rank `rank` of `world` (experts
// [rank*E/W, (rank+1)*E/W) are this rank's). Errors name the key and what was expected.
Architecture describe_architecture(const Config& cfg, int rank = 0, int world = 1);

}  // namespace scmoe
