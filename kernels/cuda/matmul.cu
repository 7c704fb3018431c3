// GEMMs and linear layers (see matmul.h): cuBLASLt natively (one handle, per-stream workspaces and a cache
// of chosen algorithms, created on first use), and a shared-memory tiled SIMT kernel that the emulation runs
// and that a GPU test compares with cuBLASLt. Row-major problems map onto cuBLAS's column-major ones by
// computing C^T = op(B)^T op(A)^T.
#include <atomic>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/matmul.h"

#if !defined(SCMOE_SIMT_EMU)
#include <cublasLt.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <tuple>
#endif

SCMOE_CUDA_BEGIN

namespace {

// ---- SIMT tiled GEMM ------------------------------------------------------------------------------------
// A 64x64 tile of C per block of 256 threads, K in slices of 16 staged through shared memory as fp32.
// Thread (tx, ty) owns the 4x4 elements (ty + 16i, tx + 16j): in the inner loop a warp reads two
// broadcast A values and 16 consecutive B values (no bank conflicts), and stores to C are coalesced.
constexpr int kBM = 64, kBN = 64, kBK = 16, kGemmThreads = 256;

template <class T, class TC>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_simt_kernel(bool ta, bool tb, int M, int N, int K, float alpha, const T* A, int lda, int64_t sa,
                     const T* B, int ldb, int64_t sb, float beta, TC* C, int ldc, int64_t sc,
                     const TC* bias) {
  __shared__ float As[kBK][kBM + 4];  // op(A) tile stored k-major; the padding spreads the stores' banks
  __shared__ float Bs[kBK][kBN + 4];
  A += blockIdx.z * sa;
  B += blockIdx.z * sb;
  C += blockIdx.z * sc;
  const int m0 = blockIdx.y * kBM, n0 = blockIdx.x * kBN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += kBK) {
    // Each thread stages 4 elements of each tile; consecutive threads walk the operand's contiguous
    // dimension, so global reads coalesce whichever way the operand is transposed.
    for (int e = 0; e < (kBM * kBK) / kGemmThreads; e++) {
      const int idx = tid + e * kGemmThreads;
      int mm, kk;
      if (ta)
        mm = idx % kBM, kk = idx / kBM;
      else
        kk = idx % kBK, mm = idx / kBK;
      int m = m0 + mm, k = k0 + kk;
      float v = 0.f;
      if (m < M && k < K) v = to_f32(ta ? A[(int64_t)k * lda + m] : A[(int64_t)m * lda + k]);
      As[kk][mm] = v;
      int nn;
      if (tb)
        kk = idx % kBK, nn = idx / kBK;
      else
        nn = idx % kBN, kk = idx / kBN;
      int n = n0 + nn;
      k = k0 + kk;
      v = 0.f;
      if (n < N && k < K) v = to_f32(tb ? B[(int64_t)n * ldb + k] : B[(int64_t)k * ldb + n]);
      Bs[kk][nn] = v;
    }
    __syncthreads();
    for (int kk = 0; kk < kBK; kk++) {
      float a[4], b[4];
      for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i], b[i] = Bs[kk][tx + 16 * i];
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();  // the next slice overwrites the tiles
  }
  for (int i = 0; i < 4; i++) {
    const int m = m0 + ty + 16 * i;
    if (m >= M) continue;
    for (int j = 0; j < 4; j++) {
      const int n = n0 + tx + 16 * j;
      if (n >= N) continue;
      TC* c = C + (int64_t)m * ldc + n;
      float r = alpha * acc[i][j];
      if (beta != 0.f) r += beta * to_f32(*c);  // BLAS semantics: C is not read when beta == 0
      if (bias) r += to_f32(bias[n]);
      *c = from_f32<TC>(r);
    }
  }
}

