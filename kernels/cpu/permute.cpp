// CPU reference for MoE token dispatch (see permute.h): the capacity plan, and the permute / combine
// copies. Every parallel loop is over tokens and each kept row belongs to exactly one (token, choice),
// so all writes are disjoint and results do not depend on the thread count.
#include "kernels/cpu/permute.h"

#include <algorithm>
#include <climits>
#include <vector>

#include "core/check.h"

namespace scmoe::cpu {

void route_sort(const int32_t* topk_idx, int N, int k, int E, int32_t* send_pos, int64_t* bucket) {
  SCMOE_CHECK((int64_t)N * k <= INT32_MAX, "route_sort: N*k = " << (int64_t)N * k << " rows do not fit int32");
  for (int b = 0; b < E * k; b++) bucket[b] = 0;
  for (int64_t i = 0; i < (int64_t)N * k; i++) {
    int32_t e = topk_idx[i];
    SCMOE_CHECK(e >= 0 && e < E, "route_sort: token " << i / k << " choice " << i % k << " routes to expert " << e
                                                       << ", outside [0, " << E << ")");
    bucket[(int64_t)e * k + i % k]++;
  }
  // Counting sort: a stable pass in token order within each (expert, choice) bucket.
  std::vector<int64_t> next(E * k);
  int64_t acc = 0;
  for (int b = 0; b < E * k; b++) next[b] = acc, acc += bucket[b];
  for (int64_t i = 0; i < (int64_t)N * k; i++) send_pos[i] = (int32_t)next[(int64_t)topk_idx[i] * k + i % k]++;
}

int64_t admit_rows(const int64_t* recv_bucket, int W, int El, int k, int64_t capacity, int64_t recv_rows,
                   int32_t* expert_row, int64_t* expert_counts, int64_t* expert_offsets) {
  SCMOE_CHECK(capacity >= 0, "admit_rows: negative capacity " << capacity << " (use N*k for dropless)");
  // First row of each (source, expert, choice) block in the receive buffer.
  std::vector<int64_t> start((size_t)W * El * k);
  int64_t acc = 0;
  for (size_t b = 0; b < start.size(); b++) start[b] = acc, acc += recv_bucket[b];
  SCMOE_CHECK(acc == recv_rows, "admit_rows: counts say " << acc << " rows, buffer has " << recv_rows);
  for (int le = 0; le < El; le++) expert_counts[le] = 0;
  // Serial, in the single-process fill order; slots first, made global once offsets are known.
  int64_t dropped = 0;
  for (int le = 0; le < El; le++)
    for (int j = 0; j < k; j++)
      for (int r = 0; r < W; r++) {
        size_t b = ((size_t)r * El + le) * k + j;
        for (int64_t i = 0; i < recv_bucket[b]; i++) {
          if (expert_counts[le] < capacity) {
            expert_row[start[b] + i] = (int32_t)expert_counts[le]++;
          } else {
            expert_row[start[b] + i] = -1;
            dropped++;
          }
        }
      }
  expert_offsets[0] = 0;
  for (int le = 0; le < El; le++) expert_offsets[le + 1] = expert_offsets[le] + expert_counts[le];
  for (size_t b = 0; b < start.size(); b++) {
    int le = int(b / k) % El;
    for (int64_t i = 0; i < recv_bucket[b]; i++)
      if (expert_row[start[b] + i] >= 0) expert_row[start[b] + i] += (int32_t)expert_offsets[le];
  }
  return dropped;
}

int64_t admit_rows_fixed(const int64_t* recv_bucket, int W, int El, int k, int64_t capacity, int64_t chunk_rows,
                         int P, int32_t* expert_row, int64_t* seg_counts, int64_t* seg_offsets) {
  SCMOE_CHECK(capacity >= 0 && chunk_rows * P >= capacity, "admit_rows_fixed: chunks do not cover the capacity");
  const int64_t recv_rows = (int64_t)P * W * El * chunk_rows;
  for (int64_t i = 0; i < recv_rows; i++) expert_row[i] = -1;  // padding stays -1
  for (int s = 0; s < P * El; s++) seg_counts[s] = 0;
  // Admission order as in admit_rows; each admitted row remembers its receive row and segment.
  struct Admitted {
    int64_t recv_row;
    int seg;
  };
  std::vector<Admitted> admitted;
  std::vector<int64_t> taken(El, 0);
  int64_t dropped = 0;
  for (int le = 0; le < El; le++)
    for (int j = 0; j < k; j++)
      for (int r = 0; r < W; r++) {
        int64_t before = 0;  // rows of (r, le) for earlier choices: where this block starts in the slot
        for (int jj = 0; jj < j; jj++) before += recv_bucket[((size_t)r * El + le) * k + jj];
        const int64_t n = recv_bucket[((size_t)r * El + le) * k + j];
        SCMOE_CHECK(before + n <= capacity, "admit_rows_fixed: a slot holds more than the capacity");
        for (int64_t t = 0; t < n; t++) {
          const int64_t i = before + t, c = i / chunk_rows;
          const int64_t row = ((c * W + r) * El + le) * chunk_rows + (i - c * chunk_rows);
          if (taken[le] < capacity) {
            taken[le]++;
            admitted.push_back({row, int(c * El + le)});
            seg_counts[c * El + le]++;
          } else {
            dropped++;
          }
        }
      }
  // Segments of a fixed size (what a segment can admit), so that a device can run every expert on
  // all of its segment's rows without reading the counts.
  const int64_t seg = fixed_segment_rows(W, capacity, chunk_rows);
  for (int s = 0; s <= P * El; s++) seg_offsets[s] = s * seg;
  std::vector<int64_t> next(seg_offsets, seg_offsets + P * El);
  for (const Admitted& a : admitted) expert_row[a.recv_row] = (int32_t)next[a.seg]++;
  return dropped;
}

void fixed_capacity_slots(const int32_t* topk_idx, int N, int k, int E, int64_t capacity, int64_t chunk_rows,
                          int32_t* send_pos, int64_t* bucket) {
  SCMOE_CHECK(chunk_rows > 0, "fixed_capacity_slots: chunk_rows must be positive");
  // Packed start of each (expert, choice) block, and how many rows of the expert come before it.
  std::vector<int64_t> start((size_t)E * k), before((size_t)E * k);
  int64_t acc = 0;
  for (int e = 0; e < E; e++) {
    int64_t in_expert = 0;
    for (int j = 0; j < k; j++) {
      size_t b = (size_t)e * k + j;
      start[b] = acc, before[b] = in_expert;
      acc += bucket[b], in_expert += bucket[b];
    }
  }
  for (int64_t i = 0; i < (int64_t)N * k; i++) {
    size_t b = (size_t)topk_idx[i] * k + i % k;
    int64_t slot = before[b] + (send_pos[i] - start[b]), c = slot / chunk_rows;
    send_pos[i] = slot < capacity ? (int32_t)((c * E + topk_idx[i]) * chunk_rows + slot - c * chunk_rows) : -1;
  }
  for (size_t b = 0; b < start.size(); b++)
    bucket[b] = std::max<int64_t>(0, std::min(bucket[b], capacity - before[b]));
}

template <class T>
void scatter_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; i++) {
    if (map[i] < 0) continue;
    T* d = dst + (int64_t)map[i] * C;
    const T* s = src + i * C;
    for (int c = 0; c < C; c++) d[c] = s[c];
  }
}

