// The MoE token dispatcher: moves each (token, choice) row to the rank holding its expert and back.
// Experts are placed in contiguous ranges: rank r holds experts [r*El, (r+1)*El), El = E / W.
//   dispatch:  route_sort (source order by expert, choice, token) -> exchange per-(expert, choice) row
//              counts -> All-to-All of the rows -> admit_rows (capacity applied in the single-process
//              order, so drops do not depend on W) -> expert-contiguous input rows
//   combine:   expert outputs back to receive order (dropped rows return zeros) -> reverse All-to-All
//              -> each token sums gate * output over its choices
// Backward runs the same exchanges in the opposite direction. With one rank every exchange is a copy.
// Two exchange layouts give identical results:
//   packed (dropless, and with a capacity unless pipelined): only the rows that exist travel, sizes
//              known after the count exchange; a capacity is applied where the rows arrive;
//   fixed capacity (moe.pipeline_degree > 1): every (source, expert) pair owns `capacity` slot rows,
//              cut into P chunks (Tutel-style pipelining): chunk c's experts run while chunk c+1
//              travels and chunk c-1's outputs travel back. A source sends only its first `capacity`
//              rows per expert: the global admission order visits a source's rows in that same order,
//              so no row that could be admitted is left behind. Only each slot's used prefix travels
//              (packed around a variable-split exchange), not the padding.
// Each exchange is split into begin (post it on the communication stream) and finish (wait for it), so
// the model can compute in between: that is the ScMoE overlap. Without a communication stream every
// exchange runs inline (strictly sequential); results are bit-identical either way.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "core/arena.h"
#include "core/trace.h"
#include "kernels/ops.h"

namespace scmoe {

template <class T>
struct Dispatcher {
  int N = 0, k = 1, C = 0, E = 0, W = 1, rank = 0, El = 0, layer = 0;
  int64_t capacity = 0;
  bool fixed = false;            // fixed-capacity layout (see above)
  int P = 1;                     // chunks (fixed layout only)
  int64_t chunk_rows = 0;        // slot rows per chunk (fixed layout)
  Communicator* comm = nullptr;  // null or world 1: local copies
  Stream* stream = nullptr;      // communication stream; null: exchanges run inline
  SimulatedLink local_link;      // single process: delay local "exchanges" as this link would
  // Timing of the last forward+backward (ms): time exchanges took, and time the compute thread waited.
  // exchange_ms: per exchange (dispatch, combine, combine grad, dispatch grad), accumulated until reset.
  double comm_ms = 0, exposed_ms = 0, exchange_ms[4] = {0, 0, 0, 0};
  // Several ranks: an exchange's time splits into waiting for the slowest rank to arrive (peer_wait_ms,
  // part of comm_ms: load imbalance, not the link) and the transfer; exposed_peer_wait_ms is the part
  // of exposed_ms spent in such waits. Known when the transport reports when every rank had arrived
  // (shared memory), or with measure_peer_wait from a barrier before each exchange; peer_wait_known
  // says whether the figures were measured.
  bool measure_peer_wait = false, peer_wait_known = false;
  double peer_wait_ms = 0, exposed_peer_wait_ms = 0;

  // plan (saved for backward)
  int32_t *send_pos = nullptr, *expert_row = nullptr;
  std::vector<int64_t> send_bucket, recv_bucket;
  std::vector<int64_t> seg_counts, seg_offsets;  // expert buffer segments: chunk c, local expert le at c*El+le
  std::vector<size_t> send_rows, recv_rows, send_off, recv_off;  // per peer, in rows (packed layout)
  int64_t recv_total = 0, dropped = 0;
  // row buffers: send order (source side) and receive order (expert side)
  T *xs = nullptr, *xr = nullptr, *yr = nullptr, *ys = nullptr;

