// Every dense op's backward against central finite differences in float64, on awkward sizes.
#include <cstdint>

#include "kernels/cpu/backend.h"  // every CPU kernel
#include "tests/gradcheck.h"

using namespace scmoe;
namespace ops = scmoe::cpu;  // the CPU reference kernels
using V = std::vector<double>;

static void test_matmul() {
  int N = 5, IC = 7, OC = 3;
  V x = random_vec(N * IC, 1), w = random_vec(OC * IC, 2), b = random_vec(OC, 3), R = random_vec(N * OC, 4);
  V y(N * OC);
  auto loss = [&] { ops::matmul_forward(y.data(), x.data(), w.data(), b.data(), N, IC, OC); return dot(R, y.data()); };
  V dx(N * IC, 0.5), dw(OC * IC, 0), db(OC, 0);
  loss();
  ops::matmul_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), N, IC, OC, false);
  check_gradient("matmul dx", x, dx, loss);
  check_gradient("matmul dW", w, dw, loss);
  check_gradient("matmul dbias", b, db, loss);
  V dx2(N * IC, 1.0);  // accumulate mode adds onto what is there
  ops::matmul_backward(dx2.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), N, IC, OC, true);
  for (int i = 0; i < N * IC; i++) CHECK_NEAR(dx2[i], dx[i] + 1.0, 1e-12);
}

static void test_layernorm(bool rms) {
  int N = 3, C = 9;
  V x = random_vec(N * C, 5, 2.0), w = random_vec(C, 6), b = random_vec(C, 7), R = random_vec(N * C, 8);
  V y(N * C), mean(N), rstd(N);
  auto loss = [&] {
    if (rms) ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C);
    else ops::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    return dot(R, y.data());
  };
  loss();
  V dx(N * C), dw(C, 0), db(C, 0);
  if (rms) ops::rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, C, false);
  else ops::layernorm_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), mean.data(),
                               rstd.data(), N, C, false);
  check_gradient(rms ? "rmsnorm dx" : "layernorm dx", x, dx, loss);
  check_gradient(rms ? "rmsnorm dw" : "layernorm dw", w, dw, loss);
  if (!rms) check_gradient("layernorm db", b, db, loss);
}

static void test_gelu() {
  int n = 37;
  V x = random_vec(n, 9, 2.0), R = random_vec(n, 10), y(n), dx(n);
  auto loss = [&] { ops::gelu_forward(y.data(), x.data(), n); return dot(R, y.data()); };
  ops::gelu_backward(dx.data(), x.data(), R.data(), n);
  check_gradient("gelu dx", x, dx, loss);
}

static void test_attention() {
  int B = 2, T = 5, C = 6, H = 3;
  V qkv = random_vec(B * T * 3 * C, 11), R = random_vec(B * T * C, 12);
  V out(B * T * C), att(B * H * T * T), dqkv(B * T * 3 * C, 7.0);  // stale values must be overwritten
  auto loss = [&] { ops::attention_forward(out.data(), att.data(), qkv.data(), B, T, C, H); return dot(R, out.data()); };
  loss();
  ops::attention_backward(dqkv.data(), R.data(), qkv.data(), att.data(), B, T, C, H);
  check_gradient("attention dqkv", qkv, dqkv, loss);
}

static void test_encoder() {
  int B = 2, T = 4, C = 5, Vv = 7;
  std::vector<int32_t> idx = {1, 3, 3, 0, 6, 1, 1, 2};  // repeated tokens accumulate
  V wte = random_vec(Vv * C, 13), wpe = random_vec(T * C, 14), R = random_vec(B * T * C, 15), y(B * T * C);
  auto loss = [&] { ops::encoder_forward(y.data(), idx.data(), wte.data(), wpe.data(), B, T, C); return dot(R, y.data()); };
  V dwte(Vv * C, 0), dwpe(T * C, 0);
  ops::encoder_backward(dwte.data(), dwpe.data(), R.data(), idx.data(), B, T, C);
  check_gradient("embedding dwte", wte, dwte, loss);
  check_gradient("embedding dwpe", wpe, dwpe, loss);
}

static void test_crossentropy() {
  int N = 4, Vv = 6;
  std::vector<int32_t> tgt = {0, 5, 2, 2};
  V logits = random_vec(N * Vv, 16, 3.0), work(N * Vv), losses(N);
  auto loss = [&] {
    work = logits;
    return ops::crossentropy_forward_backward(work.data(), losses.data(), tgt.data(), N, Vv, 0.0, false);
  };
  work = logits;
  double l = ops::crossentropy_forward_backward(work.data(), losses.data(), tgt.data(), N, Vv, 1.0 / N, true);
  CHECK_NEAR(l, loss(), 1e-14);
  work = logits;
  ops::crossentropy_forward_backward(work.data(), losses.data(), tgt.data(), N, Vv, 1.0 / N, true);
  V d = work;
  check_gradient("cross-entropy dlogits", logits, d, loss);
}

int main() {
  std::printf("finite-difference checks (float64):\n");
  test_matmul();
  test_layernorm(false);
  test_layernorm(true);
  test_gelu();
  test_attention();
  test_encoder();
  test_crossentropy();
  TEST_MAIN_END();
}
