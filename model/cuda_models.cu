// The CUDA backend's models (see cuda_models.h): definitions from gpt_impl.h.
#include "model/cuda_models.h"
#include "model/gpt_impl.h"

namespace scmoe {

template class GPT<cuda::Cuda<float>>;
template class GPT<cuda::Cuda<cuda::bf16>>;

}  // namespace scmoe
