// CUDA device query for backend selection. On a machine without a driver the first runtime call fails
// ("driver insufficient" / "no device"); that is reported as the reason, never as a crash.
#include <cuda_runtime.h>

#include "core/device.h"

namespace scmoe {

CudaQuery query_cuda() {
  CudaQuery q;
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    q.reason = std::string("CUDA runtime: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error so later calls are not poisoned
    return q;
  }
  if (n == 0) {
    q.reason = "the CUDA runtime reports 0 devices";
    return q;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) q.name = prop.name;
  q.device_count = n;
  return q;
}

}  // namespace scmoe
