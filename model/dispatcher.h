// The MoE token dispatcher: moves each (token, choice) row to the rank holding its expert and back,
// written once for both backends. Experts are placed in contiguous ranges: rank r holds experts
// [r*El, (r+1)*El), El = E / W.
//   dispatch:  route_sort (source order by expert, choice, token) -> exchange per-(expert, choice) row
//              counts -> All-to-All of the rows -> admission (capacity applied in the single-process
//              order, so drops do not depend on W) -> expert-contiguous input rows
//   combine:   expert outputs back to receive order (dropped rows return zeros) -> reverse All-to-All
//              -> each token sums gate * output over its choices
// Backward runs the same exchanges in the opposite direction. With one rank every exchange is a copy.
// Two exchange layouts give identical results:
//   packed (dropless; and with a capacity on the CPU unless pipelined): only the rows that exist
//              travel, so the sizes come from the count exchange: the host reads the counts and admits
//              the rows (a device host-synchronises here, once the backbone work that overlaps the
//              dispatch is queued: dispatch_post);
//   fixed capacity (with a capacity on a device; moe.pipeline_degree > 1 on the CPU): every (source,
//              expert) pair owns `capacity` slot rows, cut into P chunks (Tutel-style pipelining: chunk
//              c's experts run while chunk c+1 travels). Sizes are known in advance and admission runs
//              as a kernel, so a device never reads a count: its experts run every row of their
//              fixed-size segments. Where the host knows the counts (the CPU) only each slot's used
//              prefix travels and the experts run only the admitted rows.
// Streams and events (the ScMoE overlap): kernels run on the compute stream; every exchange runs on
// the communication stream (`side`) after waiting on an event recorded when its rows were ready, and
// the compute stream waits on the exchange's event only where it reads what arrived. Both backends
// run this code: on CUDA the waits are cudaStreamWaitEvent, on the CPU the side stream is a worker
// thread and the compute stream waits by blocking its thread. With side == compute everything runs in
// order (comm.overlap false, or nothing to overlap): the sequential reference, bit-identical.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "core/arena.h"
#include "core/trace.h"
#include "kernels/backend_types.h"
#include "kernels/cpu/permute.h"  // the packed layout's admission runs on the host
#include "model/stream_order.h"

namespace scmoe {

template <class B>
struct Dispatcher {
  using T = typename B::T;
  B* k = nullptr;
  int N = 0, kc = 1, C = 0, E = 0, W = 1, rank = 0, El = 0, layer = 0;
  int64_t capacity = 0;
  bool fixed = false;            // fixed-capacity layout (see above)
  bool counts_on_host = true;    // the host knows the counts: packed layout, or a backend in host memory
  int P = 1;                     // chunks (fixed layout only)
  int64_t chunk_rows = 0;        // slot rows per chunk (fixed layout)
  int64_t seg_rows = 0;          // rows of an expert's segment per chunk (fixed layout)
  Communicator* comm = nullptr;  // null or world 1: local copies
  Stream* compute = nullptr;
  Stream* side = nullptr;        // the communication stream (== compute: sequential)
  WaitCounter* order = nullptr;
  Timeline<B>* timeline = nullptr;
  SimulatedLink local_link;      // single process: delay local "exchanges" as this link would
  bool measure_peer_wait = false;

  // Timing of the exchanges since the last reset (ms): time they took, and time the compute stream
  // waited for them. exchange_ms per kind (dispatch, combine, combine grad, dispatch grad).
  double comm_ms = 0, exposed_ms = 0, exchange_ms[4] = {0, 0, 0, 0};
  // Several ranks over a host transport: an exchange's time splits into waiting for the slowest rank
  // to arrive (peer_wait_ms, part of comm_ms: load imbalance, not the link) and the transfer;
  // exposed_peer_wait_ms is the part of exposed_ms spent in such waits. Known when the transport
  // reports when every rank had arrived (shared memory), or with measure_peer_wait from a barrier
  // before each exchange.
  bool peer_wait_known = false;
  double peer_wait_ms = 0, exposed_peer_wait_ms = 0;

