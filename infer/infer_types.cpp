// The migration setting's parser (infer/infer_types.h), shared by the generators of both backends.
#include "infer/infer_types.h"

#include "core/check.h"

namespace scmoe {

Migration parse_migration(const std::string& s) {
  if (s == "blocking") return Migration::blocking;
  if (s == "async") return Migration::async;
  SCMOE_CHECK(s == "speculative",
              "inference.migration: expected async|blocking|speculative, got '" << s << "'");
  return Migration::speculative;
}

}  // namespace scmoe
