// libFuzzer target for the checkpoint reader: arbitrary bytes as a .safetensors file must give tensors
// that lie inside the file, or a scmoe::Error; every accepted tensor is then verified (checksum,
// finite values) and the metadata read as a checkpoint's training state, each an Error or a result.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/check.h"
#include "train/checkpoint.h"
#include "train/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  scmoe::StFile f;
  try {
    f = scmoe::safetensors_parse(std::vector<char>(data, data + size), "fuzz.safetensors");
  } catch (const scmoe::Error&) {
    return 0;
  }
  const char* begin = f.blob.data();
  const char* end = begin + f.blob.size();
  for (const auto& [name, t] : f.tensors) {
    if (t.nbytes > 0 && (t.data < begin || static_cast<const char*>(t.data) + t.nbytes > end)) std::abort();
    if (t.nbytes != 0 && t.nbytes % scmoe::safetensors_dtype_size(t.dtype) != 0) std::abort();
    try {
      f.verify(name);
    } catch (const scmoe::Error&) {
    }
  }
  try {
    scmoe::TrainState::from_metadata(f.metadata, "fuzz.safetensors");
  } catch (const scmoe::Error&) {
  }
  return 0;
}