  // plan (saved for backward). Device buffers (host memory on the CPU):
  int32_t *send_pos = nullptr, *expert_row = nullptr;
  int64_t* buckets = nullptr;     // [2][E*k]: rows this rank sends per (expert, choice); rows it receives
  int64_t* seg_counts_dev = nullptr;  // fixed layout: admitted rows per (chunk, local expert)
  int64_t* dropped_dev = nullptr;
  T *xs = nullptr, *xr = nullptr, *yr = nullptr, *ys = nullptr;  // send order, receive order
  T *stage_send = nullptr, *stage_recv = nullptr;  // host-known fixed layout: a chunk's used rows
  double* stats_buf = nullptr;    // the router's statistics, all-reduced on the side stream
  // host copies
  std::vector<int64_t> host_buckets, seg_counts, seg_offsets;
  std::vector<int32_t> host_expert_row;
  std::vector<size_t> send_rows, recv_rows, send_off, recv_off;  // per peer, in rows (packed layout)
  int64_t recv_total = 0, dropped = 0;

  void setup(B& kernels, int E_, int k_, int C_, Communicator* c, int layer_) {
    k = &kernels, E = E_, kc = k_, C = C_, comm = c, layer = layer_;
    W = c ? c->world_size() : 1;
    rank = c ? c->rank() : 0;
    El = E / W;
  }
  // capacity_, fixed_ and the chunk count are fixed for the run: they size the buffers.
  void alloc(Arena& a, int N_, int64_t capacity_, bool fixed_, int chunks) {
    N = N_, capacity = capacity_, fixed = fixed_, P = fixed ? chunks : 1;
    counts_on_host = !fixed || B::kHostMemory;
    chunk_rows = fixed ? std::max<int64_t>(1, (capacity + P - 1) / P) : 0;
    seg_rows = fixed ? std::min<int64_t>(capacity, int64_t(W) * chunk_rows) : 0;
    seg_counts.assign((size_t)P * El, 0), seg_offsets.assign((size_t)P * El + 1, 0);
    host_buckets.assign(2 * (size_t)E * kc, 0);
    size_t local = (size_t)N * kc, worst = local * W;  // packed: every rank may send every row here
    if (fixed) local = worst = (size_t)P * E * chunk_rows;
    send_pos = a.alloc<int32_t>((size_t)N * kc);
    expert_row = a.alloc<int32_t>(worst);
    buckets = a.alloc<int64_t>(2 * (size_t)E * kc);
    seg_counts_dev = a.alloc<int64_t>((size_t)P * El);
    dropped_dev = a.alloc<int64_t>(1);
    stats_buf = a.alloc<double>((size_t)router_stats_size(E));
    xs = a.alloc<T>(local * C), ys = a.alloc<T>(local * C);
    xr = a.alloc<T>(worst * C), yr = a.alloc<T>(worst * C);
    if (fixed && counts_on_host && W > 1)
      stage_send = a.alloc<T>((size_t)E * chunk_rows * C), stage_recv = a.alloc<T>((size_t)E * chunk_rows * C);
  }
  // Rows of the expert buffer (what the local experts can admit).
  size_t expert_buffer_rows() const {
    if (fixed) return size_t(P) * El * seg_rows;
    return std::min<size_t>((size_t)N * kc * W, size_t(El) * size_t(std::max<int64_t>(capacity, 0)));
  }
  void reset_timers() {
    comm_ms = exposed_ms = peer_wait_ms = exposed_peer_wait_ms = 0;
    for (double& e : exchange_ms) e = 0;
  }
  // The rows chunk c's local experts run: the admitted ones where the host knows them, else every row
  // of their segments (buffers then start at first_row(c)).
  GroupRows expert_rows(int c) const {
    GroupRows g;
    g.groups = El;
    if (counts_on_host) {
      g.begin = seg_offsets.data() + (size_t)c * El, g.count = seg_counts.data() + (size_t)c * El;
    } else {
      g.rows = seg_rows;
    }
    return g;
  }
  int64_t first_row(int c) const { return counts_on_host ? 0 : int64_t(c) * El * seg_rows; }
  // Admitted rows of local expert le in the last forward, and drops (this rank's share): host reads.
  std::vector<int64_t> read_expert_rows() {
    if (!counts_on_host) k->download(seg_counts.data(), seg_counts_dev, seg_counts.size());
    std::vector<int64_t> rows(El, 0);
    for (int c = 0; c < P; c++)
      for (int le = 0; le < El; le++) rows[le] += seg_counts[(size_t)c * El + le];
    return rows;
  }
  int64_t read_dropped() {
    if (fixed) k->download(&dropped, dropped_dev, 1);
    return dropped;
  }

