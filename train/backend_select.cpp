// Backend selection (see backend_select.h).
#include "train/backend_select.h"

#include "core/check.h"
#include "core/device.h"

namespace scmoe {

BackendKind select_backend(const Config& cfg, int ranks, int local_ranks, std::string* notice) {
  std::string line;
  Device dev = select_device(cfg.train.device, &line);
  // What the CUDA backend does not run: auto falls back to the CPU, an explicit cuda is an error.
  std::string unsupported;
  if (cfg.train.dtype != "float32") unsupported = "train.dtype " + cfg.train.dtype;
#ifndef SCMOE_HAVE_NCCL
  else if (ranks > 1) unsupported = "several processes without NCCL (not found at build time)";
#endif
  else if (dev == Device::cuda && local_ranks > query_cuda().device_count)
    unsupported = std::to_string(local_ranks) + " ranks on a node with " + std::to_string(query_cuda().device_count) +
                  " GPU(s) (NCCL needs one GPU per rank)";
  (void)ranks;
  if (dev == Device::cuda && !unsupported.empty()) {
    SCMOE_CHECK(cfg.train.device == "auto",
                "train.device cuda: " << unsupported << " is not on the CUDA backend; use train.device cpu");
    line += ", but " + unsupported + " is not on the CUDA backend: using cpu";
    dev = Device::cpu;
  }
  SCMOE_CHECK(dev == Device::cuda || cfg.train.precision == "fp32",
              "train.precision " << cfg.train.precision << " needs the CUDA backend (this run uses cpu)");
  if (notice) *notice = line;
  if (dev == Device::cuda) return cfg.train.precision == "bf16" ? BackendKind::cuda_bf16 : BackendKind::cuda_f32;
  return cfg.train.dtype == "float64" ? BackendKind::cpu_f64 : BackendKind::cpu_f32;
}

const char* backend_name(BackendKind k) {
  switch (k) {
    case BackendKind::cpu_f32: return "cpu float32";
    case BackendKind::cpu_f64: return "cpu float64";
    case BackendKind::cuda_f32: return "cuda fp32";
    case BackendKind::cuda_bf16: return "cuda bf16";
  }
  return "?";
}

}  // namespace scmoe
