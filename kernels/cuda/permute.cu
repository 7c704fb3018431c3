// Dispatch kernels (see permute.h). The plan is a counting sort over (expert, choice, token):
//  1. per tile of 256 tokens, a histogram of (expert, choice) pairs (bucket-major: hist[b][tile]);
//  2. one block scans that array in place, which yields each (bucket, tile)'s first row in the
//     (expert, choice, token) order, the expert totals, counts, offsets and the drop count;
//  3. per tile, each assignment's rank among the tile's earlier tokens of the same bucket (warp match
//     plus per-warp counts in shared memory), added to its (bucket, tile) start.
// Every step is a fixed function of the indices (no atomics whose order matters), so pos equals the
// CPU's. The row kernels use one warp per row; sums over choices and dot products are fp32 in a
// fixed order.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/permute.h"

SCMOE_CUDA_BEGIN

namespace {
constexpr int kTile = 256;  // tokens per plan block (one per thread)
constexpr int kPlanWarps = kTile / 32;
constexpr int kRowWarps = 8;  // rows per block in the row kernels

// Exclusive scan of one int per thread over the block (blockDim.x a multiple of 32); `total` gets the
// block's sum. `scratch`: 32 ints of shared memory, reusable when this returns.
__device__ __forceinline__ int block_exclusive_scan(int v, int& total, int* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  int x = v;
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) scratch[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int w = lane < nwarps ? scratch[lane] : 0;
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    scratch[lane] = w;
  }
  __syncthreads();
  total = scratch[nwarps - 1];
  const int ex = x - v + (warp > 0 ? scratch[warp - 1] : 0);
  __syncthreads();
  return ex;
}

// In-place exclusive scan of a[0, L) by one block: each thread owns a contiguous run. Returns the sum;
// the trailing barrier makes every thread's rewritten run visible to the whole block.
__device__ __forceinline__ int block_scan_inplace(int* a, int L, int* scratch) {
  const int per = (L + blockDim.x - 1) / blockDim.x;
  const int lo = min(L, int(threadIdx.x) * per), hi = min(L, lo + per);
  int s = 0;
  for (int i = lo; i < hi; i++) s += a[i];
  int total;
  int run = block_exclusive_scan(s, total, scratch);
  for (int i = lo; i < hi; i++) {
    const int v = a[i];
    a[i] = run;
    run += v;
  }
  __syncthreads();
  return total;
}

// Step 1: hist[b * G + tile] = assignments of the tile to bucket b = e*k + j; row E*k counts the
// out-of-range expert indices.
__global__ void __launch_bounds__(kTile)
    plan_count_kernel(const int32_t* idx, int N, int k, int E, int G, int* hist) {
  SCMOE_DYNAMIC_SHARED(int, h);  // E*k + 1
  const int B = E * k;
  for (int b = threadIdx.x; b <= B; b += blockDim.x) h[b] = 0;
  __syncthreads();
  const int64_t n = (int64_t)blockIdx.x * kTile + threadIdx.x;
  if (n < N)
    for (int j = 0; j < k; j++) {
      const int e = idx[n * k + j];
      atomicAdd(&h[e >= 0 && e < E ? e * k + j : B], 1);  // integer counts: order does not matter
    }
  __syncthreads();
  for (int b = threadIdx.x; b <= B; b += blockDim.x) hist[(int64_t)b * G + blockIdx.x] = h[b];
}

// Step 2 (one block): scan, then either route_sort's buckets or the plan's counts / offsets / drops.
__global__ void plan_scan_kernel(int* hist, int G, int E, int k, int64_t capacity, int64_t* counts,
                                 int64_t* offsets, int64_t* dropped, int64_t* bucket) {
  __shared__ int scratch[32];
  const int B = E * k, L = B * G;
  const int all = block_scan_inplace(hist, L, scratch);
  int bad = 0, bad_total;
  for (int t = threadIdx.x; t < G; t += blockDim.x) bad += hist[L + t];
  block_exclusive_scan(bad, bad_total, scratch);
  if (bucket != nullptr)
    for (int b = threadIdx.x; b < B; b += blockDim.x)
      bucket[b] = (b + 1 < B ? hist[(b + 1) * G] : all) - hist[b * G];
  if (counts != nullptr) {
    // Expert e's assignments are hist[e*k*G] .. hist[(e+1)*k*G] in admission order; the first
    // `capacity` are kept. Each thread owns a contiguous run of experts.
    const int per = (E + blockDim.x - 1) / blockDim.x;
    const int lo = min(E, int(threadIdx.x) * per), hi = min(E, lo + per);
    int sum = 0, drop = 0;
    for (int e = lo; e < hi; e++) {
      const int tot = (e + 1 < E ? hist[(e + 1) * k * G] : all) - hist[e * k * G];
      const int cnt = tot < capacity ? tot : (int)capacity;
      counts[e] = cnt;
      sum += cnt, drop += tot - cnt;
    }
    int total, drop_total;
    int run = block_exclusive_scan(sum, total, scratch);
    for (int e = lo; e < hi; e++) {
      offsets[e] = run;
      run += (int)counts[e];  // this thread's own write above
    }
    if (threadIdx.x == 0) offsets[E] = total;
    block_exclusive_scan(drop, drop_total, scratch);
    if (threadIdx.x == 0) *dropped = bad_total > 0 ? -1 : drop_total;
  }
}

