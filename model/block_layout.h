// How a config's blocks are built, as GPT<T> wires them (model/gpt.cpp, block.h): which blocks carry
// routed experts, their feed-forward variant and combine, and where each routed branch reads its input.
// The CUDA models (gpt_cuda.cu, infer_cuda.cu) follow the CPU model's parameter table with it.
#pragma once
#include <string>
#include <vector>

#include "core/check.h"
#include "train/config.h"

namespace scmoe {

// How a block combines its shared expert (or MLP) with the routed experts: a sum, or a ScMoE gate.
enum class CombineKind { add, cg1, cg2 };

struct BlockLayout {
  bool moe = false;       // has routed experts
  bool has_mlp = true;    // the dense MLP, or the shared expert of a MoE block
  int F = 0;              // hidden size of that MLP / shared expert
  CombineKind combine = CombineKind::add;
  bool own_norm = false;  // ScMoE Pos-1/3: the routed branch normalises block src's input itself
  int src = -1;           // the block whose u (or input) the routed branch reads
};

struct ModelLayout {
  int E = 0, k = 0, Fe = 0;  // experts, top-k, expert hidden size (0 for dense)
  std::vector<BlockLayout> blocks;
};

inline ModelLayout model_layout(const Config& cfg) {
  const ModelConfig& mc = cfg.model;
  const MoeConfig& mo = cfg.moe;
  const std::string& arch = mc.arch;
  SCMOE_CHECK(arch == "dense" || arch == "moe" || arch == "shared_expert" || arch == "scmoe",
              "model.arch: expected dense|moe|shared_expert|scmoe, got '" << arch << "'");
  ModelLayout m;
  const int pos = cfg.scmoe.position;
  if (arch != "dense") {
    m.E = mo.num_experts;
    m.k = mo.top_k > 0 ? mo.top_k : arch == "moe" ? 2 : 1;
    m.Fe = mo.d_expert > 0 ? mo.d_expert : mc.d_ff;
    SCMOE_CHECK(m.k <= m.E, "moe.top_k (" << m.k << ") must be <= moe.num_experts (" << m.E << ")");
    SCMOE_CHECK(mo.every >= 1 && mo.every <= mc.n_layer,
                "moe.every (" << mo.every << ") must be in [1, model.n_layer=" << mc.n_layer << "]");
    SCMOE_CHECK(arch != "scmoe" || pos == 1 || mo.every >= 2,
                "scmoe.position " << pos << " taps the preceding block, so moe.every must be >= 2");
  }
  const bool sc = arch == "scmoe";
  const CombineKind comb = !sc                         ? CombineKind::add
                           : cfg.scmoe.combine == "cg1" ? CombineKind::cg1
                           : cfg.scmoe.combine == "cg2" ? CombineKind::cg2
                                                        : CombineKind::add;
  m.blocks.resize(mc.n_layer);
  for (int l = 0; l < mc.n_layer; l++) {
    BlockLayout& b = m.blocks[l];
    b.moe = arch != "dense" && (l + 1) % mo.every == 0;
    b.F = b.moe ? m.Fe : mc.d_ff;
    b.has_mlp = !b.moe || arch != "moe";
    if (!b.moe) continue;
    b.combine = comb;
    b.own_norm = sc && pos != 2;
    b.src = sc && pos != 1 ? l - 1 : l;
  }
  return m;
}

}  // namespace scmoe
