// Which backend runs a command: train.device (auto | cpu | cuda) with train.dtype (the CPU's float32 |
// float64) and train.precision (CUDA's fp32 | bf16) resolved to one of Cpu<float>, Cpu<double>,
// cuda::Cuda<float>, cuda::Cuda<bf16>, and a call of a generic function with that type. The one
// place that says what the CUDA backend cannot run (auto falls back to the CPU saying why; an explicit
// cuda is an error naming what is missing).
#pragma once
#include <string>
#include <utility>

#include "kernels/cpu/backend.h"
#include "train/config.h"
#ifdef SCMOE_HAVE_CUDA
#include "infer/cuda_infer.h"
#include "model/cuda_models.h"
#endif

namespace scmoe {

enum class BackendKind { cpu_f32, cpu_f64, cuda_f32, cuda_bf16 };

// ranks / local_ranks: the processes of the run and those on this node (training over NCCL needs
// one GPU per local rank). `notice` receives the line to log ("using cuda device 0: ...").
BackendKind select_backend(const Config& cfg, int ranks, int local_ranks, std::string* notice);
const char* backend_name(BackendKind k);

template <class B>
struct BackendTag {
  using type = B;
};

// fn(BackendTag<B>{}) for the backend `k` names.
template <class Fn>
int with_backend(BackendKind k, Fn&& fn) {
  switch (k) {
    case BackendKind::cpu_f32: return fn(BackendTag<Cpu<float>>{});
    case BackendKind::cpu_f64: return fn(BackendTag<Cpu<double>>{});
#ifdef SCMOE_HAVE_CUDA
    case BackendKind::cuda_f32: return fn(BackendTag<cuda::Cuda<float>>{});
    case BackendKind::cuda_bf16: return fn(BackendTag<cuda::Cuda<cuda::bf16>>{});
#else
    default: break;
#endif
  }
  SCMOE_FAIL("this build has no CUDA backend (configure with -DSCMOE_CUDA=ON where nvcc exists)");
}

}  // namespace scmoe