  void setup(int E_, int k_, int C_, Communicator* c) {
    E = E_, k = k_, C = C_, comm = c;
    W = c ? c->world_size() : 1;
    rank = c ? c->rank() : 0;
    El = E / W;
    send_bucket.assign((size_t)E * k, 0), recv_bucket.assign((size_t)W * El * k, 0);
  }
  // capacity_, fixed_ and the chunk count are fixed for the run: they size the buffers.
  void alloc(Arena& a, int N_, int64_t capacity_, bool fixed_, int chunks) {
    N = N_, capacity = capacity_, fixed = fixed_, P = fixed ? chunks : 1;
    chunk_rows = fixed ? std::max<int64_t>(1, (capacity + P - 1) / P) : 0;
    seg_counts.assign((size_t)P * El, 0), seg_offsets.assign((size_t)P * El + 1, 0);
    in_peer_.assign(P, {0.0, 0.0}), out_peer_.assign(P, {0.0, 0.0});  // sized once: tasks write them
    size_t local = (size_t)N * k, worst = local * W;  // packed: every rank may send every row here
    if (fixed) local = worst = (size_t)P * E * chunk_rows;
    send_pos = a.alloc<int32_t>((size_t)N * k);
    expert_row = a.alloc<int32_t>(worst);
    xs = a.alloc<T>(local * C), ys = a.alloc<T>(local * C);
    xr = a.alloc<T>(worst * C), yr = a.alloc<T>(worst * C);
    if (fixed && W > 1) stage_send = a.alloc<T>((size_t)E * chunk_rows * C), stage_recv = a.alloc<T>((size_t)E * chunk_rows * C);
  }
  void reset_timers() {
    comm_ms = exposed_ms = peer_wait_ms = exposed_peer_wait_ms = 0;
    for (double& e : exchange_ms) e = 0;
  }
  // Rows of the expert buffer a chunk's local expert owns: [begin, end).
  int64_t seg_begin(int c, int le) const { return seg_offsets[(size_t)c * El + le]; }
  int64_t seg_end(int c, int le) const { return seg_offsets[(size_t)c * El + le + 1]; }
  int64_t expert_rows(int le) const {
    int64_t n = 0;
    for (int c = 0; c < P; c++) n += seg_end(c, le) - seg_begin(c, le);
    return n;
  }

  // Forward. begin: plan, count exchange, admission (it needs only the counts), rows posted chunk by
  // chunk. Per chunk: dispatch_finish(c) fills the chunk's segments of xe; combine_begin(c) posts
  // their outputs back. combine_finish: y[n] = sum_j gate[n,j] * output of choice j (0 when dropped).
  void dispatch_begin(const T* x, const int32_t* topk_idx) {
    ops::route_sort(topk_idx, N, k, E, send_pos, send_bucket.data());
    if (fixed) ops::fixed_capacity_slots(topk_idx, N, k, E, capacity, chunk_rows, send_pos, send_bucket.data());
    run_blocking([&] { exchange_counts(); });
    if (fixed) {
      dropped = ops::admit_rows_fixed(recv_bucket.data(), W, El, k, capacity, chunk_rows, P, expert_row,
                                      seg_counts.data(), seg_offsets.data()) +
                rows_not_sent();
    } else {
      dropped = ops::admit_rows(recv_bucket.data(), W, El, k, capacity, recv_total, expert_row, seg_counts.data(),
                                seg_offsets.data());
    }
    ops::permute_forward(xs, x, send_pos, N, k, C);
    for (int c = 0; c < P; c++) post(xs, xr, c, /*toward experts=*/true, 0);
  }
  void dispatch_finish(int c, T* xe) { receive_chunk(c, xr, xe); }
  void combine_begin(int c, const T* ye) { return_chunk(c, ye, yr, 1); }
  void combine_finish(T* y, const T* gate) {
    wait_all_returned();
    ops::combine_forward(y, ys, gate, send_pos, N, k, C);
  }
  // Backward, mirrored: dgate at once and the output gradient posted; per chunk: dye filled, then the
  // experts' input gradient posted back; dispatch_backward_finish sums each token's choices into dx.
  void combine_backward_begin(T* dgate, const T* dy, const T* gate) {
    // ys still holds the returned outputs (needed for dgate); reuse xs as the send-order gradient.
    ops::combine_backward(xs, dgate, dy, ys, gate, send_pos, N, k, C);
    for (int c = 0; c < P; c++) post(xs, yr, c, /*toward experts=*/true, 2);
  }
  void combine_backward_finish(int c, T* dye) { receive_chunk(c, yr, dye); }
  void dispatch_backward_begin(int c, const T* dxe) { return_chunk(c, dxe, xr, 3); }
  void dispatch_backward_finish(T* dx) {
    wait_all_returned();
    ops::permute_backward(dx, xs, send_pos, N, k, C, false);
  }

  // Runs a collective in stream order and waits for it (collectives never run on two threads at once).
  template <class F>
  void run_blocking(F&& fn) {
    if (!stream) return fn();
    auto& ev = event(0, true);
    stream->enqueue(fn);
    stream->record(ev);
    spin_until_done(ev);
    stream->synchronize();  // rethrows the collective's error on this thread
  }

 private:
  // Receive-buffer rows of chunk c (send buffers have the same chunk layout): the whole packed buffer
  // when not fixed.
  int64_t chunk_first(int c) const { return fixed ? (int64_t)c * E * chunk_rows : 0; }
  int64_t chunk_size(int) const { return fixed ? (int64_t)E * chunk_rows : recv_total; }

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
    recv_total = fixed ? (int64_t)P * E * chunk_rows : (int64_t)(recv_off[W - 1] + recv_rows[W - 1]);
  }
  // Rows a source kept back in the fixed layout: dropped, counted on the source rank.
  int64_t rows_not_sent() const {
    int64_t n = 0;
    for (int64_t i = 0; i < (int64_t)N * k; i++) n += send_pos[i] < 0;
    return n;
  }

