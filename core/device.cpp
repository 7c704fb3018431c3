// Backend selection; the CUDA query itself lives in core/cuda_query.cu when CUDA is built.
#include "core/device.h"

#include "core/check.h"

namespace scmoe {

#ifndef SCMOE_HAVE_CUDA
CudaQuery query_cuda() {
  CudaQuery q;
  q.reason = "this build has no CUDA backend (configure with -DSCMOE_CUDA=ON where nvcc exists)";
  return q;
}
#endif

Device select_device(const std::string& want, std::string* notice) {
  if (want == "cpu") return Device::cpu;
  CudaQuery q = query_cuda();
  if (want == "cuda") {
    SCMOE_CHECK(q.device_count > 0, "train.device: cuda requested but no CUDA device is usable: "
                                        << q.reason << " (use train.device=cpu or auto)");
    if (notice) *notice = "using cuda device 0: " + q.name;
    return Device::cuda;
  }
  SCMOE_CHECK(want == "auto", "train.device: expected auto|cpu|cuda, got '" << want << "'");
  if (q.device_count > 0) {
    if (notice) *notice = "using cuda device 0: " + q.name;
    return Device::cuda;
  }
  if (notice) *notice = "no CUDA device (" + q.reason + "), using cpu";
  return Device::cpu;
}

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

}  // namespace scmoe
