// The CPU backend's generators: Generator<Cpu<float>> and Generator<Cpu<double>> (definitions in
// infer_impl.h; the CUDA backend's are in infer/cuda_infer.cu).
#include "infer/infer_impl.h"

namespace scmoe {

template class Generator<Cpu<float>>;
template class Generator<Cpu<double>>;

}  // namespace scmoe