template <class T, class TC>
void gemm_simt(bool ta, bool tb, int M, int N, int K, float alpha, const T* A, int lda, int64_t sa,
               const T* B, int ldb, int64_t sb, float beta, TC* C, int ldc, int64_t sc, int batch,
               const TC* bias, cudaStream_t stream) {
  SCMOE_CHECK(batch <= 65535, "gemm: batch " << batch << " exceeds the grid's z limit");
  SCMOE_CHECK(ceil_div(M, kBM) <= 65535, "gemm: M = " << M << " exceeds the grid's y limit");
  dim3 grid(ceil_div(N, kBN), ceil_div(M, kBM), batch);
  launch(gemm_simt_kernel<T, TC>, grid, dim3(kGemmThreads), 0, stream, ta, tb, M, N, K, alpha, A, lda, sa, B,
         ldb, sb, beta, C, ldc, sc, bias);
}

// ---- Bias gradient: dbias[c] += sum_n dout[n][c] --------------------------------------------------------
// A block takes 32 columns (one per lane: coalesced rows) and 16 row phases; the 16 partial sums are then
// added in a fixed order, so the result is the same on every run.
constexpr int kBiasCols = 32, kBiasRows = 16;
template <class T, class TG>
__global__ void bias_grad_kernel(TG* dbias, const T* dout, int N, int OC) {
  __shared__ float part[kBiasRows][kBiasCols + 1];
  const int c = blockIdx.x * kBiasCols + threadIdx.x;
  float s = 0.f;
  if (c < OC)
    for (int n = threadIdx.y; n < N; n += kBiasRows) s += to_f32(dout[(int64_t)n * OC + c]);
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < OC) {
    float t = 0.f;
    for (int y = 0; y < kBiasRows; y++) t += part[y][threadIdx.x];
    dbias[c] = from_f32<TG>(to_f32(dbias[c]) + t);
  }
}

template <class T, class TG>
void bias_grad(TG* dbias, const T* dout, int N, int OC, cudaStream_t stream) {
  launch(bias_grad_kernel<T, TG>, dim3(ceil_div(OC, kBiasCols)), dim3(kBiasCols, kBiasRows), 0, stream, dbias,
         dout, N, OC);
}

std::atomic<int> g_backend{int(GemmBackend::cublas)};

