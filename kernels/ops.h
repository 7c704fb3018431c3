// The op interface the model is written against. Today every op runs the CPU reference kernel; the
// CUDA backend adds its launch beside each call (dispatching on the active device) without the model
// changing. Keep the argument lists identical to kernels/cpu/*.h.
#pragma once
#include "kernels/cpu/attention.h"
#include "kernels/cpu/crossentropy.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/encoder.h"
#include "kernels/cpu/gates.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/permute.h"
#include "kernels/cpu/router.h"

namespace scmoe::ops {

using cpu::add;
using cpu::add_inplace;
using cpu::attention_backward;
using cpu::attention_decode;
using cpu::attention_forward;
using cpu::copy;
using cpu::crossentropy_forward_backward;
using cpu::encoder_backward;
using cpu::encoder_forward;
using cpu::fill;
using cpu::gelu_backward;
using cpu::gelu_forward;
using cpu::gemm;
using cpu::layernorm_backward;
using cpu::layernorm_forward;
using cpu::matmul_backward;
using cpu::matmul_forward;
using cpu::rmsnorm_backward;
using cpu::rmsnorm_forward;
using cpu::RouterLosses;
using cpu::router_backward;
using cpu::router_forward;
using cpu::admit_rows;
using cpu::admit_rows_fixed;
using cpu::dispatch_plan;
using cpu::fixed_capacity_slots;
using cpu::gather_rows;
using cpu::route_sort;
using cpu::scatter_rows;
using cpu::permute_backward;
using cpu::permute_forward;
using cpu::combine_backward;
using cpu::combine_forward;
using cpu::cg1_backward;
using cpu::cg1_forward;
using cpu::cg2_backward;
using cpu::cg2_forward;

}  // namespace scmoe::ops