  // ---- forward ---------------------------------------------------------------------------------------
  // begin: plan, the count exchange, and the rows posted chunk by chunk as soon as their sizes are known
  // (at once unless a device must read the counts: then at dispatch_post()).
  void dispatch_begin(const T* x, const int32_t* topk_idx) {
    k->route_sort(topk_idx, N, kc, E, send_pos, buckets);
    if (fixed) k->fixed_capacity_slots(topk_idx, N, kc, E, capacity, chunk_rows, send_pos, buckets);
    k->permute_forward(xs, x, send_pos, N, kc, C);
    // The side stream starts from the compute stream's plan and rows: the count exchange (several
    // ranks), or the rows themselves when they go now. A device that reads the counts first posts the
    // rows after a host wait on the compute stream's copy of them, which orders them already.
    const bool post_now = !counts_on_host || B::kHostMemory;
    if (W > 1 || post_now) {
      compute->record(ev(routed_));
      order->wait(*side, *compute, ev(routed_));
    }
    exchange_counts();
    posted_ = false;
    if (!counts_on_host) return post_rows();  // fixed sizes: nothing to read
    if (B::kHostMemory) {                     // reading the counts costs nothing here
      read_counts();
      post_rows();
    }
  }
  // A device reads the counts (waiting for the count exchange) and posts the rows; called by the
  // schedule after the backbone work that overlaps the dispatch has been queued. No-op once posted.
  void dispatch_post() {
    if (posted_) return;
    read_counts();
    post_rows();
  }
  // Expert side, chunk c: wait for its rows and place them in the expert buffer.
  void dispatch_finish(int c, T* xe) {
    dispatch_post();
    wait_on_side(ev(in_, c));
    if (c == 0 && fixed) admit_fixed();
    k->scatter_rows(xe, xr + chunk_first(c) * C, expert_row + chunk_first(c), chunk_size(c), C);
  }
  void combine_begin(int c, const T* ye) { return_chunk(c, ye, yr, ys, 1); }
  // y[n] = sum_j gate[n,j] * output of choice j (0 when dropped).
  void combine_finish(T* y, const typename B::S* gate) {
    wait_on_side(ev(returned_));
    k->combine_forward(y, ys, gate, send_pos, N, kc, C);
  }

  // ---- backward (mirrored) ---------------------------------------------------------------------------
  void combine_backward_begin(typename B::S* dgate, const T* dy, const typename B::S* gate) {
    // ys still holds the returned outputs (needed for dgate); xs becomes the send-order gradient.
    k->combine_backward(xs, dgate, dy, ys, gate, send_pos, N, kc, C);
    compute->record(ev(routed_));
    order->wait(*side, *compute, ev(routed_));
    for (int c = 0; c < P; c++) exchange(2, c, xs, yr, true);
  }
  void combine_backward_finish(int c, T* dye) {
    wait_on_side(ev(in_, c));
    // Rows a device runs without knowing they are padding must carry a zero gradient.
    if (c == 0 && !counts_on_host) k->zero(dye, expert_buffer_rows() * C);
    k->scatter_rows(dye, yr + chunk_first(c) * C, expert_row + chunk_first(c), chunk_size(c), C);
  }
  void dispatch_backward_begin(int c, const T* dxe) { return_chunk(c, dxe, xr, xs, 3); }
  void dispatch_backward_finish(T* dx) {
    wait_on_side(ev(returned_));
    k->permute_backward(dx, xs, send_pos, N, kc, C, false);
  }

  // The router's statistics summed over ranks, on the side stream after the rows' plan (the compute
  // stream reads them only after waiting for the combine, which follows on that stream).
  void post_stats_all_reduce() {
    const size_t n = (size_t)router_stats_size(E);
    if (W == 1) return;
    if (host_task()) side->enqueue([this, n] { comm->all_reduce_sum(stats_buf, n, DType::f64, nullptr); });
    else comm->all_reduce_sum(stats_buf, n, DType::f64, side);
  }

