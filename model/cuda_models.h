// The model, generator and optimizer on the CUDA backend: GPT<cuda::Cuda<float|bf16>> and the rest,
// the same code as the CPU backend's (model/gpt.h, model/infer.h, optim/adamw.h), instantiated in
// model/cuda_models.cu, which is built twice like the kernels: natively, and under the SIMT emulation
// for the emulated whole-model tests (tests/emu/).
#pragma once
#include "kernels/cuda/backend.h"
#include "model/gpt.h"
#include "model/infer.h"

namespace scmoe {

extern template class GPT<cuda::Cuda<float>>;
extern template class GPT<cuda::Cuda<cuda::bf16>>;
extern template class Generator<cuda::Cuda<float>>;
extern template class Generator<cuda::Cuda<cuda::bf16>>;

}  // namespace scmoe