// ---- cuBLASLt -------------------------------------------------------------------------------------------
#if !defined(SCMOE_SIMT_EMU)
#define SCMOE_CUBLAS_CHECK(call)                                                                     \
  do {                                                                                               \
    cublasStatus_t st_ = (call);                                                                     \
    SCMOE_CHECK(st_ == CUBLAS_STATUS_SUCCESS, #call << " failed: " << cublasLtGetStatusString(st_)); \
  } while (0)

template <class T>
constexpr cudaDataType_t data_type();
template <>
constexpr cudaDataType_t data_type<float>() {
  return CUDA_R_32F;
}
template <>
constexpr cudaDataType_t data_type<bf16>() {
  return CUDA_R_16BF;
}

// Largest power of two (up to 256) dividing the address and the batch stride: what the heuristic may
// assume. Expert groups and per-head slices start at arbitrary rows.
int alignment_of(const void* p, int64_t stride_bytes) {
  uint64_t bits = (uint64_t)(uintptr_t)p | (uint64_t)stride_bytes | 256u;
  return int(bits & (~bits + 1));
}

using AlgoKey = std::tuple<int, int, int, int, int, int, int, int, int, int, int64_t, int64_t, int64_t, int,
                           int, int, int, int, int>;

// One cuBLASLt handle; a workspace per stream (streams may run GEMMs concurrently); chosen algorithms
// cached by problem, as the heuristic query costs more than a small GEMM.
struct LtContext {
  static constexpr size_t kWorkspaceBytes = 32u << 20;  // what cuBLAS recommends on Hopper
  cublasLtHandle_t handle = nullptr;
  std::mutex mu;
  std::map<cudaStream_t, void*> workspaces;
  std::map<AlgoKey, std::pair<bool, cublasLtMatmulAlgo_t>> algos;

  static LtContext& get() {
    static LtContext* ctx = [] {
      auto* c = new LtContext;  // never destroyed: GEMMs may be issued from static destructors' time
      SCMOE_CUBLAS_CHECK(cublasLtCreate(&c->handle));
      return c;
    }();
    return *ctx;
  }
  void* workspace(cudaStream_t s) {
    std::lock_guard<std::mutex> lock(mu);
    void*& w = workspaces[s];
    if (!w) SCMOE_CUDA_CHECK(cudaMalloc(&w, kWorkspaceBytes));
    return w;
  }
};

struct LtDesc {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDesc() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

void set_batch(cublasLtMatrixLayout_t l, int batch, int64_t stride) {
  if (batch <= 1) return;
  SCMOE_CUBLAS_CHECK(
      cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
  SCMOE_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                      sizeof stride));
}

// Returns false when cuBLASLt offers no algorithm for the problem (the caller falls back to SIMT).
template <class T, class TC>
bool gemm_lt(bool ta, bool tb, int M, int N, int K, float alpha, const T* A, int lda, int64_t sa, const T* B,
             int ldb, int64_t sb, float beta, TC* C, int ldc, int64_t sc, int batch, const TC* bias,
             cudaStream_t stream) {
  LtContext& ctx = LtContext::get();
  const cudaDataType_t tin = data_type<T>(), tout = data_type<TC>();
  // Column-major view: D'[N x M] = op'(B) [N x K] @ op'(A) [K x M], with B and A read as stored.
  const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int al = alignment_of(B, sb * (int64_t)sizeof(T)), bl = alignment_of(A, sa * (int64_t)sizeof(T)),
            cl = alignment_of(C, sc * (int64_t)sizeof(TC));
  LtDesc d;
  SCMOE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  SCMOE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
  SCMOE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
  if (bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    SCMOE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    SCMOE_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  }
  SCMOE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, tin, tb ? K : N, tb ? N : K, ldb));
  SCMOE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, tin, ta ? M : K, ta ? K : M, lda));
  SCMOE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c, tout, N, M, ldc));
  set_batch(d.a, batch, sb);
  set_batch(d.b, batch, sa);
  set_batch(d.c, batch, sc);

  const AlgoKey key{int(ta),
                    int(tb),
                    M,
                    N,
                    K,
                    lda,
                    ldb,
                    ldc,
                    int(tin),
                    int(tout),
                    sa,
                    sb,
                    sc,
                    batch,
                    bias != nullptr,
                    al,
                    bl,
                    cl,
                    int(beta != 0.f)};
  std::pair<bool, cublasLtMatmulAlgo_t> algo{false, {}};
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(ctx.mu);
    auto it = ctx.algos.find(key);
    if (it != ctx.algos.end()) algo = it->second, cached = true;
  }
  if (!cached) {
    SCMOE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&d.pref));
    const size_t ws = LtContext::kWorkspaceBytes;
    SCMOE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                            &ws, sizeof ws));
    const uint32_t ua = al, ub = bl, uc = cl;
    SCMOE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ua, sizeof ua));
    SCMOE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ub, sizeof ub));
    SCMOE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &uc, sizeof uc));
    SCMOE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &uc, sizeof uc));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(ctx.handle, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &res, &found);
    algo = {st == CUBLAS_STATUS_SUCCESS && found > 0, res.algo};
    std::lock_guard<std::mutex> lock(ctx.mu);
    ctx.algos[key] = algo;
  }
  if (!algo.first) return false;
  SCMOE_CUBLAS_CHECK(cublasLtMatmul(ctx.handle, d.op, &alpha, B, d.a, A, d.b, &beta, C, d.c, C, d.c,
                                    &algo.second, ctx.workspace(stream), LtContext::kWorkspaceBytes, stream));
  return true;
}
#endif

template <class T, class TC>
void gemm_dispatch(bool ta, bool tb, int M, int N, int K, float alpha, const T* A, int lda, int64_t sa,
                   const T* B, int ldb, int64_t sb, float beta, TC* C, int ldc, int64_t sc, int batch,
                   const TC* bias, cudaStream_t stream) {
  if (M <= 0 || N <= 0 || batch <= 0) return;
#if !defined(SCMOE_SIMT_EMU)
  // K == 0 (C = beta*C + bias) is not a cuBLASLt problem; the SIMT kernel handles it.
  if (gemm_backend() == GemmBackend::cublas && K > 0) {
    if (gemm_lt(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch, bias, stream))
      return;
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true))
      std::fprintf(stderr,
                   "warning: cuBLASLt has no algorithm for a GEMM (M=%d N=%d K=%d); using the SIMT kernel\n",
                   M, N, K);
  }
