// The auxiliary-loss-free balancing rule (DeepSeek-V3; moe.expert_bias), written once for the CPU
// reference (kernels/cpu/router.cpp) and the CUDA kernel (kernels/cuda/router.cu, one thread):
// bias_e += rate * sign(mean load - load_e), then optionally re-centred to mean zero; the loads reset.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SCMOE_HOST_DEVICE __host__ __device__
#else
#define SCMOE_HOST_DEVICE
#endif

namespace scmoe {

SCMOE_HOST_DEVICE inline void apply_expert_bias_rule(float* bias, int64_t* load, int E, double rate, bool center) {
  double mean = 0;
  for (int e = 0; e < E; e++) mean += double(load[e]);
  mean /= E;
  for (int e = 0; e < E; e++) {
    const double d = mean - double(load[e]);
    bias[e] = float(double(bias[e]) + rate * double((d > 0) - (d < 0)));
  }
  if (center) {
    double m = 0;
    for (int e = 0; e < E; e++) m += double(bias[e]);
    m /= E;
    for (int e = 0; e < E; e++) bias[e] = float(double(bias[e]) - m);
  }
  for (int e = 0; e < E; e++) load[e] = 0;
}

}  // namespace scmoe
