// libFuzzer target for the rendezvous store's message parser (comm/store_wire.h), the code that reads
// whatever arrives on rank 0's port: arbitrary bytes decode into requests until they run out, each
// ending in a request or a WireError, never a crash, a huge allocation or an unbounded timeout.
#include <cstdint>
#include <cstdlib>

#include "comm/store_wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  scmoe::BufferReader in(data, size);
  while (in.left() > 0) {
    try {
      const scmoe::StoreRequest r = scmoe::read_store_request(in);
      if (r.timeout.count() < 0 || r.timeout > scmoe::kStoreMaxTimeout) std::abort();
      if (r.keys.size() > scmoe::kStoreMaxKeys) std::abort();
      // What was decoded encodes back to bytes of the same request.
      scmoe::Writer w;
      w.u8(r.op);
      if (r.op == scmoe::kStoreSet) w.str(r.key).str(r.value);
      if (r.op == scmoe::kStoreGet) w.str(r.key).u64(uint64_t(r.timeout.count()));
      if (r.op == scmoe::kStoreWait) w.strs(r.keys).u64(uint64_t(r.timeout.count()));
      if (r.op == scmoe::kStoreCheck) w.strs(r.keys);
      scmoe::BufferReader again(w.bytes().data(), w.bytes().size());
      const scmoe::StoreRequest r2 = scmoe::read_store_request(again);
      if (r2.op != r.op || r2.key != r.key || r2.value != r.value || r2.keys != r.keys ||
          r2.timeout != r.timeout || again.left() != 0)
        std::abort();
    } catch (const scmoe::WireError&) {
      return 0;  // the server drops such a connection
    }
  }
  return 0;
}