#endif
  gemm_simt(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch, bias, stream);
}

}  // namespace

void set_gemm_backend(GemmBackend backend) { g_backend.store(int(backend)); }
GemmBackend gemm_backend() {
#if defined(SCMOE_SIMT_EMU)
  return GemmBackend::simt;
#else
  return GemmBackend(g_backend.load());
#endif
}

template <class T, class TC>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const T* A, int lda, const T* B,
          int ldb, float beta, TC* C, int ldc, cudaStream_t stream, const TC* bias) {
  gemm_dispatch(trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1, bias, stream);
}

template <class T, class TC>
void gemm_strided_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const T* A, int lda,
                          int64_t stride_a, const T* B, int ldb, int64_t stride_b, float beta, TC* C, int ldc,
                          int64_t stride_c, int batch, cudaStream_t stream) {
  gemm_dispatch(trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C, ldc, stride_c,
                batch, (const TC*)nullptr, stream);
}

template <class T>
void matmul_forward(T* out, const T* inp, const T* W, const T* bias, int N, int IC, int OC,
                    cudaStream_t stream) {
  gemm<T, T>(false, true, N, OC, IC, 1.f, inp, IC, W, IC, 0.f, out, OC, stream, bias);
}

template <class T, class TG>
void matmul_backward(T* dinp, TG* dW, TG* dbias, const T* dout, const T* inp, const T* W, int N, int IC,
                     int OC, bool accumulate_dinp, cudaStream_t stream) {
  if (N <= 0) return;
  if (dinp)
    gemm<T, T>(false, false, N, IC, OC, 1.f, dout, OC, W, IC, accumulate_dinp ? 1.f : 0.f, dinp, IC, stream);
  gemm<T, TG>(true, false, OC, IC, N, 1.f, dout, OC, inp, IC, 1.f, dW, IC, stream);
  if (dbias) bias_grad(dbias, dout, N, OC, stream);
}

// Per-group bias of a uniform grouped product: out[g][r][c] += bias[g * stride + c].
template <class T>
__global__ void add_bias_grouped_kernel(T* out, const T* bias, int64_t stride, int64_t rows, int OC) {
  const int g = blockIdx.y;
  const int64_t n = rows * OC;
  T* o = out + g * n;
  const T* b = bias + g * stride;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    o[i] = from_f32<T>(to_f32(o[i]) + to_f32(b[i % OC]));
}

// Per-group bias gradient of a uniform grouped product (bias_grad_kernel with a group per blockIdx.y).
template <class T, class TG>
__global__ void bias_grad_grouped_kernel(TG* dbias, const T* dout, int64_t stride, int rows, int OC) {
  __shared__ float part[kBiasRows][kBiasCols + 1];
  const int g = blockIdx.y;
  const int c = blockIdx.x * kBiasCols + threadIdx.x;
  const T* d = dout + int64_t(g) * rows * OC;
  float s = 0.f;
  if (c < OC)
    for (int n = threadIdx.y; n < rows; n += kBiasRows) s += to_f32(d[(int64_t)n * OC + c]);
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < OC) {
    float t = 0.f;
    for (int y = 0; y < kBiasRows; y++) t += part[y][threadIdx.x];
    TG* db = dbias + g * stride;
    db[c] = from_f32<TG>(to_f32(db[c]) + t);
  }
}