// Step 3: out[n*k+j] = the assignment's row in (expert, choice, token) order (route_sort), or with
// `offsets` its row in the expert buffer when within capacity, else -1 (dispatch_plan).
__global__ void __launch_bounds__(kTile)
    plan_place_kernel(const int32_t* idx, int N, int k, int E, int G, const int* scan, int64_t capacity,
                      const int64_t* offsets, int32_t* out) {
  SCMOE_DYNAMIC_SHARED(int, wc);  // [kPlanWarps][E]: this choice's assignments per warp and expert
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t n = (int64_t)blockIdx.x * kTile + threadIdx.x;
  const unsigned lower = (1u << lane) - 1u;
  for (int j = 0; j < k; j++) {
    for (int i = threadIdx.x; i < kPlanWarps * E; i += blockDim.x) wc[i] = 0;
    __syncthreads();
    int e = n < N ? idx[n * k + j] : -1;
    if (e < 0 || e >= E) e = -1;
    // Lanes routing to the same expert; the rank among them is the token order within the warp.
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    int rank = __popc(peers & lower);
    if (e >= 0 && rank == 0) wc[warp * E + e] = __popc(peers);
    __syncthreads();
    if (n < N) {
      int32_t r = -1;
      if (e >= 0) {
        for (int w = 0; w < warp; w++) rank += wc[w * E + e];
        const int g = scan[(int64_t)(e * k + j) * G + blockIdx.x] + rank;
        if (offsets == nullptr) {
          r = g;
        } else {
          const int in_expert = g - scan[(int64_t)e * k * G];
          r = in_expert < capacity ? int32_t(offsets[e] + in_expert) : -1;
        }
      }
      out[n * k + j] = r;
    }
    __syncthreads();  // wc is cleared for the next choice
  }
}

// fixed_capacity_slots, part 1 (one block): packed start of each (expert, choice) block and the rows of
// its expert before it; then the buckets are clipped to what fits under the capacity.
__global__ void slots_prepare_kernel(int E, int k, int64_t capacity, int64_t* bucket, int64_t* start,
                                     int64_t* before) {
  __shared__ int scratch[32];
  const int per = (E + blockDim.x - 1) / blockDim.x;
  const int lo = min(E, int(threadIdx.x) * per), hi = min(E, lo + per);
  int sum = 0;
  for (int e = lo; e < hi; e++)
    for (int j = 0; j < k; j++) sum += (int)bucket[e * k + j];
  int total;
  int64_t run = block_exclusive_scan(sum, total, scratch);
  for (int e = lo; e < hi; e++) {
    int64_t in_expert = 0;
    for (int j = 0; j < k; j++) {
      const int b = e * k + j;
      const int64_t v = bucket[b];
      start[b] = run, before[b] = in_expert;
      const int64_t room = capacity - in_expert;
      bucket[b] = v < room ? v : (room > 0 ? room : 0);
      run += v, in_expert += v;
    }
  }
}

// fixed_capacity_slots, part 2: each assignment's slot in its expert, as a chunk-major row or -1.
__global__ void slots_apply_kernel(const int32_t* idx, int64_t NK, int k, int E, int64_t capacity,
                                   int64_t chunk_rows, const int64_t* start, const int64_t* before,
                                   int32_t* send_pos) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < NK;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int e = idx[i];
    if (e < 0 || e >= E || send_pos[i] < 0) {
      send_pos[i] = -1;
      continue;
    }
    const int b = e * k + int(i % k);
    const int64_t slot = before[b] + (send_pos[i] - start[b]), c = slot / chunk_rows;
    send_pos[i] = slot < capacity ? int32_t((c * E + e) * chunk_rows + slot - c * chunk_rows) : -1;
  }
}