  // After the streams are synchronised: the exchanges' times from the timeline's events.
  void collect_timings() {
    static const char* names[] = {"dispatch", "combine", "combine grad", "dispatch grad"};
    const bool overlapped = side != compute;
    for (const Span& s : spans_) {
      if (s.kind >= 0) {
        const double ms = Timeline<B>::ms(s.begin, s.end);
        comm_ms += ms, exchange_ms[s.kind] += ms;
        const double peer = (s.peer->at - s.peer->from) / 1000;
        peer_wait_ms += peer;
        if (!overlapped) exposed_ms += ms, exposed_peer_wait_ms += peer;
        if (Tracer::get().on())
          Tracer::get().add(std::string(names[s.kind]) + " L" + std::to_string(layer) +
                                (P > 1 ? " c" + std::to_string(s.chunk) : ""),
                            overlapped ? 1 : 0, timeline->host_us(s.begin), timeline->host_us(s.end));
      } else {  // the compute stream waiting for exchange s.waited_for
        const double ms = Timeline<B>::ms(s.begin, s.end);
        exposed_ms += ms;
        const double t0 = timeline->host_us(s.begin), t1 = timeline->host_us(s.end);
        if (s.waited_for >= 0) {
          const Span& x = spans_[s.waited_for];
          exposed_peer_wait_ms += std::max(0.0, std::min(t1, x.peer->at) - std::max(t0, x.peer->from)) / 1000;
        }
        if (Tracer::get().on() && ms > 0.001) Tracer::get().add("wait L" + std::to_string(layer), 0, t0, t1);
      }
    }
    spans_.clear();
  }
  void start_step() { spans_.clear(); }

 private:
  // Host us when a host-run exchange began and when every rank had arrived (equal when unknown);
  // written on the side stream, read after the streams are synchronised.
  struct PeerWindow {
    double from = 0, at = 0;
  };
  // A timed exchange (kind >= 0) on the side stream, or a wait of the compute stream (kind -1) for the
  // exchange at spans_[waited_for].
  struct Span {
    int kind = -1, chunk = 0, waited_for = -1;
    Event *begin = nullptr, *end = nullptr;
    std::shared_ptr<PeerWindow> peer = std::make_shared<PeerWindow>();
  };
  std::vector<Span> spans_;
  bool posted_ = false;
  // in_[c]: chunk c arrived on the expert side; returned_: the last chunk came back (re-recorded after
  // each, so waiting on it waits for all); routed_, ready_[c]: the compute stream's rows are ready to go;
  // counts_: the count exchange is done.
  std::vector<std::unique_ptr<Event>> in_, returned_, routed_, ready_, counts_;
  std::vector<int> in_span_;  // the span of the exchange in_[c] marks
  int returned_span_ = -1;    // ... and returned_
  Event& ev(std::vector<std::unique_ptr<Event>>& v, int c = 0) {
    while ((int)v.size() <= c) v.push_back(k->make_event());
    return *v[c];
  }

  // Receive-buffer rows of chunk c (send buffers have the same chunk layout): the whole packed buffer
  // when not fixed.
  int64_t chunk_first(int c) const { return fixed ? (int64_t)c * E * chunk_rows : 0; }
  int64_t chunk_size(int) const { return fixed ? (int64_t)E * chunk_rows : recv_total; }

  // Exchanges run as host work on the side stream (CPU streams, or a host transport such as Gloo or
  // shared memory on emulated device memory), or are issued on it (NCCL, device copies).
  bool host_task() const { return B::kHostMemory || (W > 1 && !comm->issues_on_device()); }

  // The compute stream waits for the last exchange recorded on `e`, timed as exposed communication.
  void wait_on_side(Event& e) {
    if (side == compute) return;
    Span s;
    s.waited_for = &e == &ev(returned_) ? returned_span_ : -1;
    for (size_t c = 0; c < in_.size(); c++)
      if (in_[c].get() == &e) s.waited_for = in_span_[c];
    s.begin = timeline->mark(*compute);
    order->wait(*compute, *side, e);
    s.end = timeline->mark(*compute);
    spans_.push_back(s);
  }

