// The CPU backend's models: GPT<Cpu<float>> and GPT<Cpu<double>> (definitions in gpt_impl.h).
#include "model/gpt_impl.h"

namespace scmoe {

template class GPT<Cpu<float>>;
template class GPT<Cpu<double>>;

}  // namespace scmoe
