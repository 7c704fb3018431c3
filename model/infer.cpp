// The CPU backend's generators: Generator<Cpu<float>> and Generator<Cpu<double>> (definitions in
// infer_impl.h), and the migration setting's parser.
#include "model/infer_impl.h"

namespace scmoe {

Migration parse_migration(const std::string& s) {
  if (s == "blocking") return Migration::blocking;
  if (s == "async") return Migration::async;
  SCMOE_CHECK(s == "speculative",
              "inference.migration: expected async|blocking|speculative, got '" << s << "'");
  return Migration::speculative;
}

template class Generator<Cpu<float>>;
template class Generator<Cpu<double>>;

}  // namespace scmoe
