// The CUDA backend's generators (see cuda_infer.h): definitions from infer_impl.h.
#include "infer/cuda_infer.h"
#include "infer/infer_impl.h"

namespace scmoe {

template class Generator<cuda::Cuda<float>>;
template class Generator<cuda::Cuda<cuda::bf16>>;

}  // namespace scmoe
