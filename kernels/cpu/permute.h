// Token dispatch by expert: assignment of each (token, choice) to a row of an expert-contiguous
// buffer under a per-expert capacity, and the permute / un-permute copies. Capacity is filled choice
// by choice (every token's first choice before any second choice), tokens in order, so which tokens
// are dropped is deterministic and the most important choices are kept first (GShard/Tutel order).
#pragma once
#include <cstdint>

namespace scmoe::cpu {

// Expert-parallel building blocks (single process = one rank):
// Source side: orders the N*k assignments by (expert, choice, token), so the rows for each destination
// rank (which holds a contiguous range of experts) are contiguous. send_pos[n*k+j] = row in the send
// buffer; bucket[e*k+j] = rows for (expert e, choice j).
void route_sort(const int32_t* topk_idx, int N, int k, int E, int32_t* send_pos, int64_t* bucket);

// Expert side: rows arrive from W source ranks, each block in (local expert, choice, token) order with
// recv_bucket[(r*El + le)*k + j] rows, blocks packed one after the other. Rows are admitted per expert
// in the single-process order (choice-major, then source rank, then token) up to `capacity`, so which
// tokens are dropped does not depend on the number of ranks. expert_row[recv_row] = row in the
// expert-contiguous buffer, or -1 when dropped; expert_counts[El], expert_offsets[El+1]. Returns the
// number dropped.
int64_t admit_rows(const int64_t* recv_bucket, int W, int El, int k, int64_t capacity, int64_t recv_rows,
                   int32_t* expert_row, int64_t* expert_counts, int64_t* expert_offsets);

// Fixed-capacity layout (sizes known in advance, no host synchronisation): every (source, expert) owns
// `capacity` slot rows, cut into P chunks of `chunk_rows` (P * chunk_rows >= capacity) so that the
// exchange can be pipelined chunk by chunk. Buffers are chunk-major: slot row i of (expert e) lives at
// ((c*E + e) * chunk_rows + i - c*chunk_rows) with c = i / chunk_rows, so each chunk is one equal-split
// All-to-All.
// Source side: only the first `capacity` rows of an expert (in (choice, token) order) are sent; later
// ones could never be admitted. Rewrites send_pos (from route_sort) to those rows (or -1) and bucket
// to the rows actually sent per (expert, choice).
void fixed_capacity_slots(const int32_t* topk_idx, int N, int k, int E, int64_t capacity, int64_t chunk_rows,
                          int32_t* send_pos, int64_t* bucket);
// Expert side of that layout: the same admission as admit_rows, with the expert buffer laid out by
// (chunk, local expert) segments of fixed_segment_rows() rows each (segment c*El + le starts at
// seg_offsets[c*El + le] = (c*El + le) * that; its first seg_counts[c*El + le] rows are used, in
// admission order). Every receive row (P*W*El*chunk_rows) gets expert_row (-1 for padding or dropped).
// Returns the number dropped.
inline int64_t fixed_segment_rows(int W, int64_t capacity, int64_t chunk_rows) {
  return capacity < (int64_t)W * chunk_rows ? capacity : (int64_t)W * chunk_rows;
}
int64_t admit_rows_fixed(const int64_t* recv_bucket, int W, int El, int k, int64_t capacity, int64_t chunk_rows,
                         int P, int32_t* expert_row, int64_t* seg_counts, int64_t* seg_offsets);

// dst[map[i]] = src[i] for every map[i] >= 0.
template <class T>
void scatter_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C);
// dst[i] = src[map[i]], or zeros when map[i] < 0 (a dropped row returns nothing).
template <class T>
void gather_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C);

// The single-process plan, route_sort + admit_rows composed: pos[n*k+j] = expert-contiguous row or -1.
// capacity: rows per expert (use N*k for dropless). Writes pos[N*k] (row in the expert buffer, or -1
// when dropped), counts[E] (rows used per expert), offsets[E+1] (exclusive prefix sum of counts).
// Returns the number of dropped assignments.
int64_t dispatch_plan(const int32_t* topk_idx, int N, int k, int E, int64_t capacity, int32_t* pos,
                      int64_t* counts, int64_t* offsets);

// xe[pos[n*k+j]] = x[n] for every kept assignment. xe has offsets[E] rows of C.
template <class T>
void permute_forward(T* xe, const T* x, const int32_t* pos, int N, int k, int C);
// dx[n] (+)= sum_j dxe[pos[n*k+j]] over kept assignments. Parallel over tokens: deterministic.
template <class T>
void permute_backward(T* dx, const T* dxe, const int32_t* pos, int N, int k, int C, bool accumulate);

// y[n] = sum_j gate[n,j] * ye[pos[n*k+j]] (dropped assignments contribute nothing).
template <class T>
void combine_forward(T* y, const T* ye, const T* gate, const int32_t* pos, int N, int k, int C);
// dye[pos] = gate * dy[n] (rows of no assignment untouched: the buffer holds exactly the kept rows);
// dgate[n,j] = dot(dy[n], ye[pos]) or 0 when dropped.
template <class T>
void combine_backward(T* dye, T* dgate, const T* dy, const T* ye, const T* gate, const int32_t* pos, int N,
                      int k, int C);

}  // namespace scmoe::cpu
