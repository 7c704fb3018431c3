// MoE token dispatch on the device (twin of kernels/cpu/permute.h): the capacity plan as a stable
// counting sort (tile histograms, one exclusive scan, ranks within a tile by warp match + per-warp
// counts: no dependence on atomics' order, so results equal the CPU's exactly), and the row copies of
// permute / combine. Row data is T (float or bf16) with fp32 arithmetic; gates are fp32.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

// Plan limits: per-block shared memory holds per-warp counts for every expert (8 warps x E ints) and a
// tile histogram of every (expert, choice) pair (E x k ints).
constexpr int kDispatchMaxExperts = 1024;
constexpr int kDispatchMaxBuckets = 8192;  // E * k

// Scratch bytes for dispatch_plan, route_sort and fixed_capacity_slots (N tokens, k choices, E experts).
size_t dispatch_workspace_bytes(int N, int k, int E);

// The single-process plan (cpu::dispatch_plan): pos[N*k] = row in the expert-contiguous buffer or -1
// when dropped, counts[E] (rows used), offsets[E+1], *dropped = assignments over capacity. Admission is
// choice-major, then token order, `capacity` rows per expert (>= N*k: dropless). An expert index
// outside [0, E) is a caller bug: that assignment gets pos -1, is counted nowhere, and *dropped is set
// to -1 so that the host's read of the drop count reports it.
void dispatch_plan(const int32_t* topk_idx, int N, int k, int E, int64_t capacity, int32_t* pos,
                   int64_t* counts, int64_t* offsets, int64_t* dropped, void* workspace, cudaStream_t stream);

// Source side of expert parallelism (cpu::route_sort): send_pos[n*k+j] = row in (expert, choice, token)
// order, bucket[e*k+j] = rows of (expert e, choice j). Out-of-range experts: send_pos -1, not counted.
void route_sort(const int32_t* topk_idx, int N, int k, int E, int32_t* send_pos, int64_t* bucket,
                void* workspace, cudaStream_t stream);

// cpu::fixed_capacity_slots: rewrites route_sort's send_pos to chunk-major slot rows (or -1 beyond
// `capacity`) and bucket to the rows actually sent per (expert, choice).
void fixed_capacity_slots(const int32_t* topk_idx, int N, int k, int E, int64_t capacity, int64_t chunk_rows,
                          int32_t* send_pos, int64_t* bucket, void* workspace, cudaStream_t stream);

// cpu::admit_rows_fixed (padded segments) on the device, so that no count is read on the host:
// expert_row for every receive row (P*W*El*chunk_rows), seg_counts[P*El]; *dropped = the expert side's
// drops plus the assignments this rank did not send (its send_bucket[E*k] holds what it sent of
// `assignments`). Requires W*k <= kAdmitMaxBlocks.
constexpr int kAdmitMaxBlocks = 1024;
void admit_rows_fixed(const int64_t* recv_bucket, const int64_t* send_bucket, int64_t assignments, int W, int El,
                      int E, int k, int64_t capacity, int64_t chunk_rows, int P, int32_t* expert_row,
                      int64_t* seg_counts, int64_t* dropped, cudaStream_t stream);
// dst[map[i]] = src[i] for every map[i] >= 0 (rows of C).
template <class T>
void scatter_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C, cudaStream_t stream);
// dst[i] = src[map[i]], or zeros when map[i] < 0.
template <class T>
void gather_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C, cudaStream_t stream);

// xe[pos[n*k+j]] = x[n] for every kept assignment.
template <class T>
void permute_forward(T* xe, const T* x, const int32_t* pos, int N, int k, int C, cudaStream_t stream);
// dx[n] (+)= sum_j dxe[pos[n*k+j]], summed in fp32 in choice order (one warp per token: deterministic).
template <class T>
void permute_backward(T* dx, const T* dxe, const int32_t* pos, int N, int k, int C, bool accumulate,
                      cudaStream_t stream);
// y[n] = sum_j gate[n,j] * ye[pos[n*k+j]] over kept assignments (0 when all are dropped).
template <class T>
void combine_forward(T* y, const T* ye, const float* gate, const int32_t* pos, int N, int k, int C,
                     cudaStream_t stream);
// dye[pos] = gate * dy[n] (other rows untouched); dgate[n,j] = dot(dy[n], ye[pos]) or 0 when dropped.
template <class T>
void combine_backward(T* dye, float* dgate, const T* dy, const T* ye, const float* gate, const int32_t* pos,
                      int N, int k, int C, cudaStream_t stream);

SCMOE_CUDA_END