template <class T>
void gather_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; i++) {
    T* d = dst + i * C;
    if (map[i] < 0) {
      for (int c = 0; c < C; c++) d[c] = T(0);
      continue;
    }
    const T* s = src + (int64_t)map[i] * C;
    for (int c = 0; c < C; c++) d[c] = s[c];
  }
}

int64_t dispatch_plan(const int32_t* topk_idx, int N, int k, int E, int64_t capacity, int32_t* pos,
                      int64_t* counts, int64_t* offsets) {
  std::vector<int32_t> send_pos((size_t)N * k), expert_row((size_t)N * k);
  std::vector<int64_t> bucket((size_t)E * k);
  route_sort(topk_idx, N, k, E, send_pos.data(), bucket.data());
  int64_t dropped =
      admit_rows(bucket.data(), 1, E, k, capacity, (int64_t)N * k, expert_row.data(), counts, offsets);
  for (int64_t i = 0; i < (int64_t)N * k; i++) pos[i] = expert_row[send_pos[i]];
  return dropped;
}

template <class T>
void permute_forward(T* xe, const T* x, const int32_t* pos, int N, int k, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const T* src = x + (int64_t)n * C;
    for (int j = 0; j < k; j++) {
      int32_t r = pos[(int64_t)n * k + j];
      if (r < 0) continue;
      T* dst = xe + (int64_t)r * C;
      for (int c = 0; c < C; c++) dst[c] = src[c];
    }
  }
}

