// Causal attention kernels vs the CPU reference (computed in double on the same inputs), both paths
// ((a) GEMM + fused softmax, (b) flash) through the selector, fp32 and bf16 storage, awkward shapes:
// sequence lengths 1, 7, 33 and 67 (flash tiles of 64: a partial second tile), 1 or 3 heads, head sizes
// 8..128. Every block runs 256 threads (8 warps), so a missing barrier shows under the shuffled schedules.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <array>
#include <type_traits>
#include <cstdio>
#include <string>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/matmul.h"
#include "tests/kernels/emu/kernel_test.h"

namespace cu = scmoe::cuda;
using kt::bf16;

namespace {

std::vector<double> to_d(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }
double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// fp32 storage: fp32 arithmetic over at most 128-term dot products and 67-term sums, against double.
constexpr double kRtol32 = 1e-5, kAtol32 = 1e-5;  // atol is relative to the largest magnitude
// bf16 storage, inputs rounded to bf16 before the reference sees them. Flash keeps everything but its
// output in fp32: one rounding of the result (2^-9 relative) plus, in the backward, delta computed from
// the rounded output. The GEMM path also stores scores, probabilities and their gradients in bf16 (as
// llm.c does), each rounding 2^-9 relative, compounded through exp and the products.
constexpr double kRtolFlashBf16 = 1.0 / 64, kAtolFlashBf16 = 1.0 / 128;
constexpr double kRtolGemmBf16 = 1.0 / 16, kAtolGemmBf16 = 1.0 / 32;

const char* path_name(cu::AttentionPath p) {
  return p == cu::AttentionPath::flash ? "flash" : "gemm_softmax";
}

template <class T>
struct DeviceBuffers {
  kt::Buf<T> saved, scratch;
  kt::Buf<float> saved_f32, scratch_f32;
  explicit DeviceBuffers(const cu::AttentionBufferSizes& s)
      : saved(s.saved), scratch(s.scratch), saved_f32(s.saved_f32), scratch_f32(s.scratch_f32) {}
  cu::AttentionBuffers<T> view() const {
    return {saved.get(), saved_f32.get(), scratch.get(), scratch_f32.get()};
  }
};

template <class T>
std::vector<T> storage(const std::vector<float>& v);
template <>
std::vector<float> storage<float>(const std::vector<float>& v) {
  return v;
}
template <>
std::vector<bf16> storage<bf16>(const std::vector<float>& v) {
  return kt::to_bf16(v);
}

void check(int B, int Tn, int H, int hd, int schedules) {
  const int C = H * hd;
  const size_t n_qkv = (size_t)B * Tn * 3 * C, n_out = (size_t)B * Tn * C, n_att = (size_t)B * H * Tn * Tn;
  const uint64_t seed = uint64_t(B) * 1000003 + Tn * 1009 + H * 31 + hd;
  const std::vector<float> qkv = kt::random_vec(n_qkv, seed, -2.f, 2.f),
                           dout = kt::random_vec(n_out, seed + 1);
  const std::string shape = " B=" + std::to_string(B) + " T=" + std::to_string(Tn) +
                            " H=" + std::to_string(H) + " hd=" + std::to_string(hd);
  const bool flash_ok = cu::flash_attention_supports(hd);

  for (bool bf : {false, true}) {
    // The reference sees exactly the stored inputs.
    const std::vector<float> qkv_in = bf ? kt::to_floats(kt::to_bf16(qkv)) : qkv;
    const std::vector<float> dout_in = bf ? kt::to_floats(kt::to_bf16(dout)) : dout;
    std::vector<double> qd = to_d(qkv_in), dyd = to_d(dout_in), out(n_out), att(n_att), dqkv(n_qkv);
    scmoe::cpu::attention_forward<double>(out.data(), att.data(), qd.data(), B, Tn, C, H);
    scmoe::cpu::attention_backward<double>(dqkv.data(), dyd.data(), qd.data(), att.data(), B, Tn, C, H);
    const double mo = std::max(1.0, max_abs(out)), mg = std::max(1.0, max_abs(dqkv));

    for (cu::AttentionPath path : {cu::AttentionPath::gemm_softmax, cu::AttentionPath::flash}) {
      if (path == cu::AttentionPath::flash && !flash_ok) continue;
      const bool gemm = path == cu::AttentionPath::gemm_softmax;
      const double rtol = !bf ? kRtol32 : gemm ? kRtolGemmBf16 : kRtolFlashBf16;
      const double atol = !bf ? kAtol32 : gemm ? kAtolGemmBf16 : kAtolFlashBf16;
      const std::string name = std::string(path_name(path)) + (bf ? " bf16" : " fp32") + shape;
      const cu::AttentionBufferSizes sizes = cu::attention_buffer_sizes(path, B, Tn, C, H);
      auto run = [&](auto tag) {
        using T = decltype(tag);
        DeviceBuffers<T> buf(sizes);
        kt::Buf<T> d_qkv(storage<T>(qkv)), d_dout(storage<T>(dout)), d_out(n_out), d_dqkv(n_qkv);
        // dqkv is overwritten: start from NaNs so that an element the kernels miss shows.
        d_dqkv.upload(storage<T>(std::vector<float>(n_qkv, NAN)));
        cu::attention_forward<T>(path, d_out.get(), d_qkv.get(), buf.view(), B, Tn, C, H, nullptr);
        cu::attention_backward<T>(path, d_dqkv.get(), d_dout.get(), d_qkv.get(), d_out.get(), buf.view(), B,
                                  Tn, C, H, nullptr);
        kt::sync();
        kt::expect_close(name + " out", kt::to_floats(d_out.download()), out, rtol, atol * mo);
        kt::expect_close(name + " dqkv", kt::to_floats(d_dqkv.download()), dqkv, rtol, atol * mg);
        if (gemm) {  // the saved probabilities have the reference's layout
          std::vector<float> saved = kt::to_floats(buf.saved.download());
          std::vector<float> got_att(saved.begin() + 3 * n_out, saved.begin() + 3 * n_out + n_att);
          kt::expect_close(name + " att", got_att, att, rtol, atol);
        }
      };
      if (bf)
        run(bf16{});
      else
        kt::for_each_schedule(schedules, [&](int) { run(float{}); });
    }
  }
}

// The decode step: one query over a cache of Tk positions, against cpu::attention_decode in double.
template <class T>
void check_decode(int Tk, int H, int hd) {
  const int C = H * hd;
  std::vector<float> q = kt::to_floats(kt::store_as<T>(kt::random_vec(C, 100 + Tk, -2.f, 2.f)));
  std::vector<float> k = kt::to_floats(kt::store_as<T>(kt::random_vec(size_t(Tk) * C, 200 + Tk, -2.f, 2.f)));
  std::vector<float> v = kt::to_floats(kt::store_as<T>(kt::random_vec(size_t(Tk) * C, 300 + Tk)));
  std::vector<double> out(C), att(size_t(H) * Tk);
  scmoe::cpu::attention_decode(out.data(), att.data(), to_d(q).data(), to_d(k).data(), to_d(v).data(), Tk, C, H);
  const bool bf = std::is_same<T, bf16>::value;
  const std::string name = std::string("attention_decode ") + kt::type_name<T>() + " Tk=" + std::to_string(Tk) +
                           " H=" + std::to_string(H) + " hd=" + std::to_string(hd);
  kt::for_each_schedule(bf ? 1 : 3, [&](int) {
    kt::Buf<T> dq(kt::store_as<T>(q)), dk(kt::store_as<T>(k)), dv(kt::store_as<T>(v)), dout(C);
    kt::Buf<float> datt(size_t(H) * Tk);
    cu::attention_decode(dout.get(), datt.get(), dq.get(), dk.get(), dv.get(), Tk, C, H, nullptr);
    kt::sync();
    const double m = max_abs(out);
    kt::expect_close(name + " out", dout.download(), out, bf ? 1.0 / 128 : kRtol32, (bf ? 1.0 / 256 : kAtol32) * m);
    kt::expect_close(name + " att", datt.download(), att, kRtol32, kAtol32);
  });
}

}  // namespace