  // Expert side of a chunk: wait for its rows (receive buffer `recv`) and place them in the expert
  // buffer; and the way back: take the chunk's rows from the expert buffer and post them.
  void receive_chunk(int c, const T* recv, T* expert_buf) {
    wait(c, true);
    ops::scatter_rows(expert_buf, recv + chunk_first(c) * C, expert_row + chunk_first(c), chunk_size(c), C);
  }
  void return_chunk(int c, const T* expert_buf, T* recv, int kind) {
    ops::gather_rows(recv + chunk_first(c) * C, expert_buf, expert_row + chunk_first(c), chunk_size(c), C);
    post(recv, recv == yr ? ys : xs, c, /*toward experts=*/false, kind);
  }
  // Source side: every returned chunk is in; an exchange's error surfaces here, on the compute thread.
  void wait_all_returned() {
    for (int c = 0; c < P; c++) wait(c, false);
    if (stream) stream->synchronize();
  }

  // Posts chunk c of an exchange on the communication stream (or runs it now) and times it.
  // toward_experts: source send order -> expert receive order; else the reverse.
  void post(const T* src, T* dst, int c, bool toward_experts, int kind) {
    auto task = [this, src, dst, c, toward_experts, kind] {
      static const char* names[] = {"dispatch", "combine", "combine grad", "dispatch grad"};
      const double t0 = Tracer::now_us();
      double ts = t0;  // when every rank had arrived
      if (measure_peer_wait && W > 1) {
        comm->barrier(nullptr);
        ts = Tracer::now_us();
        peer_wait_ms += (ts - t0) / 1000;
      }
      exchange_rows(src, dst, c, toward_experts);
      const double t1 = Tracer::now_us();
      if (!measure_peer_wait && W > 1 && comm->last_all_arrived_us() >= 0) {
        ts = std::clamp(comm->last_all_arrived_us(), t0, t1);
        peer_wait_ms += (ts - t0) / 1000;
      }
      peer_wait_known = W > 1 && (measure_peer_wait || comm->last_all_arrived_us() >= 0);
      Tracer::get().add(std::string(names[kind]) + " L" + std::to_string(layer) + (P > 1 ? " c" + std::to_string(c) : ""),
                        stream ? 1 : 0, t0, t1);
      comm_ms += (t1 - t0) / 1000, exchange_ms[kind] += (t1 - t0) / 1000;
      peer_window(c, toward_experts) = {t0, ts};
    };
    if (!stream) {
      const double t0 = Tracer::now_us();
      task();  // sequential: all of it is exposed
      exposed_ms += (Tracer::now_us() - t0) / 1000;
      const auto [p0, p1] = peer_window(c, toward_experts);
      exposed_peer_wait_ms += (p1 - p0) / 1000;
      return;
    }
    stream->enqueue(task);
    stream->record(event(c, toward_experts));
  }
  // Blocks the compute thread until chunk c's exchange is done (not the chunks posted after it: that
  // would undo the pipelining); the time blocked is exposed comm. Errors surface in wait_all_returned.
  void wait(int c, bool toward_experts) {
    if (!stream) return;
    const double t0 = Tracer::now_us();
    spin_until_done(event(c, toward_experts));
    const double t1 = Tracer::now_us();
    if (t1 - t0 > 1) Tracer::get().add("wait L" + std::to_string(layer), 0, t0, t1);
    exposed_ms += (t1 - t0) / 1000;
    // The part of this wait during which the exchange was still waiting for a peer to arrive (the
    // event's completion orders the task's writes before this read).
    const auto [p0, p1] = peer_window(c, toward_experts);
    exposed_peer_wait_ms += std::max(0.0, std::min(t1, p1) - std::max(t0, p0)) / 1000;
  }
  // [start, every rank arrived] of the last exchange posted for chunk c in that direction (host us).
  std::pair<double, double>& peer_window(int c, bool toward_experts) {
    return (toward_experts ? in_peer_ : out_peer_)[c];
  }
  std::vector<std::pair<double, double>> in_peer_, out_peer_;
  // One event per chunk and direction, so a chunk's wait does not wait for the chunks behind it.
  Event& event(int c, bool toward_experts) {
    auto& v = toward_experts ? in_events_ : out_events_;
    while ((int)v.size() <= c) v.push_back(make_cpu_event());
    return *v[c];
  }
  std::vector<std::unique_ptr<Event>> in_events_, out_events_;
  // Yield-spin rather than sleep: a sleeping compute thread wakes up behind OpenMP's spinning pool
  // threads on another core (a 2-core step went from 14 to 41 ms); yielding hands the core to the
  // communication thread when it needs it and resumes at once when it is done.
  static void spin_until_done(Event& e) {
    while (!e.query()) std::this_thread::yield();
  }

