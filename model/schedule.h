// The order in which the model runs its stages: the ScMoE overlapped schedule (docs/design.md section 3) as
// a list of actions, built once. Each routed branch (MoE) has three forward phases — begin (gate,
// encode, post the dispatch), compute (the expert slot), finish (receive, decode) — and three backward
// ones. Sequential plans run each branch's phases back to back; overlapped plans post the dispatch as
// soon as the branch's input exists, issue the experts at slot K among the backbone units that follow
// (Pos-2: 1 before MLP_l, 2 before Attn_l+1, 3 before SE_l+1, 4 after it) and receive the outputs only
// where they are added. Backward mirrors it: the branch's gradient exchanges run while SE_l+1,
// Attn_l+1 and MLP_l run their backward, and join the backbone's gradient at the tap.
#pragma once
#include <string>
#include <vector>

namespace scmoe {

enum class Op {
  attn, ffn, out,                               // forward backbone stages of a block
  moe_begin, moe_compute, moe_finish,           // forward phases of a block's routed branch
  bw_out, bw_ffn, bw_join, bw_attn, bw_norm_tap,  // backward backbone stages (+ a tap's norm)
  bw_moe_begin, bw_moe_compute, bw_moe_finish,  // backward phases of a routed branch
  moe_post,  // a device reads a dispatch's counts and posts its rows (only where the sizes are not fixed)
};

struct Action {
  Op op;
  int block;
  bool operator==(const Action& o) const { return op == o.op && block == o.block; }
};

// Where a routed branch (in block `block`) reads its input: the u of block `src`, or the normalised
// input of block `src`. slot: expert slot K (>= 1) when overlapped.
struct BranchTap {
  int block = 0;
  bool norm_of_input = false;
  int src = 0;
  int slot = 4;
  bool overlap = false;  // false: phases back to back (standard top-k MoE, or overlap disabled)
  // The dispatch's sizes must be read on the host before its rows can be posted (dropless on a device):
  // a moe_post action follows the first backbone unit queued after begin (or comes right before the
  // experts), so the device has work while the host waits for the counts.
  bool deferred_post = false;
};

std::vector<Action> forward_plan(int n_layer, const std::vector<BranchTap>& branches);
std::vector<Action> backward_plan(int n_layer, const std::vector<BranchTap>& branches);

// Backbone units between a branch's begin and finish in a plan, as the slot counts them.
int units_between(const std::vector<Action>& plan, int block, bool backward);

// A branch's largest expert slot when overlapped: one past its last backbone unit, the experts after all
// of them (Pos-1: 3, Pos-2: 4, Pos-3: 5).
int last_slot(int n_layer, BranchTap t);

std::string describe(const std::vector<Action>& plan);  // "attn0 ffn0 out0 begin1 ..." for logs and tests

}  // namespace scmoe