  // Row counts per (expert, choice) go to the expert's rank: buckets[0..E*k) -> buckets[E*k..2*E*k).
  void exchange_counts() {
    post_stats_all_reduce();
    const size_t per = (size_t)El * kc;
    int64_t* send = buckets;
    int64_t* recv = buckets + (size_t)E * kc;
    if (W == 1) {  // on the compute stream: the host and the admission kernel read it there
      k->copy_on(host_task() ? nullptr : compute, recv, send, per * sizeof(int64_t));
      return;
    }
    if (host_task()) side->enqueue([=] { comm->all_to_all(send, recv, per, DType::i64, nullptr); });
    else comm->all_to_all(send, recv, per, DType::i64, side);
    side->record(ev(counts_));
  }
  // The host learns every split: waits for the count exchange, reads both halves, and (packed layout)
  // admits the rows in the single-process order.
  void read_counts() {
    if (W > 1) k->host_wait(ev(counts_), *side);
    k->download(host_buckets.data(), buckets, host_buckets.size());
    const int64_t* send_bucket = host_buckets.data();
    const int64_t* recv_bucket = host_buckets.data() + (size_t)E * kc;
    const size_t per = (size_t)El * kc;
    send_rows.assign(W, 0), recv_rows.assign(W, 0), send_off.assign(W, 0), recv_off.assign(W, 0);
    for (int r = 0; r < W; r++)
      for (size_t b = 0; b < per; b++) send_rows[r] += send_bucket[r * per + b], recv_rows[r] += recv_bucket[r * per + b];
    for (int r = 1; r < W; r++)
      send_off[r] = send_off[r - 1] + send_rows[r - 1], recv_off[r] = recv_off[r - 1] + recv_rows[r - 1];
    if (fixed) {
      recv_total = (int64_t)P * E * chunk_rows;
      return;  // admission runs as a kernel once the rows have arrived (dispatch_finish)
    }
    recv_total = (int64_t)(recv_off[W - 1] + recv_rows[W - 1]);
    host_expert_row.resize(std::max<int64_t>(recv_total, 1));
    dropped = cpu::admit_rows(recv_bucket, W, El, kc, capacity, recv_total, host_expert_row.data(), seg_counts.data(),
                              seg_offsets.data());
    k->upload(expert_row, host_expert_row.data(), recv_total);
  }
  // The fixed layout's admission, on the compute stream; where the host knows the counts it reads the
  // segment sizes (the CPU: its own memory).
  void admit_fixed() {
    k->admit_rows_fixed(buckets + (size_t)E * kc, buckets, (int64_t)N * kc, W, El, E, kc, capacity, chunk_rows, P,
                        expert_row, seg_counts_dev, dropped_dev);
    if (!counts_on_host) return;
    k->download(seg_counts.data(), seg_counts_dev, seg_counts.size());
    k->download(&dropped, dropped_dev, 1);
    for (int s = 0; s <= P * El; s++) seg_offsets[s] = s * seg_rows;
  }
  void post_rows() {
    posted_ = true;
    for (int c = 0; c < P; c++) exchange(0, c, xs, xr, true);
  }
  // The way back for chunk c: gather the expert buffer's rows into receive order, then post them.
  void return_chunk(int c, const T* expert_buf, T* recv, T* dst, int kind) {
    k->gather_rows(recv + chunk_first(c) * C, expert_buf, expert_row + chunk_first(c), chunk_size(c), C);
    compute->record(ev(ready_, c));
    order->wait(*side, *compute, ev(ready_, c));
    exchange(kind, c, recv, dst, false);
  }

