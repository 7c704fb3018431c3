// Dispatch kernels vs the CPU reference (kernels/cpu/permute.h): the capacity plan (pos, counts,
// offsets, dropped), route_sort and fixed_capacity_slots must EQUAL the CPU's; the row copies are exact;
// combine and permute_backward within fp32 rounding; bf16 storage within its rounding (stated below).
#include "kernels/cpu/permute.h"

#include <cstdio>
#include <string>

#include "kernels/cuda/permute.h"
#include "tests/kernels/emu/kernel_test.h"

namespace {
using I32 = std::vector<int32_t>;
using I64 = std::vector<int64_t>;
using F = std::vector<float>;
namespace cu = scmoe::cuda;
namespace cpu = scmoe::cpu;

enum class Kind { random, skewed, all_to_one, empty_expert, duplicates };
const char* kind_name(Kind kd) {
  switch (kd) {
    case Kind::random:
      return "random";
    case Kind::skewed:
      return "skewed";
    case Kind::all_to_one:
      return "all-to-one";
    case Kind::empty_expert:
      return "empty-expert";
    case Kind::duplicates:
      return "duplicates";
  }
  return "?";
}

// Top-k expert choices per token: distinct per token (as the router makes them) unless `duplicates`.
// skewed: expert 1 % E takes ~70% of first choices; all-to-one: every first choice is E-1;
// empty-expert: expert E/2 is never chosen.
I32 make_idx(int N, int k, int E, Kind kd, uint64_t seed) {
  scmoe::Rng r(seed);
  I32 idx((size_t)N * k);
  for (int n = 0; n < N; n++) {
    for (int j = 0; j < k; j++) {
      for (;;) {
        int e = int(r.next_u64() % E);
        if (j == 0 && kd == Kind::skewed && r.uniform() < 0.7) e = 1 % E;
        if (j == 0 && kd == Kind::all_to_one) e = E - 1;
        if (kd == Kind::empty_expert && e == E / 2) continue;
        bool dup = false;
        for (int jj = 0; jj < j; jj++) dup |= idx[(size_t)n * k + jj] == e;
        if (dup && kd != Kind::duplicates) continue;
        idx[(size_t)n * k + j] = e;
        break;
      }
    }
  }
  return idx;
}

// Runs `body` under shuffled schedule i % 3 when emulated (once natively): a wide sweep thus covers
// three schedules without running every case three times.
void rotating_schedule(int i, const std::function<void()>& body) {
  kt::for_each_schedule(3, [&](int s) {
    if (!kt::kEmulated || s == i % 3) body();
  });
}

struct Plan {
  I32 pos;
  I64 counts, offsets;
  int64_t dropped;
};

Plan device_plan(const I32& idx, int N, int k, int E, int64_t cap) {
  kt::Buf<int32_t> didx(idx), pos((size_t)N * k);
  kt::Buf<int64_t> counts(E), offsets(E + 1), dropped(1);
  kt::Buf<unsigned char> ws(cu::dispatch_workspace_bytes(N, k, E));
  cu::dispatch_plan(didx.get(), N, k, E, cap, pos.get(), counts.get(), offsets.get(), dropped.get(), ws.get(),
                    nullptr);
  kt::sync();
  return {pos.download(), counts.download(), offsets.download(), dropped.download()[0]};
}

Plan cpu_plan(const I32& idx, int N, int k, int E, int64_t cap) {
  Plan p{I32((size_t)N * k), I64(E), I64(E + 1), 0};
  p.dropped = cpu::dispatch_plan(idx.data(), N, k, E, cap, p.pos.data(), p.counts.data(), p.offsets.data());
  return p;
}

// route_sort then fixed_capacity_slots for a few (capacity, chunk_rows), each equal to the CPU's.
void check_source_side(const std::string& tag, const I32& idx, int N, int k, int E) {
  I32 sp_ref((size_t)N * k);
  I64 bk_ref((size_t)E * k);
  cpu::route_sort(idx.data(), N, k, E, sp_ref.data(), bk_ref.data());
  kt::Buf<int32_t> didx(idx), sp((size_t)N * k);
  kt::Buf<int64_t> bk((size_t)E * k);
  kt::Buf<unsigned char> ws(cu::dispatch_workspace_bytes(N, k, E));
  cu::route_sort(didx.get(), N, k, E, sp.get(), bk.get(), ws.get(), nullptr);
  kt::sync();
  kt::expect_equal("route_sort send_pos " + tag, sp.download(), sp_ref);
  kt::expect_equal("route_sort bucket " + tag, bk.download(), bk_ref);
  const int64_t cf = (int64_t)k * ((N + E - 1) / E);
  const int64_t caps[][2] = {
      {1, 1}, {cf, 3}, {cf / 2 + 1, 2}, {(int64_t)N * k, std::max<int64_t>(1, (int64_t)N * k)}};
  for (const auto& cc : caps) {
    I32 s2 = sp_ref;
    I64 b2 = bk_ref;
    cpu::fixed_capacity_slots(idx.data(), N, k, E, cc[0], cc[1], s2.data(), b2.data());
    kt::Buf<int32_t> dsp(sp_ref);
    kt::Buf<int64_t> dbk(bk_ref);
    cu::fixed_capacity_slots(didx.get(), N, k, E, cc[0], cc[1], dsp.get(), dbk.get(), ws.get(), nullptr);
    kt::sync();
    const std::string t = tag + " cap=" + std::to_string(cc[0]) + " chunk=" + std::to_string(cc[1]);
    kt::expect_equal("fixed_capacity_slots send_pos " + t, dsp.download(), s2);
    kt::expect_equal("fixed_capacity_slots bucket " + t, dbk.download(), b2);
  }
}

// The fixed layout's admission on the device equals the CPU's (padded segments, the same rows in the
// same places, counts and drops) for receive counts from W ranks that overflow the capacity or not,
// with the assignments this rank did not send counted as drops.
void check_admit_fixed() {
  struct C {
    int W, El, k, P;
    int64_t capacity;
  };
  for (const C c : {C{1, 4, 2, 1, 5}, C{2, 3, 2, 1, 4}, C{3, 2, 1, 2, 7}, C{4, 2, 3, 3, 6}, C{2, 5, 2, 2, 1}}) {
    const int E = c.W * c.El, B = E * c.k;
    const int64_t cr = (c.capacity + c.P - 1) / c.P;
    scmoe::Rng r(uint64_t(c.W * 100 + c.El * 10 + c.k));
    // Rows each source sends per (local expert, choice): at most `capacity` per slot (fixed_capacity_slots).
    I64 recv(size_t(c.W) * c.El * c.k), send(B);
    for (int rr = 0; rr < c.W; rr++)
      for (int le = 0; le < c.El; le++) {
        int64_t left = c.capacity;
        for (int j = 0; j < c.k; j++) {
          const int64_t n = std::min<int64_t>(left, int64_t(r.next_u64() % uint64_t(c.capacity + 1)));
          recv[(size_t(rr) * c.El + le) * c.k + j] = n, left -= n;
        }
      }
    for (int b = 0; b < B; b++) send[b] = int64_t(r.next_u64() % 3);
    const int64_t assignments = 50;
    const size_t rows = size_t(c.P) * E * cr;
    I32 row_ref(rows);
    I64 seg_ref(size_t(c.P) * c.El), off_ref(size_t(c.P) * c.El + 1);
    int64_t sent = 0;
    for (int64_t v : send) sent += v;
    const int64_t drop_ref = cpu::admit_rows_fixed(recv.data(), c.W, c.El, c.k, c.capacity, cr, c.P, row_ref.data(),
                                                   seg_ref.data(), off_ref.data()) +
                             (assignments - sent);
    kt::Buf<int64_t> drecv(recv), dsend(send), dseg(seg_ref.size()), ddrop(1);
    kt::Buf<int32_t> drow(rows);
    cu::admit_rows_fixed(drecv.get(), dsend.get(), assignments, c.W, c.El, E, c.k, c.capacity, cr, c.P, drow.get(),
                         dseg.get(), ddrop.get(), nullptr);
    kt::sync();
    const std::string t = "admit_rows_fixed W=" + std::to_string(c.W) + " El=" + std::to_string(c.El) +
                          " k=" + std::to_string(c.k) + " P=" + std::to_string(c.P);
    kt::expect_equal(t + " expert_row", drow.download(), row_ref);
    kt::expect_equal(t + " seg_counts", dseg.download(), seg_ref);
    kt::expect_equal(t + " dropped", ddrop.download(), I64{drop_ref});
    // Segments are fixed-size: segment s starts at s * min(capacity, W * chunk_rows).
    CHECK(off_ref[1] == std::min<int64_t>(c.capacity, int64_t(c.W) * cr));
  }
}

F rounded(const F& v) { return kt::to_floats(kt::to_bf16(v)); }

// The row kernels on a given plan, float then bf16 storage. `rows` = kept rows (offsets[E]).
void check_rows(const std::string& tag, const Plan& p, int N, int k, int C, uint64_t seed) {
  const int64_t rows = std::max<int64_t>(p.offsets.back(), 1), NK = (int64_t)N * k;
  const F x = kt::random_vec((size_t)N * C, seed), dxe = kt::random_vec(rows * C, seed + 1),
          dx0 = kt::random_vec((size_t)N * C, seed + 2), ye = kt::random_vec(rows * C, seed + 3),
          gate = kt::random_vec(NK, seed + 4, 0.f, 1.f), dy = kt::random_vec((size_t)N * C, seed + 5),
          srcs = kt::random_vec(NK * C, seed + 6);
  const std::string t = tag + " C=" + std::to_string(C);
  // References (float): exact copies, fp32 sums in choice order, dot products in double.
  F xe_ref(rows * C, 0.f), dx_ref(dx0), dxa_ref(dx0), y_ref((size_t)N * C), dye_ref(rows * C, 0.f),
      dg_ref(NK), sc_ref(rows * C, 0.f), ga_ref(NK * C);
  auto refs = [&](const F& x_, const F& dxe_, const F& dx0_, const F& ye_, const F& dy_, const F& src_) {
    std::fill(xe_ref.begin(), xe_ref.end(), 0.f);
    std::fill(dye_ref.begin(), dye_ref.end(), 0.f);
    std::fill(sc_ref.begin(), sc_ref.end(), 0.f);
    dx_ref = dx0_, dxa_ref = dx0_;
    cpu::permute_forward(xe_ref.data(), x_.data(), p.pos.data(), N, k, C);
    cpu::permute_backward(dx_ref.data(), dxe_.data(), p.pos.data(), N, k, C, false);
    cpu::permute_backward(dxa_ref.data(), dxe_.data(), p.pos.data(), N, k, C, true);
    cpu::combine_forward(y_ref.data(), ye_.data(), gate.data(), p.pos.data(), N, k, C);
    cpu::combine_backward(dye_ref.data(), dg_ref.data(), dy_.data(), ye_.data(), gate.data(), p.pos.data(), N,
                          k, C);
    cpu::scatter_rows(sc_ref.data(), src_.data(), p.pos.data(), NK, C);
    cpu::gather_rows(ga_ref.data(), ye_.data(), p.pos.data(), NK, C);
  };
  refs(x, dxe, dx0, ye, dy, srcs);
  kt::Buf<int32_t> pos(p.pos);
  kt::Buf<float> dgate(gate), dg(NK);
  {
    kt::Buf<float> dx_(x), xe(F(rows * C, 0.f)), ddxe(dxe), dx(dx0), dxa(dx0), dye_(ye), y((size_t)N * C),
        ddy(dy), dye(F(rows * C, 0.f)), src(srcs), sc(F(rows * C, 0.f)), ga(NK * C);
    cu::permute_forward(xe.get(), dx_.get(), pos.get(), N, k, C, nullptr);
    cu::permute_backward(dx.get(), ddxe.get(), pos.get(), N, k, C, false, nullptr);
    cu::permute_backward(dxa.get(), ddxe.get(), pos.get(), N, k, C, true, nullptr);
    cu::combine_forward(y.get(), dye_.get(), dgate.get(), pos.get(), N, k, C, nullptr);
    cu::combine_backward(dye.get(), dg.get(), ddy.get(), dye_.get(), dgate.get(), pos.get(), N, k, C,
                         nullptr);
    cu::scatter_rows(sc.get(), src.get(), pos.get(), NK, C, nullptr);
    cu::gather_rows(ga.get(), dye_.get(), pos.get(), NK, C, nullptr);
    kt::sync();
    kt::expect_equal("permute_forward fp32 " + t, xe.download(), xe_ref);
    kt::expect_close("permute_backward fp32 " + t, dx.download(), dx_ref, 1e-6, 1e-7);
    kt::expect_close("permute_backward accumulate fp32 " + t, dxa.download(), dxa_ref, 1e-6, 1e-7);
    kt::expect_close("combine_forward fp32 " + t, y.download(), y_ref, 1e-6, 1e-7);
    kt::expect_close("combine_backward dye fp32 " + t, dye.download(), dye_ref, 1e-6, 1e-7);
    // dot of C terms: fp32 vs the CPU's double
    kt::expect_close("combine_backward dgate fp32 " + t, dg.download(), dg_ref, 1e-5, 1e-6 * C);
    kt::expect_equal("scatter_rows fp32 " + t, sc.download(), sc_ref);
    kt::expect_equal("gather_rows fp32 " + t, ga.download(), ga_ref);
  }
  // bf16 storage: the reference runs in float on the bf16-rounded inputs. Copies stay exact; a sum or
  // product rounded once to bf16 is within 2^-9 relative (tolerance 2^-8); dgate stays fp32.
  const F xb = rounded(x), dxeb = rounded(dxe), dx0b = rounded(dx0), yeb = rounded(ye), dyb = rounded(dy),
          srcb = rounded(srcs);
  refs(xb, dxeb, dx0b, yeb, dyb, srcb);
  kt::Buf<kt::bf16> dx_(kt::to_bf16(xb)), xe(kt::to_bf16(F(rows * C, 0.f))), ddxe(kt::to_bf16(dxeb)),
      dx(kt::to_bf16(dx0b)), dxa(kt::to_bf16(dx0b)), dye_(kt::to_bf16(yeb)), y((size_t)N * C),
      ddy(kt::to_bf16(dyb)), dye(kt::to_bf16(F(rows * C, 0.f))), src(kt::to_bf16(srcb)),
      sc(kt::to_bf16(F(rows * C, 0.f))), ga(NK * C);
  cu::permute_forward(xe.get(), dx_.get(), pos.get(), N, k, C, nullptr);
  cu::permute_backward(dx.get(), ddxe.get(), pos.get(), N, k, C, false, nullptr);
  cu::permute_backward(dxa.get(), ddxe.get(), pos.get(), N, k, C, true, nullptr);
  cu::combine_forward(y.get(), dye_.get(), dgate.get(), pos.get(), N, k, C, nullptr);
  cu::combine_backward(dye.get(), dg.get(), ddy.get(), dye_.get(), dgate.get(), pos.get(), N, k, C, nullptr);
  cu::scatter_rows(sc.get(), src.get(), pos.get(), NK, C, nullptr);
  cu::gather_rows(ga.get(), dye_.get(), pos.get(), NK, C, nullptr);
  kt::sync();
  const double r = 1.0 / 256;
  kt::expect_equal("permute_forward bf16 " + t, kt::to_floats(xe.download()), xe_ref);
  kt::expect_close("permute_backward bf16 " + t, dx.download(), dx_ref, r, 1e-6);
  kt::expect_close("permute_backward accumulate bf16 " + t, dxa.download(), dxa_ref, r, 1e-6);
  kt::expect_close("combine_forward bf16 " + t, y.download(), y_ref, r, 1e-6);
  kt::expect_close("combine_backward dye bf16 " + t, dye.download(), dye_ref, r, 1e-6);
  kt::expect_close("combine_backward dgate bf16 " + t, dg.download(), dg_ref, 1e-5, 1e-6 * C);
  kt::expect_equal("scatter_rows bf16 " + t, kt::to_floats(sc.download()), sc_ref);
  kt::expect_equal("gather_rows bf16 " + t, kt::to_floats(ga.download()), ga_ref);
}

void check_plan(const I32& idx, int N, int k, int E, int64_t cap, const std::string& tag) {
  const Plan ref = cpu_plan(idx, N, k, E, cap);
  const Plan got = device_plan(idx, N, k, E, cap);
  const std::string t = tag + " cap=" + std::to_string(cap);
  kt::expect_equal("dispatch_plan pos " + t, got.pos, ref.pos);
  kt::expect_equal("dispatch_plan counts " + t, got.counts, ref.counts);
  kt::expect_equal("dispatch_plan offsets " + t, got.offsets, ref.offsets);
  kt::expect_equal("dispatch_plan dropped " + t, I64{got.dropped}, I64{ref.dropped});
}

void test_plans() {
  struct Shape {
    int E, k;
  };
  const Shape shapes[] = {{1, 1}, {4, 1}, {4, 2}, {7, 3}, {16, 2}, {16, 3}};
  const Kind kinds[] = {Kind::random, Kind::skewed, Kind::all_to_one, Kind::empty_expert, Kind::duplicates};
  int seq = 0;
  for (int N : {1, 37, 300})
    for (const Shape& s : shapes)
      for (Kind kd : kinds) {
        if (kd == Kind::empty_expert && s.E - 1 < s.k) continue;  // needs k other experts
        if (kd == Kind::duplicates && s.k == 1) continue;
        const I32 idx = make_idx(N, s.k, s.E, kd, 1234 + seq++);
        const std::string tag = "N=" + std::to_string(N) + " E=" + std::to_string(s.E) +
                                " k=" + std::to_string(s.k) + " " + kind_name(kd);
        // 0: everything dropped; 1 and ~half the fair share: many drops; the paper's cf=1 capacity;
        // exactly dropless; far above it.
        const int64_t NK = (int64_t)N * s.k, fair = (NK + s.E - 1) / s.E;
        // (the full list for random choices, the telling ones otherwise: emulation time)
        const bool full = kd == Kind::random;
        for (int64_t cap : {int64_t(0), int64_t(1), fair / 2 + 1, (int64_t)s.k * ((N + s.E - 1) / s.E), NK,
                            int64_t(1) << 40})
          if (full || cap == fair / 2 + 1 || cap == NK || (kd == Kind::skewed && cap == 1))
            rotating_schedule(seq++, [&] { check_plan(idx, N, s.k, s.E, cap, tag); });
        if (full || kd == Kind::skewed)
          rotating_schedule(seq++, [&] { check_source_side(tag, idx, N, s.k, s.E); });
      }
}

// Row kernels on plans with drops and without (and all dropped), an odd width (scalar path) and
// 16-byte-whole rows (vector path: 40 floats or 40 bf16).
void test_rows() {
  struct R {
    int N, k, E;
    int64_t cap;
    Kind kd;
  };
  const R cases[] = {{1, 1, 1, 1, Kind::random},    {37, 2, 4, 7, Kind::skewed},
                     {37, 3, 7, 111, Kind::random}, {130, 2, 16, 20, Kind::all_to_one},
                     {19, 1, 4, 0, Kind::random},   {45, 3, 16, 2, Kind::empty_expert}};
  int seq = 0;
  for (const R& c : cases) {
    const I32 idx = make_idx(c.N, c.k, c.E, c.kd, 99 + seq);
    const Plan p = cpu_plan(idx, c.N, c.k, c.E, c.cap);
    const std::string tag = "N=" + std::to_string(c.N) + " E=" + std::to_string(c.E) +
                            " k=" + std::to_string(c.k) + " cap=" + std::to_string(c.cap) +
                            " dropped=" + std::to_string(p.dropped);
    for (int C : {37, 40}) {
      const uint64_t seed = 500 + 17 * seq;
      rotating_schedule(seq++, [&] { check_rows(tag, p, c.N, c.k, C, seed); });
    }
  }
}

// Larger plans than the emulated sweep: several tiles, one expert of many taking most tokens.
void test_big_plan() {
  for (int N : {777, 1100}) {
    const int E = 33, k = 2;
    const I32 idx = make_idx(N, k, E, Kind::skewed, 4242 + N);
    for (int64_t cap : {int64_t(0), int64_t(50), int64_t(k) * ((N + E - 1) / E), (int64_t)N * k})
      check_plan(idx, N, k, E, cap, "N=" + std::to_string(N) + " E=33 k=2 skewed");
    check_source_side("N=" + std::to_string(N) + " E=33 k=2 skewed", idx, N, k, E);
  }
}

void test_errors() {
  // An out-of-range expert: that assignment is not placed and dropped reads -1.
  const int N = 5, k = 1, E = 3;
  const I32 idx = {0, 1, 3, 2, 0};
  Plan p = device_plan(idx, N, k, E, 10);
  CHECK(p.dropped == -1);
  CHECK(p.pos[2] == -1);
  CHECK(p.pos[0] == 0 && p.pos[4] == 1 && p.pos[1] == 2 && p.pos[3] == 3);
  kt::Buf<int32_t> didx(idx), pos(N);
  kt::Buf<int64_t> c(E), o(E + 1), d(1);
  kt::Buf<unsigned char> ws(cu::dispatch_workspace_bytes(N, k, E));
  CHECK_THROWS_WITH(
      cu::dispatch_plan(didx.get(), N, k, E, -1, pos.get(), c.get(), o.get(), d.get(), ws.get(), nullptr),
      "negative capacity");
  CHECK_THROWS_WITH(
      cu::dispatch_plan(didx.get(), N, k, 2000, 1, pos.get(), c.get(), o.get(), d.get(), ws.get(), nullptr),
      "limits");
  // No tokens: empty plan.
  Plan z = device_plan(I32{}, 0, 2, 4, 3);
  CHECK(z.dropped == 0);
  kt::expect_equal("dispatch_plan N=0 counts", z.counts, I64(4, 0));
  kt::expect_equal("dispatch_plan N=0 offsets", z.offsets, I64(5, 0));
}
}  // namespace

int main() {
  kt::require_device();
  test_plans();
  kt::for_each_schedule(2, [](int) { check_admit_fixed(); });
  test_rows();
  kt::for_each_schedule(3, [](int) { test_big_plan(); });
  test_errors();
  TEST_MAIN_END();
}
