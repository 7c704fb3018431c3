// Included by every kernels/cuda/*.h launcher header: the stream type, and the namespace the launchers
// live in. The same kernel source is built twice — natively by nvcc (library scmoe_cuda) and as host
// C++ under the SIMT emulation for the CPU tests (scmoe_cuda_emu) — and an inline namespace keeps the
// two sets of symbols apart while callers write scmoe::cuda::name either way.
#pragma once
#include <cuda_bf16.h>  // bf16 storage type; usable from host C++ too

#if defined(SCMOE_SIMT_EMU)
struct CUstream_st;
using cudaStream_t = CUstream_st*;
#define SCMOE_CUDA_BEGIN \
  namespace scmoe::cuda {  \
  inline namespace emu {
#else
#include <driver_types.h>
#define SCMOE_CUDA_BEGIN \
  namespace scmoe::cuda {  \
  inline namespace native {
#endif
#define SCMOE_CUDA_END \
  }                    \
  }

SCMOE_CUDA_BEGIN
using bf16 = __nv_bfloat16;
SCMOE_CUDA_END
