// The generator on the CUDA backend: Generator<cuda::Cuda<float|bf16>>, the same code as the CPU
// backend's (infer/infer.h), instantiated in infer/cuda_infer.cu, built natively and under the SIMT
// emulation like the kernels.
#pragma once
#include "infer/infer.h"
#include "kernels/cuda/backend.h"
#include "model/cuda_models.h"

namespace scmoe {

extern template class Generator<cuda::Cuda<float>>;
extern template class Generator<cuda::Cuda<cuda::bf16>>;

}  // namespace scmoe
