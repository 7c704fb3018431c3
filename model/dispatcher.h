// The MoE token dispatcher: moves each (token, choice) row to the rank holding its expert and back.
// Experts are placed in contiguous ranges: rank r holds experts [r*El, (r+1)*El), El = E / W.
//   dispatch:  route_sort (source order by expert, choice, token) -> exchange per-(expert, choice) row
//              counts -> All-to-All of the rows -> admit_rows (capacity applied in the single-process
//              order, so drops do not depend on W) -> expert-contiguous input rows
//   combine:   expert outputs back to receive order (dropped rows return zeros) -> reverse All-to-All
//              -> each token sums gate * output over its choices
// Backward runs the same exchanges in the opposite direction. With one rank every exchange is a copy.
// Two exchange layouts give identical results:
//   dropless (capacity_factor <= 0): rows packed, sizes known only after the count exchange;
//   fixed capacity: every (source, expert) pair owns `capacity` rows (padded), so every exchange has a
//              size known in advance (no host synchronisation on a GPU). A source sends only its first
//              `capacity` rows per expert: the global admission order visits a source's rows in that
//              same order, so no row that could be admitted is left behind.
#pragma once
#include <algorithm>
#include <vector>

#include "comm/communicator.h"
#include "core/arena.h"
#include "kernels/ops.h"

namespace scmoe {

template <class T>
struct Dispatcher {
  int N = 0, k = 1, C = 0, E = 0, W = 1, rank = 0, El = 0;
  int64_t capacity = 0;
  bool fixed = false;            // fixed-capacity layout (see above)
  Communicator* comm = nullptr;  // null or world 1: local copies

  // plan (saved for backward)
  int32_t *send_pos = nullptr, *expert_row = nullptr;
  std::vector<int64_t> send_bucket, recv_bucket, expert_counts, expert_offsets;
  std::vector<size_t> send_rows, recv_rows, send_off, recv_off;  // per peer, in rows
  int64_t recv_total = 0, dropped = 0;
  // row buffers: send order (source side) and receive order (expert side)
  T *xs = nullptr, *xr = nullptr, *yr = nullptr, *ys = nullptr;

  void setup(int E_, int k_, int C_, Communicator* c) {
    E = E_, k = k_, C = C_, comm = c;
    W = c ? c->world_size() : 1;
    rank = c ? c->rank() : 0;
    El = E / W;
    send_bucket.assign((size_t)E * k, 0), recv_bucket.assign((size_t)W * El * k, 0);
    expert_counts.assign(El, 0), expert_offsets.assign(El + 1, 0);
  }
  // capacity_ and fixed_ are fixed for the run: they size the buffers.
  void alloc(Arena& a, int N_, int64_t capacity_, bool fixed_) {
    N = N_, capacity = capacity_, fixed = fixed_;
    size_t local = (size_t)N * k, worst = local * W;  // packed: every rank may send every row here
    if (fixed) local = std::max(local, (size_t)E * capacity), worst = std::max(worst, (size_t)E * capacity);
    send_pos = a.alloc<int32_t>(local);
    expert_row = a.alloc<int32_t>(worst);
    xs = a.alloc<T>(local * C), ys = a.alloc<T>(local * C);
    xr = a.alloc<T>(worst * C), yr = a.alloc<T>(worst * C);
  }

