// CPU reference for MoE token dispatch (see permute.h): the capacity plan, and the permute / combine
// copies. Every parallel loop is over tokens and each kept row belongs to exactly one (token, choice),
// so all writes are disjoint and results do not depend on the thread count.
#include "kernels/cpu/permute.h"

#include <climits>
#include <vector>

#include "core/check.h"

namespace scmoe::cpu {

int64_t dispatch_plan(const int32_t* topk_idx, int N, int k, int E, int64_t capacity, int32_t* pos,
                      int64_t* counts, int64_t* offsets) {
  SCMOE_CHECK(capacity >= 0, "dispatch_plan: negative capacity " << capacity << " (use N*k for dropless)");
  SCMOE_CHECK((int64_t)N * k <= INT32_MAX,
              "dispatch_plan: N*k = " << (int64_t)N * k << " rows do not fit the int32 pos");
  for (int e = 0; e < E; e++) counts[e] = 0;
  int64_t dropped = 0;
  // Serial and choice-major: the fill order decides who is dropped, so it must be exactly the
  // documented one; first pos holds the slot within the expert, made global once offsets are known.
  for (int j = 0; j < k; j++)
    for (int n = 0; n < N; n++) {
      int64_t i = (int64_t)n * k + j;
      int32_t e = topk_idx[i];
      SCMOE_CHECK(e >= 0 && e < E, "dispatch_plan: token " << n << " choice " << j << " routes to expert "
                                                           << e << ", outside [0, " << E << ")");
      if (counts[e] < capacity) {
        pos[i] = (int32_t)counts[e]++;
      } else {
        pos[i] = -1;
        dropped++;
      }
    }
  offsets[0] = 0;
  for (int e = 0; e < E; e++) offsets[e + 1] = offsets[e] + counts[e];
  for (int64_t i = 0; i < (int64_t)N * k; i++)
    if (pos[i] >= 0) pos[i] += (int32_t)offsets[topk_idx[i]];
  return dropped;
}

template <class T>
void permute_forward(T* xe, const T* x, const int32_t* pos, int N, int k, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const T* src = x + (int64_t)n * C;
    for (int j = 0; j < k; j++) {
      int32_t r = pos[(int64_t)n * k + j];
      if (r < 0) continue;
      T* dst = xe + (int64_t)r * C;
      for (int c = 0; c < C; c++) dst[c] = src[c];
    }
  }
}

template <class T>
void permute_backward(T* dx, const T* dxe, const int32_t* pos, int N, int k, int C, bool accumulate) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    T* d = dx + (int64_t)n * C;
    if (!accumulate)
      for (int c = 0; c < C; c++) d[c] = T(0);
    for (int j = 0; j < k; j++) {  // choices summed in order j: a fixed order per token
      int32_t r = pos[(int64_t)n * k + j];
      if (r < 0) continue;
      const T* g = dxe + (int64_t)r * C;
      for (int c = 0; c < C; c++) d[c] += g[c];
    }
  }
}

template <class T>
void combine_forward(T* y, const T* ye, const T* gate, const int32_t* pos, int N, int k, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    T* o = y + (int64_t)n * C;
    for (int c = 0; c < C; c++) o[c] = T(0);  // a token with every choice dropped gets 0 (residual only)
    for (int j = 0; j < k; j++) {
      int32_t r = pos[(int64_t)n * k + j];
      if (r < 0) continue;
      T g = gate[(int64_t)n * k + j];
      const T* src = ye + (int64_t)r * C;
      for (int c = 0; c < C; c++) o[c] += g * src[c];
    }
  }
}

template <class T>
void combine_backward(T* dye, T* dgate, const T* dy, const T* ye, const T* gate, const int32_t* pos, int N,
                      int k, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const T* d = dy + (int64_t)n * C;
    for (int j = 0; j < k; j++) {
      int64_t i = (int64_t)n * k + j;
      int32_t r = pos[i];
      if (r < 0) {
        dgate[i] = T(0);  // a dropped choice did not reach the output
        continue;
      }
      T g = gate[i];
      const T* src = ye + (int64_t)r * C;
      T* dst = dye + (int64_t)r * C;
      double s = 0;
      for (int c = 0; c < C; c++) {
        dst[c] = g * d[c];
        s += double(d[c]) * double(src[c]);
      }
      dgate[i] = T(s);
    }
  }
}

template void permute_forward<float>(float*, const float*, const int32_t*, int, int, int);
template void permute_forward<double>(double*, const double*, const int32_t*, int, int, int);
template void permute_backward<float>(float*, const float*, const int32_t*, int, int, int, bool);
template void permute_backward<double>(double*, const double*, const int32_t*, int, int, int, bool);
template void combine_forward<float>(float*, const float*, const float*, const int32_t*, int, int, int);
template void combine_forward<double>(double*, const double*, const double*, const int32_t*, int, int, int);
template void combine_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const int32_t*, int, int, int);
template void combine_backward<double>(double*, double*, const double*, const double*, const double*,
                                       const int32_t*, int, int, int);

}  // namespace scmoe::cpu