template <class T>
void matmul_forward_grouped(T* out, const T* inp, const T* W, const T* bias, int64_t w_stride, const GroupRows& rows,
                            int IC, int OC, cudaStream_t stream) {
  if (rows.uniform()) {  // one batched GEMM over the groups, then their biases
    if (rows.rows <= 0 || rows.groups <= 0) return;
    const int R = int(rows.rows);
    gemm_strided_batched<T, T>(false, true, R, OC, IC, 1.f, inp, IC, int64_t(R) * IC, W, IC, w_stride, 0.f, out, OC,
                               int64_t(R) * OC, rows.groups, stream);
    if (bias) {
      const int threads = 256;
      const unsigned blocks = std::max(1u, std::min(grid_stride_blocks(int64_t(R) * OC, threads), 4096u));
      launch(add_bias_grouped_kernel<T>, dim3(blocks, rows.groups), dim3(threads), 0, stream, out, bias, w_stride,
             int64_t(R), OC);
    }
    return;
  }
  for (int g = 0; g < rows.groups; g++)
    if (rows.size(g) > 0)
      matmul_forward(out + rows.first(g) * OC, inp + rows.first(g) * IC, W + g * w_stride,
                     bias ? bias + g * w_stride : nullptr, int(rows.size(g)), IC, OC, stream);
}

template <class T, class TG>
void matmul_backward_grouped(T* dinp, TG* dW, TG* dbias, const T* dout, const T* inp, const T* W, int64_t w_stride,
                             const GroupRows& rows, int IC, int OC, bool accumulate_dinp, cudaStream_t stream) {
  if (rows.uniform()) {
    if (rows.rows <= 0 || rows.groups <= 0) return;
    const int R = int(rows.rows), G = rows.groups;
    if (dinp)
      gemm_strided_batched<T, T>(false, false, R, IC, OC, 1.f, dout, OC, int64_t(R) * OC, W, IC, w_stride,
                                 accumulate_dinp ? 1.f : 0.f, dinp, IC, int64_t(R) * IC, G, stream);
    gemm_strided_batched<T, TG>(true, false, OC, IC, R, 1.f, dout, OC, int64_t(R) * OC, inp, IC, int64_t(R) * IC, 1.f,
                                dW, IC, w_stride, G, stream);
    if (dbias)
      launch(bias_grad_grouped_kernel<T, TG>, dim3(ceil_div(OC, kBiasCols), G), dim3(kBiasCols, kBiasRows), 0, stream,
             dbias, dout, w_stride, R, OC);
    return;
  }
  for (int g = 0; g < rows.groups; g++)
    if (rows.size(g) > 0)
      matmul_backward<T, TG>(dinp ? dinp + rows.first(g) * IC : nullptr, dW + g * w_stride,
                             dbias ? dbias + g * w_stride : nullptr, dout + rows.first(g) * OC, inp + rows.first(g) * IC,
                             W + g * w_stride, int(rows.size(g)), IC, OC, accumulate_dinp, stream);
}

#define SCMOE_GEMM_INSTANTIATE(T, TC)                                                                        \
  template void gemm<T, TC>(bool, bool, int, int, int, float, const T*, int, const T*, int, float, TC*, int, \
                            cudaStream_t, const TC*);                                                        \
  template void gemm_strided_batched<T, TC>(bool, bool, int, int, int, float, const T*, int, int64_t,        \
                                            const T*, int, int64_t, float, TC*, int, int64_t, int,           \
                                            cudaStream_t);                                                   \
  template void matmul_backward<T, TC>(T*, TC*, TC*, const T*, const T*, const T*, int, int, int, bool,      \
                                       cudaStream_t);                                                        \
  template void matmul_backward_grouped<T, TC>(T*, TC*, TC*, const T*, const T*, const T*, int64_t,           \
                                               const GroupRows&, int, int, bool, cudaStream_t);
SCMOE_GEMM_INSTANTIATE(float, float)
SCMOE_GEMM_INSTANTIATE(bf16, bf16)
SCMOE_GEMM_INSTANTIATE(bf16, float)
#undef SCMOE_GEMM_INSTANTIATE
template void matmul_forward<float>(float*, const float*, const float*, const float*, int, int, int,
                                    cudaStream_t);
template void matmul_forward<bf16>(bf16*, const bf16*, const bf16*, const bf16*, int, int, int, cudaStream_t);
template void matmul_forward_grouped<float>(float*, const float*, const float*, const float*, int64_t,
                                            const GroupRows&, int, int, cudaStream_t);
template void matmul_forward_grouped<bf16>(bf16*, const bf16*, const bf16*, const bf16*, int64_t, const GroupRows&,
                                           int, int, cudaStream_t);

SCMOE_CUDA_END