  // Posts chunk c of an exchange on the side stream, timed by events around it; its completion is
  // recorded on the chunk's event in that direction. toward_experts: source send order -> expert
  // receive order; else the reverse.
  void exchange(int kind, int c, const T* src, T* dst, bool toward_experts) {
    const size_t at = spans_.size();
    spans_.push_back(Span{});
    spans_[at].kind = kind, spans_[at].chunk = c;
    spans_[at].begin = timeline->mark(*side);
    if (host_task()) {
      side->enqueue([this, peer = spans_[at].peer, src, dst, c, toward_experts] {
        const double t0 = Tracer::now_us();
        double ts = t0;  // when every rank had arrived
        if (measure_peer_wait && W > 1) {
          comm->barrier(nullptr);
          ts = Tracer::now_us();
        }
        exchange_rows(src, dst, c, toward_experts, nullptr);
        const double t1 = Tracer::now_us();
        if (!measure_peer_wait && W > 1 && comm->last_all_arrived_us() >= 0)
          ts = std::clamp(comm->last_all_arrived_us(), t0, t1);
        peer_wait_known = W > 1 && (measure_peer_wait || comm->last_all_arrived_us() >= 0);
        peer->from = t0, peer->at = ts;  // read after the streams are synchronised
      });
    } else {
      exchange_rows(src, dst, c, toward_experts, side);
    }
    spans_[at].end = timeline->mark(*side);
    if (toward_experts) {
      side->record(ev(in_, c));
      if ((int)in_span_.size() <= c) in_span_.resize(c + 1, -1);
      in_span_[c] = int(at);
    } else {
      side->record(ev(returned_));
      returned_span_ = int(at);
    }
  }
  // The exchange itself, on stream s (null: now, on this thread).
  void exchange_rows(const T* src, T* dst, int c, bool toward_experts, Stream* s) {
    const size_t row_bytes = size_t(C) * sizeof(T);
    if (fixed) {  // chunk c: every (peer, expert) segment is chunk_rows long
      const size_t first = (size_t)chunk_first(c) * C;
      if (W == 1) {  // the link's time first: the rows arrive when the transfer ends
        int64_t used = 0;
        for (int le = 0; le < El; le++) used += counts_on_host ? used_rows(c, 0, le, true) : chunk_rows;
        delay_local(size_t(used) * row_bytes, s);
        return k->copy_on(s, dst + first, src + first, (size_t)El * chunk_rows * row_bytes);
      }
      if (counts_on_host) return exchange_fixed_chunk(src, dst, c, toward_experts);
      const size_t per = (size_t)El * chunk_rows * row_bytes;
      return comm->all_to_all(src + first, dst + first, per / elem_bytes(), elem_dtype(), s);
    }
    if (W == 1) {
      delay_local(size_t(recv_total) * row_bytes, s);
      return k->copy_on(s, dst, src, size_t(recv_total) * row_bytes);
    }
    auto scale = [&](const std::vector<size_t>& v) {
      std::vector<size_t> o(v);
      for (auto& x : o) x *= row_bytes / elem_bytes();
      return o;
    };
    const auto& sr = toward_experts ? send_rows : recv_rows;
    const auto& so = toward_experts ? send_off : recv_off;
    const auto& rr = toward_experts ? recv_rows : send_rows;
    const auto& ro = toward_experts ? recv_off : send_off;
    comm->all_to_all_v(src, scale(sr), scale(so), dst, scale(rr), scale(ro), elem_dtype(), s);
  }
  // Fixed layout, chunk c: the rows of the (peer p, its local expert le) slot segment that hold data,
  // a prefix of it, as the source side sees them (mine: my rows for p's expert) or as the expert side
  // does (rows from source p for my expert le). Host-known counts only.
  int64_t used_rows(int c, int p, int le, bool mine) const {
    const int64_t* bucket = host_buckets.data() + (mine ? 0 : (size_t)E * kc);
    int64_t u = 0;
    for (int j = 0; j < kc; j++) u += bucket[((size_t)p * El + le) * kc + j];
    return std::clamp<int64_t>(u - (int64_t)c * chunk_rows, 0, chunk_rows);
  }
  // The padding of the fixed layout does not travel where the host knows the counts: each segment's
  // used prefix is packed into a staging buffer, exchanged with variable splits and put back in place
  // (both sides know every prefix from the count exchange). Rows past a prefix are never read:
  // admission and the combine only touch sent rows. Host memory only (runs as host work).
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
    comm->all_to_all_v(stage_send, sc, so, stage_recv, rc, ro, elem_dtype(), nullptr);
    for (int p = 0; p < W; p++) {
      size_t at = ro[p];
      for (int le = 0; le < El; le++) {
        const size_t nr = (size_t)used_rows(c, p, le, !toward_experts) * C;
        if (nr) std::memcpy(dst + segment(p, le), stage_recv + at, nr * sizeof(T));
        at += nr;
      }
    }
  }
  // Row data as the communicators see it: f32 and f64 as such, bf16 as bytes.
  static DType elem_dtype() {
    if (std::is_same<T, float>::value) return DType::f32;
    if (std::is_same<T, double>::value) return DType::f64;
    return DType::u8;
  }
  static size_t elem_bytes() { return dtype_size(elem_dtype()); }
  // In one process the simulated link carries every routed row, as if the experts lived on another
  // device (with several ranks the communicator applies the link to the bytes sent to other ranks).
  void delay_local(size_t bytes, Stream* s) const {
    if (!local_link.enabled()) return;
    const double sec =
        local_link.latency_us * 1e-6 + (local_link.bandwidth_gb_s > 0 ? bytes / (local_link.bandwidth_gb_s * 1e9) : 0);
    auto sleep = [sec] { std::this_thread::sleep_for(std::chrono::duration<double>(sec)); };
    if (s) s->enqueue(sleep);
    else sleep();
  }
};

}  // namespace scmoe