// ---- row kernels: one warp per row -----------------------------------------------------------------
#define FOR_EACH_WARP_ROW(n, rows)                                                 \
  for (int64_t n = (int64_t)blockIdx.x * kRowWarps + threadIdx.x / 32; n < (rows); \
       n += (int64_t)gridDim.x * kRowWarps)

// 16-byte copies when both rows are 16-byte aligned and whole (decided once per launch).
template <class T>
__device__ __forceinline__ void copy_row(T* dst, const T* src, int C, bool vec) {
  const int lane = threadIdx.x % 32;
  if (vec) {
    const int n16 = int(C * sizeof(T) / 16);
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (int c = lane; c < n16; c += 32) d[c] = s[c];
  } else {
    for (int c = lane; c < C; c += 32) dst[c] = src[c];
  }
}

template <class T>
__global__ void __launch_bounds__(kRowWarps * 32)
    scatter_rows_kernel(T* dst, const T* src, const int32_t* map, int64_t rows, int C, bool vec) {
  FOR_EACH_WARP_ROW(i, rows) {
    const int32_t r = map[i];
    if (r >= 0) copy_row(dst + (int64_t)r * C, src + i * C, C, vec);
  }
}

template <class T>
__global__ void __launch_bounds__(kRowWarps * 32)
    gather_rows_kernel(T* dst, const T* src, const int32_t* map, int64_t rows, int C, bool vec) {
  FOR_EACH_WARP_ROW(i, rows) {
    const int32_t r = map[i];
    if (r >= 0) {
      copy_row(dst + i * C, src + (int64_t)r * C, C, vec);
    } else {
      for (int c = threadIdx.x % 32; c < C; c += 32) dst[i * C + c] = from_f32<T>(0.f);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kRowWarps * 32)
    permute_forward_kernel(T* xe, const T* x, const int32_t* pos, int N, int k, int C, bool vec) {
  FOR_EACH_WARP_ROW(n, N) {
    for (int j = 0; j < k; j++) {
      const int32_t r = pos[n * k + j];
      if (r >= 0) copy_row(xe + (int64_t)r * C, x + n * C, C, vec);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kRowWarps * 32)
    permute_backward_kernel(T* dx, const T* dxe, const int32_t* pos, int N, int k, int C, bool accumulate) {
  FOR_EACH_WARP_ROW(n, N) {
    T* d = dx + n * C;
    for (int c = threadIdx.x % 32; c < C; c += 32) {
      float acc = accumulate ? to_f32(d[c]) : 0.f;
      for (int j = 0; j < k; j++) {  // choice order: a fixed sum per token
        const int32_t r = pos[n * k + j];
        if (r >= 0) acc += to_f32(dxe[(int64_t)r * C + c]);
      }
      d[c] = from_f32<T>(acc);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kRowWarps * 32)
    combine_forward_kernel(T* y, const T* ye, const float* gate, const int32_t* pos, int N, int k, int C) {
  FOR_EACH_WARP_ROW(n, N) {
    T* o = y + n * C;
    for (int c = threadIdx.x % 32; c < C; c += 32) {
      float acc = 0.f;
      for (int j = 0; j < k; j++) {
        const int32_t r = pos[n * k + j];
        if (r >= 0) acc += gate[n * k + j] * to_f32(ye[(int64_t)r * C + c]);
      }
      o[c] = from_f32<T>(acc);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kRowWarps * 32)
    combine_backward_kernel(T* dye, float* dgate, const T* dy, const T* ye, const float* gate,
                            const int32_t* pos, int N, int k, int C) {
  const int lane = threadIdx.x % 32;
  FOR_EACH_WARP_ROW(n, N) {
    const T* d = dy + n * C;
    for (int j = 0; j < k; j++) {
      const int64_t i = n * k + j;
      const int32_t r = pos[i];
      if (r < 0) {  // a dropped choice did not reach the output
        if (lane == 0) dgate[i] = 0.f;
        continue;
      }
      const float g = gate[i];
      const T* src = ye + (int64_t)r * C;
      T* dst = dye + (int64_t)r * C;
      float dot = 0.f;
      for (int c = lane; c < C; c += 32) {
        const float dv = to_f32(d[c]);
        dst[c] = from_f32<T>(g * dv);
        dot += dv * to_f32(src[c]);
      }
      dot = warp_sum(dot);
      if (lane == 0) dgate[i] = dot;
    }
  }
}

// The fixed layout's admission (cpu::admit_rows_fixed), one block per local expert le. Its rows arrive
// in slots (source r, le) of `capacity` rows cut into chunks of cr; within a slot, the rows of choice
// j follow those of the earlier choices. Admission visits (choice, source) blocks in that order and takes
// the first `capacity` rows; an admitted row's place in its (chunk, expert) segment counts the admitted
// rows of that chunk before it in the same order. Thread 0 lays the blocks out in shared memory
// (rows n, slot start, admitted a); then every thread places receive rows.
__device__ __forceinline__ int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }
// |[a0, a1) intersected with [b0, b1)|
__device__ __forceinline__ int64_t overlap(int64_t a0, int64_t a1, int64_t b0, int64_t b1) {
  const int64_t lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
  return hi > lo ? hi - lo : 0;
}
__global__ void admit_fixed_kernel(const int64_t* recv_bucket, int W, int El, int k, int64_t capacity, int64_t cr,
                                   int P, int64_t seg_rows, int32_t* expert_row, int64_t* seg_counts,
                                   unsigned long long* dropped) {
  SCMOE_DYNAMIC_SHARED(int64_t, sh);
  const int le = blockIdx.x, O = W * k;  // blocks in admission order o = j * W + r
  int64_t *n = sh, *before = sh + O, *adm = sh + 2 * O;
  if (threadIdx.x == 0) {
    int64_t taken = 0, lost = 0;
    for (int j = 0; j < k; j++)
      for (int r = 0; r < W; r++) {
        const int o = j * W + r;
        const int64_t* b = recv_bucket + ((int64_t)r * El + le) * k;
        int64_t start = 0;
        for (int jj = 0; jj < j; jj++) start += b[jj];
        n[o] = b[j], before[o] = start;
        adm[o] = clamp64(capacity - taken, 0, n[o]);
        taken += n[o], lost += n[o] - adm[o];
      }
    for (int c = 0; c < P; c++) {  // admitted rows per chunk
      int64_t cnt = 0;
      for (int o = 0; o < O; o++)
        cnt += overlap(before[o], before[o] + adm[o], c * cr, (c + 1) * cr);
      seg_counts[(int64_t)c * El + le] = cnt;
    }
    if (lost) atomicAdd(dropped, (unsigned long long)lost);
  }
  __syncthreads();
  const int64_t rows = (int64_t)P * W * cr;  // this expert's receive rows: (chunk, source, slot row)
  for (int64_t q = threadIdx.x; q < rows; q += blockDim.x) {
    const int c = int(q / (W * cr)), r = int(q / cr % W);
    const int64_t i = c * cr + q % cr;  // the row's index in its slot
    int32_t out = -1;
    for (int j = 0; j < k; j++) {
      const int o = j * W + r;
      if (i < before[o] || i >= before[o] + n[o]) continue;
      if (i - before[o] < adm[o]) {
        int64_t at = i - (before[o] > c * cr ? before[o] : c * cr);  // this block's admitted rows before i
        for (int p = 0; p < o; p++)
          at += overlap(before[p], before[p] + adm[p], c * cr, (c + 1) * cr);
        out = int32_t(((int64_t)c * El + le) * seg_rows + at);
      }
      break;
    }
    expert_row[(((int64_t)c * W + r) * El + le) * cr + q % cr] = out;
  }
}

// dropped = the assignments this rank did not send (beyond a slot's capacity): N*k - sum(send_bucket).
__global__ void not_sent_kernel(const int64_t* send_bucket, int B, int64_t assignments, unsigned long long* dropped) {
  if (threadIdx.x != 0) return;
  int64_t sent = 0;
  for (int b = 0; b < B; b++) sent += send_bucket[b];
  *dropped = (unsigned long long)(assignments - sent);
}

unsigned row_blocks(int64_t rows) {
  return (unsigned)std::min<int64_t>(ceil_div(rows, kRowWarps), 65535 * 16);
}
int plan_tiles(int N) { return std::max(1, (int)ceil_div(N, kTile)); }
// Enough threads for the scan's runs to be short, no more (a single block does it).
unsigned scan_threads(int64_t work) {
  return (unsigned)std::min<int64_t>(1024, std::max<int64_t>(32, (ceil_div(work, 8) + 31) / 32 * 32));
}
template <class T>
bool vec_ok(const T* a, const T* b, int C) {
  return (reinterpret_cast<uintptr_t>(a) % 16 == 0) && (reinterpret_cast<uintptr_t>(b) % 16 == 0) &&
         (C * sizeof(T)) % 16 == 0;
}

void check_plan_shape(const char* who, int N, int k, int E) {
  SCMOE_CHECK(N >= 0 && k >= 1 && E >= 1, who << ": bad shape N=" << N << " k=" << k << " E=" << E);
  SCMOE_CHECK((int64_t)N * k <= INT32_MAX, who << ": N*k = " << (int64_t)N * k << " rows do not fit int32");
  SCMOE_CHECK(E <= kDispatchMaxExperts && (int64_t)E * k <= kDispatchMaxBuckets,
              who << ": E=" << E << ", k=" << k
                  << " exceed the CUDA plan's limits (E <= " << kDispatchMaxExperts
                  << ", E*k <= " << kDispatchMaxBuckets << ": shared-memory histograms)");
  SCMOE_CHECK(((int64_t)E * k + 1) * plan_tiles(N) <= INT32_MAX,
              who << ": N=" << N << " tokens with E*k=" << E * k << " buckets overflow the int32 histogram");
}

// Steps 1 and 2 plus 3: counts/offsets/dropped for the plan, bucket for route_sort.
void run_plan(const int32_t* topk_idx, int N, int k, int E, int64_t capacity, int32_t* out, int64_t* counts,
              int64_t* offsets, int64_t* dropped, int64_t* bucket, void* workspace, cudaStream_t stream) {
  const int G = plan_tiles(N);
  int* hist = static_cast<int*>(workspace);
  launch(plan_count_kernel, G, kTile, (size_t)(E * k + 1) * sizeof(int), stream, topk_idx, N, k, E, G, hist);
  launch(plan_scan_kernel, 1, scan_threads(std::max<int64_t>((int64_t)E * k * G, E)), 0, stream, hist, G, E,
         k, capacity, counts, offsets, dropped, bucket);
  if (N > 0)
    launch(plan_place_kernel, G, kTile, (size_t)kPlanWarps * E * sizeof(int), stream, topk_idx, N, k, E, G,
           (const int*)hist, capacity, (const int64_t*)offsets, out);
}
}  // namespace

size_t dispatch_workspace_bytes(int N, int k, int E) {
  const size_t G = (size_t)plan_tiles(N), B = (size_t)std::max(E, 0) * std::max(k, 0);
  return std::max((B * G + G) * sizeof(int), 2 * B * sizeof(int64_t));
}

void dispatch_plan(const int32_t* topk_idx, int N, int k, int E, int64_t capacity, int32_t* pos,
                   int64_t* counts, int64_t* offsets, int64_t* dropped, void* workspace,
                   cudaStream_t stream) {
  check_plan_shape("dispatch_plan", N, k, E);
  SCMOE_CHECK(capacity >= 0, "dispatch_plan: negative capacity " << capacity << " (use N*k for dropless)");
  run_plan(topk_idx, N, k, E, capacity, pos, counts, offsets, dropped, nullptr, workspace, stream);
}

void route_sort(const int32_t* topk_idx, int N, int k, int E, int32_t* send_pos, int64_t* bucket,
                void* workspace, cudaStream_t stream) {
  check_plan_shape("route_sort", N, k, E);
  run_plan(topk_idx, N, k, E, 0, send_pos, nullptr, nullptr, nullptr, bucket, workspace, stream);
}

void fixed_capacity_slots(const int32_t* topk_idx, int N, int k, int E, int64_t capacity, int64_t chunk_rows,
                          int32_t* send_pos, int64_t* bucket, void* workspace, cudaStream_t stream) {
  check_plan_shape("fixed_capacity_slots", N, k, E);
  SCMOE_CHECK(chunk_rows > 0, "fixed_capacity_slots: chunk_rows must be positive");
  int64_t* start = static_cast<int64_t*>(workspace);
  int64_t* before = start + (size_t)E * k;
  launch(slots_prepare_kernel, 1, scan_threads(E), 0, stream, E, k, capacity, bucket, start, before);
  const int64_t NK = (int64_t)N * k;
  if (NK > 0)
    launch(slots_apply_kernel, grid_stride_blocks(NK, 256), 256, 0, stream,
           topk_idx, NK, k, E, capacity, chunk_rows, (const int64_t*)start, (const int64_t*)before, send_pos);
}

template <class T>
void scatter_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C, cudaStream_t stream) {
  if (rows <= 0 || C <= 0) return;
  launch(scatter_rows_kernel<T>, row_blocks(rows), kRowWarps * 32, 0, stream, dst, src, map, rows, C,
         vec_ok(dst, src, C));
}
template <class T>
void gather_rows(T* dst, const T* src, const int32_t* map, int64_t rows, int C, cudaStream_t stream) {
  if (rows <= 0 || C <= 0) return;
  launch(gather_rows_kernel<T>, row_blocks(rows), kRowWarps * 32, 0, stream, dst, src, map, rows, C,
         vec_ok(dst, src, C));
}
template <class T>
void permute_forward(T* xe, const T* x, const int32_t* pos, int N, int k, int C, cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  launch(permute_forward_kernel<T>, row_blocks(N), kRowWarps * 32, 0, stream, xe, x, pos, N, k, C,
         vec_ok(xe, x, C));
}
template <class T>
void permute_backward(T* dx, const T* dxe, const int32_t* pos, int N, int k, int C, bool accumulate,
                      cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  launch(permute_backward_kernel<T>, row_blocks(N), kRowWarps * 32, 0, stream, dx, dxe, pos, N, k, C,
         accumulate);
}
template <class T>
void combine_forward(T* y, const T* ye, const float* gate, const int32_t* pos, int N, int k, int C,
                     cudaStream_t stream) {
  if (N <= 0 || C <= 0) return;
  launch(combine_forward_kernel<T>, row_blocks(N), kRowWarps * 32, 0, stream, y, ye, gate, pos, N, k, C);
}
template <class T>
void combine_backward(T* dye, float* dgate, const T* dy, const T* ye, const float* gate, const int32_t* pos,
                      int N, int k, int C, cudaStream_t stream) {
  if (N <= 0) return;
  launch(combine_backward_kernel<T>, row_blocks(N), kRowWarps * 32, 0, stream, dye, dgate, dy, ye, gate, pos,
         N, k, C);
}

#define SCMOE_PERMUTE_INSTANTIATE(T)                                                                         \
  template void scatter_rows<T>(T*, const T*, const int32_t*, int64_t, int, cudaStream_t);                   \
  template void gather_rows<T>(T*, const T*, const int32_t*, int64_t, int, cudaStream_t);                    \
  template void permute_forward<T>(T*, const T*, const int32_t*, int, int, int, cudaStream_t);               \
  template void permute_backward<T>(T*, const T*, const int32_t*, int, int, int, bool, cudaStream_t);        \
  template void combine_forward<T>(T*, const T*, const float*, const int32_t*, int, int, int, cudaStream_t); \
  template void combine_backward<T>(T*, float*, const T*, const T*, const float*, const int32_t*, int, int,  \
                                    int, cudaStream_t);
SCMOE_PERMUTE_INSTANTIATE(float)
SCMOE_PERMUTE_INSTANTIATE(bf16)
#undef SCMOE_PERMUTE_INSTANTIATE

void admit_rows_fixed(const int64_t* recv_bucket, const int64_t* send_bucket, int64_t assignments, int W, int El,
                      int E, int k, int64_t capacity, int64_t chunk_rows, int P, int32_t* expert_row,
                      int64_t* seg_counts, int64_t* dropped, cudaStream_t stream) {
  SCMOE_CHECK(capacity >= 0 && chunk_rows > 0 && chunk_rows * P >= capacity,
              "admit_rows_fixed: chunks do not cover the capacity");
  SCMOE_CHECK((int64_t)W * k <= kAdmitMaxBlocks, "admit_rows_fixed: " << W << " ranks x top-" << k
                                                                       << " exceed the kernel's limit of "
                                                                       << kAdmitMaxBlocks << " blocks per expert");
  auto* d = reinterpret_cast<unsigned long long*>(dropped);
  launch(not_sent_kernel, 1, 32, 0, stream, send_bucket, E * k, assignments, d);
  const int64_t seg_rows = capacity < (int64_t)W * chunk_rows ? capacity : (int64_t)W * chunk_rows;
  if (El > 0)
    launch(admit_fixed_kernel, El, 256, (size_t)3 * W * k * sizeof(int64_t), stream, recv_bucket, W, El, k, capacity,
           chunk_rows, P, seg_rows, expert_row, seg_counts, d);
}

SCMOE_CUDA_END
