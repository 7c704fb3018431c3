// Device AdamW, gradient norm and clip factor vs the CPU kernels (kernels/cpu/adamw.h):
// awkward buffer sizes and range layouts, several steps, clipping on and off, bf16 copies rounded to
// nearest and stochastically, and bit-identical norms across runs and schedules.
#include "kernels/cuda/adamw.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/adamw.h"
#include "tests/kernels/emu/kernel_test.h"

using scmoe::OptimConfig;
using scmoe::ParamTable;
using scmoe::cuda::Bf16Rounding;
using scmoe::cuda::ParamChunk;
using scmoe::cuda::ParamRange;
namespace cu = scmoe::cuda;

namespace {

constexpr int kSteps = 5;
// fp32 kernel vs the double-precision CPU update rounded to float: 1e-6 relative. The absolute floors
// cover cancellation (m = b1*m + (1-b1)*g and p - lr*update near zero), where a few float ulps of the
// operands (|g| <= 1, lr*|update| <= 0.02) are all either side can promise.
constexpr double kRtol = 1e-6, kAtolP = 1e-8, kAtolM = 5e-8;

uint16_t bits_of(kt::bf16 b) {
  uint16_t u;
  std::memcpy(&u, &b, sizeof u);
  return u;
}
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// A partition of [0, n) into tensors with gaps between some of them (never touched), lengths from 1
// to about n/3, decay and expert flags mixed; the first tensor has one element.
std::vector<ParamRange> make_layout(size_t n, uint64_t seed) {
  scmoe::Rng r(seed);
  std::vector<ParamRange> out;
  size_t pos = 0;
  bool first = true;
  while (pos < n) {
    if (!first && r.uniform() < 0.3) pos += 1 + size_t(r.uniform() * 5);  // a gap
    if (pos >= n) break;
    size_t len = first ? 1 : 1 + size_t(r.uniform() * std::max<size_t>(1, n / 3));
    if (r.uniform() < 0.15) len = 1;
    len = std::min(len, n - pos);
    out.push_back({pos, len, first ? false : r.uniform() < 0.6, r.uniform() < 0.3});
    pos += len;
    first = false;
  }
  return out;
}

// The CPU optimizer (cpu::adamw_step) over the same ranges, with its own moments and step count.
struct RefOptimizer {
  OptimConfig cfg;
  std::vector<scmoe::cpu::ParamRange> ranges;
  std::vector<float> m, v;
  int64_t t = 0;
  RefOptimizer(const OptimConfig& c, const std::vector<ParamRange>& rs, size_t n) : cfg(c), m(n, 0.f), v(n, 0.f) {
    for (const ParamRange& r : rs) ranges.push_back({r.offset, r.numel, r.decay, r.expert});
  }
  void step(float* p, const float* g, double lr, double mult) {
    scmoe::cpu::adamw_step(p, m.data(), v.data(), g, ranges, cfg, lr, ++t, mult);
  }
  // m or v over the whole buffer; gaps keep `base`'s values.
  std::vector<float> gather(bool want_m, std::vector<float> base) {
    for (const auto& r : ranges)
      std::copy((want_m ? m : v).begin() + long(r.offset), (want_m ? m : v).begin() + long(r.offset + r.numel),
                base.begin() + long(r.offset));
    return base;
  }
};

double trainer_mult(double clip, double norm) { return clip > 0 && norm > clip ? clip / norm : 1.0; }

// Element i of `got` is x rounded to a neighbouring bf16: truncated, or one ulp up in magnitude when
// x is not already a bf16.
bool is_bf16_neighbour(kt::bf16 got, float x) {
  const uint32_t b = bits_of(x);
  const uint16_t lo = uint16_t(b >> 16), g = bits_of(got);
  return g == lo || ((b & 0xffffu) != 0 && g == uint16_t(lo + 1));
}

// A device buffer reached at an offset of `shift` elements, to run the kernel's unaligned path.
template <class T>
struct Shifted {
  kt::Buf<T> buf;
  size_t shift;
  Shifted(size_t n, size_t s) : buf(n + s), shift(s) {}
  T* get() const { return buf.get() + shift; }
  void upload(const std::vector<T>& v) {
    std::vector<T> w(buf.size());
    std::copy(v.begin(), v.end(), w.begin() + shift);
    buf.upload(w);
  }
  std::vector<T> download() const {
    std::vector<T> w = buf.download();
    return std::vector<T>(w.begin() + shift, w.end());
  }
};

struct Case {
  size_t n;
  double clip;  // relative to the first step's norm: 0.3 active, 1e9 inactive; 0 disabled
  int max_chunk;
  bool misaligned;
  int rounding;  // -1: no bf16 copy, else Bf16Rounding
};

void run_case(const Case& c, int schedule) {
  const size_t n = c.n;
  const std::string name = "n=" + std::to_string(n) + " clip=" + std::to_string(c.clip) +
                           " chunk=" + std::to_string(c.max_chunk) + (c.misaligned ? " misaligned" : "") +
                           (c.rounding < 0    ? " no-bf16"
                            : c.rounding == 0 ? " bf16-rn"
                                              : " bf16-sr") +
                           " schedule=" + std::to_string(schedule);
  OptimConfig cfg;
  cfg.weight_decay = 0.1;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.95;
  cfg.eps = 1e-8;
  const std::vector<ParamRange> layout = make_layout(n, 100 + n);
  const std::vector<ParamChunk> chunks = cu::param_chunks(layout, c.max_chunk);
  std::vector<float> p = kt::random_vec(n, 7 + n), m0(n, 7.f), v0(n, 9.f);  // gaps hold 7 and 9
  for (const ParamRange& r : layout)
    for (size_t i = r.offset; i < r.offset + r.numel; i++) m0[i] = 0.f, v0[i] = 0.f;
  const size_t shift = c.misaligned ? 1 : 0;
  Shifted<float> dp(n, shift), dm(n, shift), dv(n, shift), dg(n, shift);
  Shifted<kt::bf16> dpb(n, shift);
  dp.upload(p), dm.upload(m0), dv.upload(v0);
  std::vector<kt::bf16> sentinel(n, __float2bfloat16(42.f));
  dpb.upload(sentinel);
  kt::Buf<ParamChunk> dchunks(chunks);
  kt::Buf<double> scratch(cu::grad_norm_scratch()), sq(1);
  kt::Buf<float> dmult(1), dnorm(1);

  RefOptimizer ref(cfg, layout, n);
  std::vector<float> p_ref = p;
  double clip = c.clip;
  for (int t = 1; t <= kSteps; t++) {
    const std::vector<float> g = kt::random_vec(n, 1000 * t + n);
    const double norm_ref = scmoe::cpu::global_norm<float>(g.data(), n);
    if (t == 1 && c.clip > 0) clip = c.clip * norm_ref;
    const double mult_ref = trainer_mult(clip, norm_ref);
    const double lr = 1e-2 * (1.0 + 0.1 * t);
    ref.step(p_ref.data(), g.data(), lr, mult_ref);

    dg.upload(g);
    cu::grad_norm_squared(sq.get(), scratch.get(), dg.get(), int64_t(n), nullptr);
    cu::grad_clip_mult(dmult.get(), dnorm.get(), sq.get(), 1, clip, nullptr);
    cu::adamw_step(dp.get(), dm.get(), dv.get(), dg.get(), c.rounding < 0 ? nullptr : dpb.get(),
                   dchunks.get(), int(chunks.size()), cfg, lr, t, dmult.get(),
                   Bf16Rounding(std::max(0, c.rounding)), 1234 + schedule, nullptr);
    kt::sync();
    const std::string st = name + " t=" + std::to_string(t);
    kt::expect_close("grad norm " + st, dnorm.download(), std::vector<double>{norm_ref}, 1e-6, 0);
    kt::expect_close("grad mult " + st, dmult.download(), std::vector<double>{mult_ref}, 1e-6, 0);
    if (c.clip == 0.3 && t == 1) CHECK(mult_ref < 1);  // the clipping case clips
    if (c.clip != 0.3) CHECK(mult_ref == 1);
  }
  const std::vector<float> got_p = dp.download();
  kt::expect_close("params " + name, got_p, p_ref, kRtol, kAtolP);
  kt::expect_close("m " + name, dm.download(), ref.gather(true, m0), kRtol, kAtolM);
  kt::expect_close("v " + name, dv.download(), ref.gather(false, v0), kRtol, 0);
  // Gaps untouched (exactly).
  std::vector<bool> in_range(n, false);
  for (const ParamRange& r : layout)
    for (size_t i = r.offset; i < r.offset + r.numel; i++) in_range[i] = true;
  std::vector<float> gap_got, gap_want;
  for (size_t i = 0; i < n; i++)
    if (!in_range[i]) gap_got.push_back(got_p[i]), gap_want.push_back(p[i]);
  kt::expect_equal("gaps untouched " + name, gap_got, gap_want);

  const std::vector<kt::bf16> pb = dpb.download();
  std::vector<float> want_b(n), got_b(n);
  size_t bad_neighbour = 0;
  for (size_t i = 0; i < n; i++) {
    got_b[i] = bits_of(pb[i]);
    if (!in_range[i] || c.rounding < 0)
      want_b[i] = bits_of(sentinel[i]);
    else if (c.rounding == 0)
      want_b[i] = bits_of(__float2bfloat16(got_p[i]));
    else {
      want_b[i] = got_b[i];
      if (!is_bf16_neighbour(pb[i], got_p[i])) bad_neighbour++;
    }
  }
  kt::expect_equal("bf16 copy bits " + name, got_b, want_b);
  CHECK(bad_neighbour == 0);
}

// A real ParamTable (padding between tensors, expert tensors): param_chunks(table), the per-group norm
// against the trainer's per-tensor sums, the clip factor from two groups, and AdamW<float> on the table.
void table_case(int schedule) {
  ParamTable table;
  table.add("wte", {37, 11}, true, scmoe::Init::normal);
  table.add("ln.w", {1}, false, scmoe::Init::ones);
  table.add("h.0.mlp.experts.0.w", {5, 61}, true, scmoe::Init::normal);
  table.add("h.0.mlp.bias", {13}, false, scmoe::Init::zeros);
  table.add("h.0.mlp.experts.1.w", {3, 3}, true, scmoe::Init::normal);
  table.add("h.1.attn.w", {29, 41}, true, scmoe::Init::normal);
  const size_t n = table.total();
  OptimConfig cfg;
  cfg.beta2 = 0.999;
  cfg.weight_decay = 0.05;
  const std::vector<ParamChunk> chunks = cu::param_chunks(table, 256);
  std::vector<float> p = kt::random_vec(n, 5), zeros(n, 0.f);
  kt::Buf<float> dp(p), dm(zeros), dv(zeros), dg(n), dmult(1), dnorm(1);
  kt::Buf<ParamChunk> dchunks(chunks);
  kt::Buf<double> scratch(cu::grad_norm_scratch()), sq(2);
  std::vector<ParamRange> table_ranges;
  for (const auto& s : table.specs()) table_ranges.push_back({s.offset, s.numel, s.decay, s.expert});
  RefOptimizer ref(cfg, table_ranges, n);
  std::vector<float> p_ref = p;
  for (int t = 1; t <= 3; t++) {
    std::vector<float> g = kt::random_vec(n, 77 + t, -2.f, 2.f);
    double rep_sq = 0, exp_sq = 0;  // train/trainer.cpp's sums
    for (const auto& s : table.specs()) {
      double nn = scmoe::cpu::global_norm(g.data() + s.offset, s.numel);
      (s.expert ? exp_sq : rep_sq) += nn * nn;
    }
    const double norm = std::sqrt(rep_sq + exp_sq), clip = t == 2 ? 1e9 : 1.0;
    const double mult = trainer_mult(clip, norm);
    ref.step(p_ref.data(), g.data(), 3e-3, mult);
    dg.upload(g);
    cu::grad_norm_squared(sq.get(), scratch.get(), dg.get(), dchunks.get(), int(chunks.size()), nullptr);
    cu::grad_clip_mult(dmult.get(), dnorm.get(), sq.get(), 2, clip, nullptr);
    cu::adamw_step(dp.get(), dm.get(), dv.get(), dg.get(), nullptr, dchunks.get(), int(chunks.size()), cfg,
                   3e-3, t, dmult.get(), Bf16Rounding::nearest, 0, nullptr);
    kt::sync();
    const std::string st = "table t=" + std::to_string(t) + " schedule=" + std::to_string(schedule);
    const std::vector<double> got_sq = sq.download();  // doubles: compared here, not through float
    CHECK_NEAR(got_sq[0], rep_sq, 1e-12 * rep_sq);
    CHECK_NEAR(got_sq[1], exp_sq, 1e-12 * exp_sq);
    kt::expect_close("norm " + st, dnorm.download(), std::vector<double>{norm}, 1e-6, 0);
    kt::expect_close("mult " + st, dmult.download(), std::vector<double>{mult}, 1e-6, 0);
  }
  kt::expect_close("table params", dp.download(), p_ref, kRtol, kAtolP);
  kt::expect_close("table m", dm.download(), ref.m, kRtol, kAtolM);
  kt::expect_close("table v", dv.download(), ref.v, kRtol, 0);
}

// Flat norm: within 1e-6 of the CPU's global_norm and bit-identical across runs and schedules. Values
// spread over many magnitudes so that any change of summation order would show in the last bits.
void norm_determinism() {
  for (int64_t n : {0, 1, 257, 4099, 3 * 4096 + 5}) {
    std::vector<float> g = kt::random_vec(size_t(n), 300 + n);
    for (int64_t i = 0; i < n; i++) g[i] *= std::exp2(float(i % 23) - 11.f);
    const double want = scmoe::cpu::global_norm<float>(g.data(), size_t(n));
    std::vector<float> first;
    kt::for_each_schedule(3, [&](int s) {
      kt::Buf<float> dg(g), out(2);
      kt::Buf<double> scratch(cu::grad_norm_scratch());
      for (int run = 0; run < 2; run++) cu::global_norm(out.get() + run, scratch.get(), dg.get(), n, nullptr);
      kt::sync();
      std::vector<float> got = out.download();
      const std::string what = "global_norm n=" + std::to_string(n) + " schedule=" + std::to_string(s);
      kt::expect_close(what, std::vector<float>{got[0]}, std::vector<double>{want}, 1e-6, 0);
      CHECK(bits_of(got[0]) == bits_of(got[1]));
      if (first.empty()) first = got;
      CHECK(bits_of(got[0]) == bits_of(first[0]));
    });
  }
}

// Stochastic rounding on a large constant buffer (lr = 0, zero gradients: parameters stay put): every
// element rounds to one of the two neighbours, up with probability 0.3 (the dropped fraction), the
// same pattern for the same (seed, t) whatever the schedule, and a different one for another t or seed.
void stochastic_rounding_stats() {
  const size_t n = 20011;
  const float ulp = std::exp2(-7.f);  // bf16 spacing in [1, 2)
  for (float sign : {1.f, -1.f}) {
    const float c = sign * (1.f + 0.3f * ulp);
    std::vector<float> p(n, c), zeros(n, 0.f);
    const std::vector<ParamChunk> chunks = cu::param_chunks(std::vector<ParamRange>{{0, n, true}});
    kt::Buf<ParamChunk> dchunks(chunks);
    OptimConfig cfg;
    auto round = [&](int64_t t, uint64_t seed) {
      kt::Buf<float> dp(p), dm(zeros), dv(zeros), dg(zeros);
      kt::Buf<kt::bf16> out(n);
      cu::adamw_step(dp.get(), dm.get(), dv.get(), dg.get(), out.get(), dchunks.get(), int(chunks.size()),
                     cfg, 0.0, t, nullptr, Bf16Rounding::stochastic, seed, nullptr);
      kt::sync();
      std::vector<float> bits;
      for (kt::bf16 b : out.download()) bits.push_back(bits_of(b));
      kt::expect_equal("params unchanged by lr 0", dp.download(), p);
      return bits;
    };
    std::vector<float> first;
    kt::for_each_schedule(3, [&](int) {
      std::vector<float> b = round(3, 99);
      if (first.empty()) first = b;
      kt::expect_equal("stochastic rounding deterministic per (seed, t)", b, first);
    });
    const uint16_t lo = uint16_t(bits_of(c) >> 16);
    size_t up = 0, bad = 0;
    double mean = 0;
    for (float b : first) {
      const uint16_t u = uint16_t(b);
      up += u == uint16_t(lo + 1);
      bad += u != lo && u != uint16_t(lo + 1);
      __nv_bfloat16_raw r;
      r.x = u;
      mean += __bfloat162float(kt::bf16(r));
    }
    mean /= double(n);
    const double frac = double(up) / n;  // expect 0.3; the binomial's sd is 0.0032
    std::printf("stochastic rounding of %.8f: %.4f rounded up, mean %.8f\n", c, frac, mean);
    // Neighbours decide independently: both up 9%, both down 49% of adjacent pairs (58% agree).
    size_t agree = 0;
    for (size_t i = 0; i + 1 < n; i++) agree += first[i] == first[i + 1];
    std::printf("  adjacent elements agree: %.4f\n", double(agree) / double(n - 1));
    CHECK(std::fabs(double(agree) / double(n - 1) - 0.58) < 0.03);
    CHECK(bad == 0);
    CHECK(std::fabs(frac - 0.3) < 0.02);
    CHECK(std::fabs(mean - c) < 0.02 * ulp);  // round to nearest would be off by 0.3 ulp
    auto differs = [&](const std::vector<float>& o) {
      size_t d = 0;
      for (size_t i = 0; i < n; i++) d += o[i] != first[i];
      return d;
    };
    CHECK(differs(round(4, 99)) > n / 5);  // expected 2 * 0.3 * 0.7 = 42% differ
    CHECK(differs(round(3, 100)) > n / 5);
  }
}

}  // namespace

