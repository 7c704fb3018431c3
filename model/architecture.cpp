// Lays out a configuration's model (see architecture.h). Tensors are registered in a fixed order
// (embeddings, then per block: norms and attention, its feed-forward variant, then the final norm),
// which fixes every offset of the parameter buffer.
#include "model/architecture.h"

#include <cmath>

#include "core/check.h"

namespace scmoe {

namespace {

TensorRef add(ParamTable& pt, const std::string& name, std::vector<int64_t> shape, bool decay, Init init,
              double std = 0.02) {
  TensorRef t;
  t.index = int(pt.specs().size());
  t.offset = pt.add(name, shape, decay, init, std);
  t.numel = pt.specs().back().numel;
  return t;
}

LinearParams add_linear(ParamTable& pt, const std::string& name, int in, int out, bool bias, double std) {
  LinearParams p;
  p.in = in, p.out = out;
  p.w = add(pt, name + ".weight", {out, in}, true, Init::normal, std);
  if (bias) p.b = add(pt, name + ".bias", {out}, false, Init::zeros);
  return p;
}

NormParams add_norm(ParamTable& pt, const std::string& name, int C, bool rms) {
  NormParams p;
  p.C = C, p.rms = rms;
  p.w = add(pt, name + ".weight", {C}, false, Init::ones);
  if (!rms) p.b = add(pt, name + ".bias", {C}, false, Init::zeros);
  return p;
}

MlpParams add_mlp(ParamTable& pt, const std::string& name, int C, int F, double std, double proj_std) {
  return {add_linear(pt, name + ".fc", C, F, true, std), add_linear(pt, name + ".proj", F, C, true, proj_std)};
}

}  // namespace

Architecture describe_architecture(const Config& cfg, int rank, int world) {
  const ModelConfig& mc = cfg.model;
  const MoeConfig& mo = cfg.moe;
  const std::string& arch = mc.arch;
  SCMOE_CHECK(arch == "dense" || arch == "moe" || arch == "shared_expert" || arch == "scmoe",
              "model.arch: expected dense|moe|shared_expert|scmoe, got '" << arch << "'");
  SCMOE_CHECK(mc.d_model % mc.n_head == 0, "model.d_model (" << mc.d_model << ") must be divisible by model.n_head ("
                                                              << mc.n_head << ")");
  SCMOE_CHECK(world >= 1 && rank >= 0 && rank < world, "rank " << rank << " of " << world << " does not exist");
  Architecture a;
  a.n_layer = mc.n_layer, a.C = mc.d_model, a.V = mc.vocab_size, a.Tn = mc.seq_len, a.heads = mc.n_head;
  a.d_ff = mc.d_ff, a.rms = mc.norm == "rmsnorm", a.W = world;
  const int pos = cfg.scmoe.position;
  const bool sc = arch == "scmoe";
  if (arch != "dense") {
    a.E = mo.num_experts;
    a.k = mo.top_k > 0 ? mo.top_k : arch == "moe" ? 2 : 1;
    a.Fe = mo.d_expert > 0 ? mo.d_expert : mc.d_ff;
    SCMOE_CHECK(a.k <= a.E, "moe.top_k (" << a.k << ") must be <= moe.num_experts (" << a.E << ")");
    SCMOE_CHECK(mo.every >= 1 && mo.every <= mc.n_layer,
                "moe.every (" << mo.every << ") must be in [1, model.n_layer=" << mc.n_layer << "]");
    SCMOE_CHECK(!sc || pos == 1 || mo.every >= 2,
                "scmoe.position " << pos << " taps the preceding block, so moe.every must be >= 2 (got " << mo.every
                                  << "); use scmoe.position=1 for MoE in every block");
    SCMOE_CHECK(a.E % world == 0, "moe.num_experts (" << a.E << ") must be divisible by the world size (" << world
                                                      << ") for expert parallelism");
    a.El = a.E / world, a.first_expert = rank * a.El;
  }
  const Combine comb = !sc                          ? Combine::add
                       : cfg.scmoe.combine == "cg1" ? Combine::cg1
                       : cfg.scmoe.combine == "cg2" ? Combine::cg2
                                                    : Combine::add;
  const double std = mc.init_std, proj_std = mc.init_std / std::sqrt(2.0 * mc.n_layer);
  const int C = a.C;
  ParamTable& pt = a.table;
  a.wte = add(pt, "wte", {a.V, C}, true, Init::normal, std);
  a.wpe = add(pt, "wpe", {a.Tn, C}, true, Init::normal, std);
  a.blocks.resize(mc.n_layer);
  for (int l = 0; l < mc.n_layer; l++) {
    BlockArch& b = a.blocks[l];
    const std::string name = "blocks." + std::to_string(l);
    b.ln1 = add_norm(pt, name + ".ln1", C, a.rms);
    b.attn.qkv = add_linear(pt, name + ".attn.qkv", C, 3 * C, true, std);
    b.attn.proj = add_linear(pt, name + ".attn.proj", C, C, true, proj_std);
    b.attn.heads = a.heads;
    b.ln2 = add_norm(pt, name + ".ln2", C, a.rms);
    b.moe = arch != "dense" && (l + 1) % mo.every == 0;
    if (!b.moe) {  // dense block
      b.F = mc.d_ff;
      b.mlp = add_mlp(pt, name + ".mlp", C, b.F, std, proj_std);
      continue;
    }
    // The feed-forward variants of a MoE block: moe (routed experts only), shared_expert (SE + routed
    // on u), scmoe (SE + routed experts on a shortcut tap, combined by a gate).
    b.F = a.Fe;
    b.has_mlp = arch != "moe";
    b.combine = comb;
    b.tap = sc && pos != 2 ? TapKind::norm_of_input : TapKind::u;
    b.src = sc && pos != 1 ? l - 1 : l;
    if (b.has_mlp) b.mlp = add_mlp(pt, name + ".shared_expert", C, b.F, std, proj_std);
    if (comb != Combine::add)
      b.combine_gate = add_linear(pt, name + ".combine", C, comb == Combine::cg1 ? 1 : 2, false, std);
    if (b.tap == TapKind::norm_of_input) b.moe_norm = add_norm(pt, name + ".moe.norm", C, a.rms);
    b.gate = add_linear(pt, name + ".moe.gate", C, a.E, false, std);
    if (mo.gate_noise) b.noise = add_linear(pt, name + ".moe.noise", C, a.E, false, std);
    ExpertParams& ex = b.experts;
    ex.count = a.El, ex.first_expert = a.first_expert;
    for (int le = 0; le < a.El; le++) {
      const MlpParams m =
          add_mlp(pt, name + ".moe.experts." + std::to_string(a.first_expert + le), C, a.Fe, std, proj_std);
      if (le == 0) ex.first = m;
      const size_t end = m.proj.b.offset + (m.proj.b.numel + 15) / 16 * 16;  // ParamTable's alignment
      if (le == 0) ex.span = end - m.fc.w.offset;
      if (le == 1) ex.stride = m.fc.w.offset - ex.first.fc.w.offset;
      SCMOE_CHECK(m.fc.w.offset == ex.first.fc.w.offset + le * ex.stride &&
                      m.proj.b.offset - m.fc.w.offset == ex.first.proj.b.offset - ex.first.fc.w.offset,
                  "the experts of block " << l << " are not laid out alike in the parameter table");
    }
    if (a.El == 1) ex.stride = ex.span;
  }
  a.lnf = add_norm(pt, "ln_f", C, a.rms);
  return a;
}

}  // namespace scmoe