  // Fixed layout, chunk c: the rows of the (peer p, its local expert le) slot segment that hold data,
  // a prefix of it, as the source side sees them (mine: my rows for p's expert) or as the expert side
  // does (rows from source p for my expert le). send_bucket and recv_bucket share the index layout.
  int64_t used_rows(int c, int p, int le, bool mine) const {
    int64_t u = 0;
    for (int j = 0; j < k; j++) u += (mine ? send_bucket : recv_bucket)[((size_t)p * El + le) * k + j];
    return std::clamp<int64_t>(u - (int64_t)c * chunk_rows, 0, chunk_rows);
  }
  T *stage_send = nullptr, *stage_recv = nullptr;  // fixed layout, several ranks: a chunk's used rows

  void exchange_rows(const T* src, T* dst, int c, bool toward_experts) {
    if (fixed) {  // chunk c: every (peer, expert) segment is chunk_rows long; only its used prefix travels
      if (W == 1) {
        const size_t first = (size_t)chunk_first(c) * C;
        ops::copy(dst + first, src + first, (int64_t)El * chunk_rows * C);
        int64_t used = 0;
        for (int le = 0; le < El; le++) used += used_rows(c, 0, le, true);
        delay_local(size_t(used) * C * sizeof(T));
      } else {
        exchange_fixed_chunk(src, dst, c, toward_experts);
      }
      return;
    }
    if (W == 1) {
      ops::copy(dst, src, (int64_t)recv_total * C);
      delay_local(size_t(recv_total) * C * sizeof(T));
      return;
    }
    auto scale = [&](const std::vector<size_t>& v) {
      std::vector<size_t> o(v);
      for (auto& x : o) x *= (size_t)C;
      return o;
    };
    const auto& sr = toward_experts ? send_rows : recv_rows;
    const auto& so = toward_experts ? send_off : recv_off;
    const auto& rr = toward_experts ? recv_rows : send_rows;
    const auto& ro = toward_experts ? recv_off : send_off;
    comm->all_to_all_v(src, scale(sr), scale(so), dst, scale(rr), scale(ro), dtype(), nullptr);
  }
  // The padding of the fixed layout does not travel: each segment's used prefix is packed into a staging
  // buffer, exchanged with variable splits and put back in place (both sides know every prefix from the
  // count exchange). Rows past a prefix are never read: admission and the combine only touch sent rows.
  void exchange_fixed_chunk(const T* src, T* dst, int c, bool toward_experts) {
    std::vector<size_t> sc(W), so(W), rc(W), ro(W);
    size_t s_at = 0, r_at = 0;
    auto segment = [&](int p, int le) { return (((size_t)c * E + (size_t)p * El + le) * chunk_rows) * C; };
    for (int p = 0; p < W; p++) {
      so[p] = s_at, ro[p] = r_at;
      for (int le = 0; le < El; le++) {
        const size_t ns = (size_t)used_rows(c, p, le, toward_experts) * C;
        if (ns) std::memcpy(stage_send + s_at, src + segment(p, le), ns * sizeof(T));
        s_at += ns, r_at += (size_t)used_rows(c, p, le, !toward_experts) * C;
      }
      sc[p] = s_at - so[p], rc[p] = r_at - ro[p];
    }
    comm->all_to_all_v(stage_send, sc, so, stage_recv, rc, ro, dtype(), nullptr);
    for (int p = 0; p < W; p++) {
      size_t at = ro[p];
      for (int le = 0; le < El; le++) {
        const size_t nr = (size_t)used_rows(c, p, le, !toward_experts) * C;
        if (nr) std::memcpy(dst + segment(p, le), stage_recv + at, nr * sizeof(T));
        at += nr;
      }
    }
  }
  static DType dtype() { return sizeof(T) == 4 ? DType::f32 : DType::f64; }
  // In one process the simulated link carries every routed row, as if the experts lived on another
  // device (with several ranks the communicator applies the link to the bytes sent to other ranks).
  void delay_local(size_t bytes) const {
    if (!local_link.enabled()) return;
    double s = local_link.latency_us * 1e-6 + (local_link.bandwidth_gb_s > 0 ? bytes / (local_link.bandwidth_gb_s * 1e9) : 0);
    std::this_thread::sleep_for(std::chrono::duration<double>(s));
  }
};

}  // namespace scmoe
