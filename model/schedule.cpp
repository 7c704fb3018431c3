// Builds the forward and backward action lists (see schedule.h).
#include "model/schedule.h"

#include <algorithm>

#include "core/check.h"

namespace scmoe {

namespace {

size_t index_of(const std::vector<Action>& p, Action a) {
  auto it = std::find(p.begin(), p.end(), a);
  SCMOE_CHECK(it != p.end(), "schedule: action missing");
  return size_t(it - p.begin());
}

// A unit is one backbone stage the slot counts: attn or ffn forward (out rides with ffn), ffn or attn
// backward (join rides with ffn).
bool unit_start(const Action& a, bool backward) {
  return backward ? (a.op == Op::bw_ffn || a.op == Op::bw_attn) : (a.op == Op::attn || a.op == Op::ffn);
}

// Index (in p) of the n-th unit start after `from`, or `to` if there are fewer.
size_t nth_unit(const std::vector<Action>& p, size_t from, size_t to, int n, bool backward) {
  for (size_t i = from + 1; i < to; i++)
    if (unit_start(p[i], backward) && --n < 0) return i;
  return to;
}

}  // namespace

int units_between(const std::vector<Action>& plan, int block, bool backward) {
  size_t b = index_of(plan, {backward ? Op::bw_moe_begin : Op::moe_begin, block});
  size_t f = index_of(plan, {backward ? Op::bw_moe_finish : Op::moe_finish, block});
  int n = 0;
  for (size_t i = b + 1; i < f; i++) n += unit_start(plan[i], backward);
  return n;
}

int last_slot(int n_layer, BranchTap t) {
  t.overlap = true;
  return units_between(forward_plan(n_layer, {t}), t.block, false) + 1;
}

std::vector<Action> forward_plan(int n_layer, const std::vector<BranchTap>& branches) {
  std::vector<Action> p;
  for (int j = 0; j < n_layer; j++) p.insert(p.end(), {{Op::attn, j}, {Op::ffn, j}, {Op::out, j}});
  for (const BranchTap& t : branches) {
    const int m = t.block;
    if (!t.overlap) {
      size_t at = index_of(p, {Op::attn, m}) + 1;
      p.insert(p.begin() + at, {{Op::moe_begin, m}, {Op::moe_compute, m}, {Op::moe_finish, m}});
      if (t.deferred_post) p.insert(p.begin() + at + 1, {Op::moe_post, m});
      continue;
    }
    // Begin as soon as the input exists: after the source's attention (u), or before it (its input).
    size_t begin = index_of(p, {Op::attn, t.src}) + (t.norm_of_input ? 0 : 1);
    p.insert(p.begin() + begin, {Op::moe_begin, m});
    size_t finish = index_of(p, {Op::out, m});
    p.insert(p.begin() + finish, {Op::moe_finish, m});
    size_t compute = nth_unit(p, begin, finish, t.slot - 1, false);
    p.insert(p.begin() + compute, {Op::moe_compute, m});
    if (t.deferred_post) {
      size_t post = nth_unit(p, begin, compute, 0, false);  // the first unit after begin, if before compute
      p.insert(p.begin() + (post < compute ? post + 1 : compute), {Op::moe_post, m});
    }
  }
  return p;
}

std::vector<Action> backward_plan(int n_layer, const std::vector<BranchTap>& branches) {
  std::vector<Action> p;
  for (int j = n_layer - 1; j >= 0; j--) {
    p.insert(p.end(), {{Op::bw_out, j}, {Op::bw_ffn, j}, {Op::bw_join, j}, {Op::bw_attn, j}});
    for (const BranchTap& t : branches)
      if (t.norm_of_input && t.src == j) p.push_back({Op::bw_norm_tap, t.block});
  }
  for (const BranchTap& t : branches) {
    const int m = t.block;
    size_t begin = index_of(p, {Op::bw_out, m}) + 1;
    if (!t.overlap) {
      p.insert(p.begin() + begin, {{Op::bw_moe_begin, m}, {Op::bw_moe_compute, m}, {Op::bw_moe_finish, m}});
      continue;
    }
    p.insert(p.begin() + begin, {Op::bw_moe_begin, m});
    // The gradient joins the backbone where the input was taken: LN2 of the source (u) or its norm.
    size_t finish = t.norm_of_input ? index_of(p, {Op::bw_norm_tap, m}) : index_of(p, {Op::bw_join, t.src});
    p.insert(p.begin() + finish, {Op::bw_moe_finish, m});
    // Mirror of the forward slot: the combine's gradient travels during as many units as the
    // forward combine did.
    int units = 0;
    for (size_t i = begin + 1; i < finish; i++) units += unit_start(p[i], true);
    int before = std::clamp(units - (t.slot - 1), 0, units);
    size_t compute = nth_unit(p, begin, finish, before, true);
    p.insert(p.begin() + compute, {Op::bw_moe_compute, m});
  }
  return p;
}

std::string describe(const std::vector<Action>& plan) {
  static const char* names[] = {"attn", "ffn", "out", "begin", "compute", "finish", "bw_out", "bw_ffn",
                                "bw_join", "bw_attn", "bw_norm_tap", "bw_begin", "bw_compute", "bw_finish", "post"};
  std::string s;
  for (const Action& a : plan) s += (s.empty() ? "" : " ") + std::string(names[int(a.op)]) + std::to_string(a.block);
  return s;
}

}  // namespace scmoe
