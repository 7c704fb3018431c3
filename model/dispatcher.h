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
// Each exchange is split into begin (post it on the communication stream) and finish (wait for it), so
// the model can compute in between: that is the ScMoE overlap. Without a communication stream every
// exchange runs inline (strictly sequential); results are bit-identical either way.
#pragma once
#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>
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
  Communicator* comm = nullptr;  // null or world 1: local copies
  Stream* stream = nullptr;      // communication stream; null: exchanges run inline
  SimulatedLink local_link;      // single process: delay local "exchanges" as this link would
  // Timing of the last forward+backward (ms): time exchanges took, and time the compute thread waited.
  // exchange_ms: per exchange (dispatch, combine, combine grad, dispatch grad), accumulated until reset.
  double comm_ms = 0, exposed_ms = 0, exchange_ms[4] = {0, 0, 0, 0};

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

  void reset_timers() {
    comm_ms = exposed_ms = 0;
    for (double& e : exchange_ms) e = 0;
  }

  // x: [N, C] router input. begin: plan, count exchange, rows posted; finish: xe filled
  // (expert-contiguous, expert_offsets[El] rows).
  void dispatch_begin(const T* x, const int32_t* topk_idx) {
    ops::route_sort(topk_idx, N, k, E, send_pos, send_bucket.data());
    if (fixed) ops::fixed_capacity_slots(topk_idx, N, k, E, capacity, send_pos, send_bucket.data());
    run_blocking([&] { exchange_counts(); });
    ops::permute_forward(xs, x, send_pos, N, k, C);
    post(xs, xr, /*forward=*/true, 0);
  }
  void dispatch_finish(T* xe) {
    wait();
    dropped = ops::admit_rows(recv_bucket.data(), W, El, k, capacity, fixed ? capacity : 0, recv_total, expert_row,
                              expert_counts.data(), expert_offsets.data());
    if (fixed) dropped += rows_not_sent();
    ops::scatter_rows(xe, xr, expert_row, recv_total, C);
  }
  // ye: expert outputs; finish: y[n] = sum_j gate[n,j] * output of choice j (0 when dropped).
  void combine_begin(const T* ye) {
    ops::gather_rows(yr, ye, expert_row, recv_total, C);
    post(yr, ys, /*forward=*/false, 1);
  }
  void combine_finish(T* y, const T* gate) {
    wait();
    ops::combine_forward(y, ys, gate, send_pos, N, k, C);
  }
  // Backward of combine: dgate now, dye (expert-contiguous) at finish.
  void combine_backward_begin(T* dgate, const T* dy, const T* gate) {
    // ys still holds the returned outputs (needed for dgate); reuse xs as the send-order gradient.
    ops::combine_backward(xs, dgate, dy, ys, gate, send_pos, N, k, C);
    post(xs, yr, /*forward=*/true, 2);
  }
  void combine_backward_finish(T* dye) {
    wait();
    ops::scatter_rows(dye, yr, expert_row, recv_total, C);
  }
  // Backward of dispatch: dx[n] = sum_j gradient of row (n, j) (dropped rows contribute nothing).
  void dispatch_backward_begin(const T* dxe) {
    ops::gather_rows(xr, dxe, expert_row, recv_total, C);
    post(xr, xs, /*forward=*/false, 3);
  }
  void dispatch_backward_finish(T* dx) {
    wait();
    ops::permute_backward(dx, xs, send_pos, N, k, C, false);
  }

  // Runs a collective in stream order and waits for it (collectives never run on two threads at once).
  template <class F>
  void run_blocking(F&& fn) {
    if (!stream) return fn();
    if (!event) event = make_cpu_event();
    stream->enqueue(fn);
    stream->record(*event);
    spin_until_done();
    stream->synchronize();  // rethrows the collective's error on this thread
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
  // Posts an exchange on the communication stream (or runs it now) and times it.
  void post(const T* src, T* dst, bool forward, int kind) {
    auto task = [this, src, dst, forward, kind] {
      static const char* names[] = {"dispatch", "combine", "combine grad", "dispatch grad"};
      const double t0 = Tracer::now_us();
      exchange_rows(src, dst, forward);
      const double t1 = Tracer::now_us();
      Tracer::get().add(std::string(names[kind]) + " L" + std::to_string(layer), stream ? 1 : 0, t0, t1);
      comm_ms += (t1 - t0) / 1000, exchange_ms[kind] += (t1 - t0) / 1000;
    };
    if (!stream) {
      auto t0 = std::chrono::steady_clock::now();
      task();  // sequential: all of it is exposed
      exposed_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      return;
    }
    if (!event) event = make_cpu_event();
    stream->enqueue(task);
    stream->record(*event);
  }
  // Blocks the compute thread until the posted exchange is done; the time blocked is exposed comm.
  void wait() {
    if (!stream) return;
    const double t0 = Tracer::now_us();
    spin_until_done();
    stream->synchronize();  // rethrows an exchange's error here, on the compute thread
    const double t1 = Tracer::now_us();
    if (t1 - t0 > 1) Tracer::get().add("wait L" + std::to_string(layer), 0, t0, t1);
    exposed_ms += (t1 - t0) / 1000;
  }
  std::unique_ptr<Event> event;
  // Yield-spin rather than sleep: a sleeping compute thread wakes up behind OpenMP's spinning pool
  // threads on another core (a 2-core step went from 14 to 41 ms); yielding hands the core to the
  // communication thread when it needs it and resumes at once when it is done.
  void spin_until_done() {
    while (!event->query()) std::this_thread::yield();
  }

  // forward: source send order -> expert receive order; backward (false): the reverse.
  void exchange_rows(const T* src, T* dst, bool forward) {
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
    const auto& sr = forward ? send_rows : recv_rows;
    const auto& so = forward ? send_off : recv_off;
    const auto& rr = forward ? recv_rows : send_rows;
    const auto& ro = forward ? recv_off : send_off;
    comm->all_to_all_v(src, scale(sr), scale(so), dst, scale(rr), scale(ro), dtype(), nullptr);
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
