// The model on the CUDA backend: GPT<cuda::Cuda<float|bf16>>, the same code as the CPU backend's
// (model/gpt.h), instantiated in model/cuda_models.cu, which is built twice like the kernels: natively,
// and under the SIMT emulation for the emulated whole-model tests (tests/model/emu/). The generator's CUDA
// instantiations are infer/cuda_infer.*.
#pragma once
#include "kernels/cuda/backend.h"
#include "model/gpt.h"

namespace scmoe {

extern template class GPT<cuda::Cuda<float>>;
extern template class GPT<cuda::Cuda<cuda::bf16>>;

}  // namespace scmoe
