// The overlapped ScMoE schedule's action lists: where the expert slot puts the expert computation
// (docs/design.md section 3), the backward mirror, and the sequential fallback.
#include <cstdio>

#include "model/schedule.h"
#include "tests/testing.h"

using namespace scmoe;

static std::string fwd(int layers, BranchTap t) { return describe(forward_plan(layers, {t})); }
static std::string bwd(int layers, BranchTap t) { return describe(backward_plan(layers, {t})); }

static BranchTap pos2(int slot) {
  BranchTap t;
  t.block = 1, t.src = 0, t.norm_of_input = false, t.slot = slot, t.overlap = true;
  return t;
}

int main() {
  // Pos-2 pair (block 0 = Block-MLP, block 1 = Block-MoE): dispatch posted right after u_0 exists;
  // slot 1 before MLP_0, 2 before Attn_1, 3 before SE_1, 4 after it; decode just before the sum.
  CHECK(fwd(2, pos2(1)) == "attn0 begin1 compute1 ffn0 out0 attn1 ffn1 finish1 out1");
  CHECK(fwd(2, pos2(2)) == "attn0 begin1 ffn0 out0 compute1 attn1 ffn1 finish1 out1");
  CHECK(fwd(2, pos2(3)) == "attn0 begin1 ffn0 out0 attn1 compute1 ffn1 finish1 out1");
  CHECK(fwd(2, pos2(4)) == "attn0 begin1 ffn0 out0 attn1 ffn1 compute1 finish1 out1");
  // Backward: the combine's gradient travels during as many units as the forward combine did, and the
  // branch's gradient joins at LN2 of block 0.
  CHECK(bwd(2, pos2(2)) ==
        "bw_out1 bw_begin1 bw_ffn1 bw_join1 bw_attn1 bw_out0 bw_compute1 bw_ffn0 bw_finish1 bw_join0 bw_attn0");
  CHECK(bwd(2, pos2(4)) ==
        "bw_out1 bw_begin1 bw_compute1 bw_ffn1 bw_join1 bw_attn1 bw_out0 bw_ffn0 bw_finish1 bw_join0 bw_attn0");
  CHECK(units_between(forward_plan(2, {pos2(2)}), 1, false) == 3);
  CHECK(units_between(backward_plan(2, {pos2(2)}), 1, true) == 3);
  // Pos-1: the input is the block's own (normalised) input: overlap with Attn_1 and SE_1 only.
  BranchTap p1 = pos2(2);
  p1.norm_of_input = true, p1.src = 1;
  CHECK(fwd(2, p1) == "attn0 ffn0 out0 begin1 attn1 compute1 ffn1 finish1 out1");
  CHECK(bwd(2, p1) == "bw_out1 bw_begin1 bw_ffn1 bw_join1 bw_compute1 bw_attn1 bw_finish1 bw_norm_tap1 bw_out0 "
                      "bw_ffn0 bw_join0 bw_attn0");
  // Pos-3: the preceding block's input: four units to hide behind.
  BranchTap p3 = pos2(3);
  p3.norm_of_input = true, p3.src = 0;
  CHECK(fwd(2, p3) == "begin1 attn0 ffn0 out0 compute1 attn1 ffn1 finish1 out1");
  CHECK(units_between(forward_plan(2, {p3}), 1, false) == 4);
  // The last slot (experts after every unit), whatever the branch's own slot and overlap.
  BranchTap seq2 = pos2(1);
  seq2.overlap = false;
  CHECK(last_slot(2, p1) == 3 && last_slot(2, seq2) == 4 && last_slot(2, p3) == 5);
  p3.slot = 5;
  CHECK(fwd(2, p3) == "begin1 attn0 ffn0 out0 attn1 ffn1 compute1 finish1 out1");
  // Sequential (standard MoE, or overlap off): the three phases back to back.
  BranchTap seq = pos2(2);
  seq.overlap = false;
  CHECK(fwd(2, seq) == "attn0 ffn0 out0 attn1 begin1 compute1 finish1 ffn1 out1");
  CHECK(bwd(2, seq) == "bw_out1 bw_begin1 bw_compute1 bw_finish1 bw_ffn1 bw_join1 bw_attn1 bw_out0 bw_ffn0 "
                       "bw_join0 bw_attn0");
  // Two pairs do not interleave: each pair's exchanges finish inside the pair.
  BranchTap b3 = pos2(2);
  b3.block = 3, b3.src = 2;
  std::string two = describe(forward_plan(4, {pos2(2), b3}));
  CHECK(two.find("finish1 out1 attn2 begin3") != std::string::npos);
  std::printf("%s\n", two.c_str());
  TEST_MAIN_END();
}