int main() {
  kt::require_device();
  std::vector<cu::GemmBackend> backends = {cu::GemmBackend::simt};
  if (!kt::kEmulated) backends.push_back(cu::GemmBackend::cublas);
  // (B, T, H, hd): every value of each parameter appears, T = 67 with each head size.
  const int shapes[][4] = {{1, 1, 1, 8},   {2, 7, 3, 16}, {1, 33, 3, 32}, {2, 67, 1, 64},  {1, 67, 3, 8},
                           {2, 33, 1, 16}, {1, 7, 1, 64}, {2, 67, 3, 32}, {1, 67, 1, 128}, {1, 33, 1, 96}};
  for (cu::GemmBackend be : backends) {
    cu::set_gemm_backend(be);
    std::printf("GEMM backend %s [%s]\n", cu::gemm_backend() == cu::GemmBackend::simt ? "simt" : "cublas",
                kt::mode());
    for (const auto& s : shapes) check(s[0], s[1], s[2], s[3], 3);
  }
  // Tk: one position, below one warp, several passes of the 128 threads; head sizes above 128 threads.
  for (const auto& d : {std::array<int, 3>{1, 1, 8}, {7, 3, 16}, {67, 2, 32}, {300, 1, 130}}) {
    check_decode<float>(d[0], d[1], d[2]);
    check_decode<bf16>(d[0], d[1], d[2]);
  }
  TEST_MAIN_END();
}