template <class T>
void permute_backward(T* dx, const T* dxe, const int32_t* pos, int N, int k, int C, bool accumulate) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    T* d = dx + (int64_t)n * C;
    if (!accumulate)
      for (int c = 0; c < C; c++) d[c] = T(0);
    for (int j = 0; j < k; j++) {  // choices summed in order j: a fixed order per token
      int32_t r = pos[(int64_t)n * k + j];
      if (r < 0) continue;
      const T* g = dxe + (int64_t)r * C;
      for (int c = 0; c < C; c++) d[c] += g[c];
    }
  }
}

template <class T>
void combine_forward(T* y, const T* ye, const T* gate, const int32_t* pos, int N, int k, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    T* o = y + (int64_t)n * C;
    for (int c = 0; c < C; c++) o[c] = T(0);  // a token with every choice dropped gets 0 (residual only)
    for (int j = 0; j < k; j++) {
      int32_t r = pos[(int64_t)n * k + j];
      if (r < 0) continue;
      T g = gate[(int64_t)n * k + j];
      const T* src = ye + (int64_t)r * C;
      for (int c = 0; c < C; c++) o[c] += g * src[c];
    }
  }
}

template <class T>
void combine_backward(T* dye, T* dgate, const T* dy, const T* ye, const T* gate, const int32_t* pos, int N,
                      int k, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const T* d = dy + (int64_t)n * C;
    for (int j = 0; j < k; j++) {
      int64_t i = (int64_t)n * k + j;
      int32_t r = pos[i];
      if (r < 0) {
        dgate[i] = T(0);  // a dropped choice did not reach the output
        continue;
      }
      T g = gate[i];
      const T* src = ye + (int64_t)r * C;
      T* dst = dye + (int64_t)r * C;
      double s = 0;
      for (int c = 0; c < C; c++) {
        dst[c] = g * d[c];
        s += double(d[c]) * double(src[c]);
      }
      dgate[i] = T(s);
    }
  }
}

template void scatter_rows<float>(float*, const float*, const int32_t*, int64_t, int);
template void scatter_rows<double>(double*, const double*, const int32_t*, int64_t, int);
template void gather_rows<float>(float*, const float*, const int32_t*, int64_t, int);
template void gather_rows<double>(double*, const double*, const int32_t*, int64_t, int);
template void permute_forward<float>(float*, const float*, const int32_t*, int, int, int);
template void permute_forward<double>(double*, const double*, const int32_t*, int, int, int);
template void permute_backward<float>(float*, const float*, const int32_t*, int, int, int, bool);
template void permute_backward<double>(double*, const double*, const int32_t*, int, int, int, bool);
template void combine_forward<float>(float*, const float*, const float*, const int32_t*, int, int, int);
template void combine_forward<double>(double*, const double*, const double*, const int32_t*, int, int, int);
template void combine_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const int32_t*, int, int, int);
template void combine_backward<double>(double*, double*, const double*, const double*, const double*,
                                       const int32_t*, int, int, int);

}  // namespace scmoe::cpu
