// Checkpoint directories: runs/<x>/checkpoints/step_NNNNNNNN/. Written into a ".tmp-" sibling and
// renamed only once complete (with a COMPLETE marker), so a crash or a full disk never leaves a
// directory that looks finished; the last K complete checkpoints are kept.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace scmoe {

std::string checkpoint_name(int64_t step);  // "step_00000042"

// Creates <root>/.tmp-step_NNNNNNNN, calls write(tmpdir) to fill it, writes COMPLETE, fsyncs, renames
// to <root>/step_NNNNNNNN (replacing an older one of the same step), then deletes all but the newest
// `keep` (>= 1) complete checkpoints -- never the one just written -- and stale ".tmp-*" leftovers.
// On any exception the temporary directory is removed and the error rethrown; earlier checkpoints
// are untouched. Returns the final directory.
std::string commit_checkpoint(const std::string& root, int64_t step, int keep,
                              const std::function<void(const std::string& tmpdir)>& write);

// Complete checkpoints under root, oldest first (directories without COMPLETE are ignored).
std::vector<std::string> list_checkpoints(const std::string& root);

// "auto" -> newest complete checkpoint under root or "" if none (root may not exist); "" -> "" (no
// resume); a path -> that path, which must be a complete checkpoint directory (error otherwise,
// naming it and what is missing).
std::string resolve_resume(const std::string& spec, const std::string& root);

}  // namespace scmoe
