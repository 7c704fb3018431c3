// Activation arena: one allocation sized at start-up. Layers request their buffers twice: once in a
// measuring pass (nothing allocated, sizes summed) and once for real, so the estimate printed at start
// is exactly what is used and no allocation happens during training.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <memory>

#include "core/check.h"

namespace scmoe {

class Arena {
 public:
  static constexpr size_t kAlign = 64;

  void begin_measure() { measuring_ = true; used_ = 0; }
  // Ends the measuring pass and allocates exactly what it asked for.
  void allocate_measured() {
    measuring_ = false;
    capacity_ = used_;
    used_ = 0;
    external_ = nullptr;
    base_.reset(capacity_ ? static_cast<char*>(std::aligned_alloc(kAlign, capacity_)) : nullptr);
    SCMOE_CHECK(capacity_ == 0 || base_, "out of memory allocating the activation arena ("
                                             << capacity_ / (1 << 20) << " MiB)");
  }

  // Ends the measuring pass; buffers are then handed out of `base`, which the caller allocated with
  // bytes() (a backend's memory: device memory on CUDA).
  void place_measured(char* base) {
    measuring_ = false;
    capacity_ = used_;
    used_ = 0;
    base_.reset();
    external_ = base;
  }
  template <class T>
  T* alloc(size_t n) {
    size_t bytes = (n * sizeof(T) + kAlign - 1) / kAlign * kAlign;
    size_t off = used_;
    used_ += bytes;
    if (measuring_) return nullptr;
    SCMOE_CHECK(used_ <= capacity_, "arena overflow: layers asked for more than they measured");
    return reinterpret_cast<T*>((external_ ? external_ : base_.get()) + off);
  }

  size_t bytes() const { return measuring_ ? used_ : capacity_; }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> base_;
  char* external_ = nullptr;
  size_t used_ = 0, capacity_ = 0;
  bool measuring_ = false;
};

}  // namespace scmoe
