// Host memory the process may still take, so that a model too large for the machine is an error
// naming what was being allocated and how much, not std::bad_alloc or the kernel's OOM killer later
// (Linux overcommits: a too-large allocation often succeeds and the process dies when it is touched).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace scmoe {

// Bytes that can still be allocated and touched: /proc/meminfo's MemAvailable + SwapFree, capped by
// the cgroup (v2 memory.max - memory.current, v1 limit - usage) when one limits the process; -1 when
// unknown (not Linux).
int64_t host_memory_available();

// Throws scmoe::Error when `count` elements of `elem_bytes` overflow size_t or exceed what
// host_memory_available() says; `what` names the allocation ("the activation arena").
void check_host_allocation(size_t count, size_t elem_bytes, const std::string& what);

}  // namespace scmoe