int main() {
  kt::require_device();
  // param_chunks: split at multiples of max_chunk and at range ends, flags carried.
  {
    auto ch = cu::param_chunks(
        std::vector<ParamRange>{{3, 10, true, false}, {13, 1, false, true}, {20, 4, true}}, 8);
    CHECK(ch.size() == 4);
    if (ch.size() == 4) {
      CHECK(ch[0].offset == 3 && ch[0].length == 5 && ch[0].decay == 1 && ch[0].group == 0);
      CHECK(ch[1].offset == 8 && ch[1].length == 5);
      CHECK(ch[2].offset == 13 && ch[2].length == 1 && ch[2].decay == 0 && ch[2].group == 1);
      CHECK(ch[3].offset == 20 && ch[3].length == 4);
    }
    CHECK_THROWS_WITH(cu::param_chunks(std::vector<ParamRange>{{0, 10, true}, {9, 2, true}}), "overlap");
  }
  const std::vector<Case> cases = {
      {1, 0.3, cu::kParamChunk, false, 0},
      {1, 1e9, cu::kParamChunk, true, 1},
      {1, 0, cu::kParamChunk, false, -1},
      {1000, 0.3, 64, false, 0},
      {1000, 1e9, 37, true, 1},
      {1000, 0, cu::kParamChunk, false, 1},
      {4099, 0.3, cu::kParamChunk, false, 0},
      {4099, 0, 37, false, 1},
      {4099, 1e9, 1000, true, -1},
      {4099, 0.3, 256, true, 0},
  };
  for (const Case& c : cases) kt::for_each_schedule(3, [&](int s) { run_case(c, s); });
  kt::for_each_schedule(3, table_case);
  norm_determinism();
  stochastic_rounding_stats();
  TEST_MAIN_END();
}