  // x: [N, C] router input; fills xe (expert-contiguous, expert_offsets[El] rows).
  void dispatch(T* xe, const T* x, const int32_t* topk_idx) {
    ops::route_sort(topk_idx, N, k, E, send_pos, send_bucket.data());
    if (fixed) ops::fixed_capacity_slots(topk_idx, N, k, E, capacity, send_pos, send_bucket.data());
    exchange_counts();
    ops::permute_forward(xs, x, send_pos, N, k, C);
    exchange_rows(xs, xr, /*forward=*/true);
    dropped = ops::admit_rows(recv_bucket.data(), W, El, k, capacity, fixed ? capacity : 0, recv_total, expert_row,
                              expert_counts.data(), expert_offsets.data());
    if (fixed) dropped += rows_not_sent();
    ops::scatter_rows(xe, xr, expert_row, recv_total, C);
  }
  // ye: expert outputs; y[n] = sum_j gate[n,j] * output of choice j (0 when dropped).
  void combine(T* y, const T* ye, const T* gate) {
    ops::gather_rows(yr, ye, expert_row, recv_total, C);
    exchange_rows(yr, ys, /*forward=*/false);
    ops::combine_forward(y, ys, gate, send_pos, N, k, C);
  }
  // Backward of combine: dye (expert-contiguous) and dgate from dy.
  void combine_backward(T* dye, T* dgate, const T* dy, const T* gate) {
    // ys still holds the returned outputs (needed for dgate); reuse xs as the send-order gradient.
    ops::combine_backward(xs, dgate, dy, ys, gate, send_pos, N, k, C);
    exchange_rows(xs, yr, /*forward=*/true);
    ops::scatter_rows(dye, yr, expert_row, recv_total, C);
  }
  // Backward of dispatch: dx[n] = sum_j gradient of row (n, j) (dropped rows contribute nothing).
  void dispatch_backward(T* dx, const T* dxe) {
    ops::gather_rows(xr, dxe, expert_row, recv_total, C);
    exchange_rows(xr, xs, /*forward=*/false);
    ops::permute_backward(dx, xs, send_pos, N, k, C, false);
  }

 private:
  // Row counts per (expert, choice) go to the expert's rank; afterwards both sides know every split.
  void exchange_counts() {
    const size_t per = (size_t)El * k;
    if (W == 1) {
      recv_bucket = send_bucket;
    } else {
      comm->all_to_all(send_bucket.data(), recv_bucket.data(), per, DType::i64, nullptr);
    }
    send_rows.assign(W, 0), recv_rows.assign(W, 0), send_off.assign(W, 0), recv_off.assign(W, 0);
    for (int r = 0; r < W; r++)
      for (size_t b = 0; b < per; b++) send_rows[r] += send_bucket[r * per + b], recv_rows[r] += recv_bucket[r * per + b];
    for (int r = 1; r < W; r++)
      send_off[r] = send_off[r - 1] + send_rows[r - 1], recv_off[r] = recv_off[r - 1] + recv_rows[r - 1];
    recv_total = (int64_t)(recv_off[W - 1] + recv_rows[W - 1]);
    if (fixed) {  // every (source, expert) slot is `capacity` rows, whatever it holds
      for (int r = 0; r < W; r++)
        send_rows[r] = recv_rows[r] = (size_t)El * capacity, send_off[r] = recv_off[r] = (size_t)r * El * capacity;
      recv_total = (int64_t)E * capacity;
    }
  }
  // Rows a source kept back in the fixed layout: dropped, counted on the source rank.
  int64_t rows_not_sent() const {
    int64_t n = 0;
    for (int64_t i = 0; i < (int64_t)N * k; i++) n += send_pos[i] < 0;
    return n;
  }
  // forward: source send order -> expert receive order; backward (false): the reverse.
  void exchange_rows(const T* src, T* dst, bool forward) {
    if (W == 1) {
      ops::copy(dst, src, (int64_t)recv_total * C);
      return;
    }
    auto scale = [&](const std::vector<size_t>& v) {
      std::vector<size_t> o(v);
      for (auto& x : o) x *= (size_t)C;
      return o;
    };
    const auto& sr = forward ? send_rows : recv_rows;
    const auto& so = forward ? send_off : recv_off;
    const auto& rr = forward ? recv_rows : send_rows;
    const auto& ro = forward ? recv_off : send_off;
    comm->all_to_all_v(src, scale(sr), scale(so), dst, scale(rr), scale(ro), dtype(), nullptr);
  }
  static DType dtype() { return sizeof(T) == 4 ? DType::f32 : DType::f64; }
};

}  // namespace scmoe
