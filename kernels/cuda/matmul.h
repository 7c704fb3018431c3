// Linear layers and general GEMMs on the device; twin of kernels/cpu/matmul.h (row-major throughout:
// out[N,OC] = inp[N,IC] @ W[OC,IC]^T + bias). Natively through cuBLASLt (fp32 compute); under the SIMT
// emulation, or when asked, through a tiled SIMT kernel with the same semantics.
// T is the storage type of the inputs (float or bf16); TC that of the output C, which may be float
// while the inputs are bf16 (fp32 gradients of bf16 weights). Arithmetic is fp32.
#pragma once
#include <cstdint>

#include "kernels/backend_types.h"
#include "kernels/cuda/abi.h"

SCMOE_CUDA_BEGIN

// Which implementation the launchers below use. Natively the default is cublas; simt selects the
// tiled SIMT kernel (the emulatable twin, so that a GPU test can check both). Under the emulation
// the SIMT kernel always runs and gemm_backend() reports simt whatever was set.
enum class GemmBackend { cublas, simt };
void set_gemm_backend(GemmBackend backend);
GemmBackend gemm_backend();

// C[M,N] = alpha * op(A) @ op(B) + beta * C (+ bias[n] when bias is non-null), row-major, op =
// transpose when the flag is set. As in BLAS, C is not read when beta == 0. bias has N entries.
template <class T, class TC = T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const T* A, int lda, const T* B,
          int ldb, float beta, TC* C, int ldc, cudaStream_t stream, const TC* bias = nullptr);

// `batch` independent GEMMs; matrix i of A/B/C starts at A + i*stride_a (and so on).
template <class T, class TC = T>
void gemm_strided_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const T* A, int lda,
                          int64_t stride_a, const T* B, int ldb, int64_t stride_b, float beta, TC* C, int ldc,
                          int64_t stride_c, int batch, cudaStream_t stream);

// bias may be null.
template <class T>
void matmul_forward(T* out, const T* inp, const T* W, const T* bias, int N, int IC, int OC,
                    cudaStream_t stream);

// dW (and dbias when non-null) are accumulated; TG is their type (T, or float for bf16 T). dinp is
// overwritten, or accumulated when `accumulate_dinp`; it may be null. The bias gradient is a
// deterministic column sum (no atomics).
template <class T, class TG = T>
void matmul_backward(T* dinp, TG* dW, TG* dbias, const T* dout, const T* inp, const T* W, int N, int IC,
                     int OC, bool accumulate_dinp, cudaStream_t stream);

// G independent linear layers (a MoE layer's experts): group g takes the rows GroupRows gives it
// (kernels/backend_types.h) of inp and out, through W + g * w_stride and bias + g * w_stride (bias may
// be null; dW and dbias at the same strides). Groups of host-known sizes run one product each; uniform
// groups (every group `rows.rows` rows, one after the other) run as one strided batched GEMM. Equivalent
// to matmul_forward / matmul_backward per group.
template <class T>
void matmul_forward_grouped(T* out, const T* inp, const T* W, const T* bias, int64_t w_stride, const GroupRows& rows,
                            int IC, int OC, cudaStream_t stream);
template <class T, class TG = T>
void matmul_backward_grouped(T* dinp, TG* dW, TG* dbias, const T* dout, const T* inp, const T* W, int64_t w_stride,
                             const GroupRows& rows, int IC, int OC, bool accumulate_dinp, cudaStream_t stream);
SCMOE_CUDA_END
