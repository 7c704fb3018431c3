// Backend selection: `train.device: auto | cpu | cuda`. auto takes a CUDA device when one is usable and
// otherwise says why it uses the CPU.
#pragma once
#include <string>

namespace scmoe {

enum class Device { cpu, cuda };

struct CudaQuery {
  int device_count = 0;
  std::string name;    // device 0's name when device_count > 0
  std::string reason;  // why no device is usable ("built without CUDA", "driver insufficient", ...)
};

// Asks the CUDA runtime (when built with CUDA) how many devices are usable.
CudaQuery query_cuda();

// Resolves the configured device; `notice` receives a line for the user (e.g. "no CUDA device (...),
// using cpu"). Throws for `cuda` without a usable device.
Device select_device(const std::string& want, std::string* notice);

const char* device_name(Device d);

}  // namespace scmoe
