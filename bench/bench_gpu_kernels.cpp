// Per-kernel GPU benchmark of the CUDA backend at GPT-2-small training shapes (docs/gpu_benchmarks.md):
// each kernel family of kernels/cuda/ in fp32 and bf16, timed with CUDA events (warm-up, then the median
// of N repetitions, L2 flushed before each), against the device's memory-bandwidth and matrix-rate floor.
//
//   build-*/bench_gpu_kernels [--batch 8] [--seq 1024] [--dtype both] [--filter SUBSTR] [--out FILE.md|.csv]
//   build-*/bench_gpu_kernels --device-info     (device, peaks and versions as `key value` lines;
//   bench/gpu.sh)
//
// Without a usable device it prints "SKIPPED: no usable CUDA device (<reason>)" and exits 0.
#include <cstdio>

#ifndef SCMOE_HAVE_CUDA
int main() {
  std::printf(
      "SKIPPED: no usable CUDA device (this build has no CUDA backend: configure with -DSCMOE_CUDA=ON)\n");
  return 0;
}
#else

#include <cuda_runtime.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "core/params.h"
#include "core/rng.h"
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/crossentropy.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/encoder.h"
#include "kernels/cuda/gates.h"
#include "kernels/cuda/gelu.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/router.h"
#include "train/config.h"

namespace cu = scmoe::cuda;
using cu::bf16;

#define BENCH_CUDA_CHECK(call)                                                          \
  do {                                                                                  \
    cudaError_t err_ = (call);                                                          \
    SCMOE_CHECK(err_ == cudaSuccess, #call << " failed: " << cudaGetErrorString(err_)); \
  } while (0)

namespace {

// ---- Options ------------------------------------------------------------------------------------------
struct Options {
  int B = 8, T = 1024, C = 768, H = 12, V = 50304, F = 3072, L = 12;
  int E = 8, K = 2, F_expert = 0;  // 0: F
  double capacity_factor = 2.0;
  int warmup = 2, max_reps = 25, min_reps = 3;
  double budget_ms = 150;  // GPU time per case for the timed repetitions (fewer reps for slow kernels)
  bool fp32 = true, bf16 = true, simt = true, flush = true, device_info = false;
  std::string filter, skip;
  std::vector<std::string> out;  // --out may repeat
  int device = 0;
  double peak_bf16 = 0, peak_fp32 = 0, peak_bw = 0;  // overrides (TFLOP/s, TFLOP/s, GB/s); 0: detect
};

const char* kUsage =
    "usage: bench_gpu_kernels [options]\n"
    "  Times each CUDA kernel family at GPT-2-small training shapes (fp32 and bf16) with CUDA events\n"
    "  (warm-up, then the median of N repetitions, L2 flushed before each) and compares it with the\n"
    "  device's memory-bandwidth and matrix-rate floor. Exits 0 with a SKIPPED line without a device.\n"
    "options:\n"
    "  --batch B (8) --seq T (1024) --d-model C (768) --heads H (12) --vocab V (50304) --d-ff F (3072)\n"
    "  --layers L (12: AdamW and the gradient norm run over the whole GPT's parameter count)\n"
    "  --experts E (8) --top-k K (2) --d-expert FE (F) --capacity-factor CF (2.0)\n"
    "  --dtype fp32|bf16|both (both)   --filter SUBSTR (only kernels whose name contains it)\n"
    "  --skip SUBSTR (leave out kernels whose name contains it, e.g. 'ref:' or 'SIMT')\n"
    "  --warmup N (2) --reps N (25, the most timed repetitions) --budget-ms MS (150 per case)\n"
    "  --no-simt (skip the SIMT GEMM twin, the slow part)   --no-flush (keep L2 warm between reps)\n"
    "  --peak-bf16 TFLOPS --peak-fp32 TFLOPS --peak-bw GBS (override the detected peaks)\n"
    "  --device N (0)   --out FILE (.csv: CSV, anything else: Markdown; repeatable)   --device-info   "
    "--help\n";

Options parse_options(int argc, char** argv) {
  Options o;
  auto need = [&](int& i) -> std::string {
    SCMOE_CHECK(i + 1 < argc, argv[i] << " needs a value");
    return argv[++i];
  };
  auto to_int = [](const std::string& flag, const std::string& v) {
    char* end = nullptr;
    long x = std::strtol(v.c_str(), &end, 10);
    SCMOE_CHECK(end && *end == 0 && x > 0 && x < (1L << 30),
                flag << ": expected a positive integer, got '" << v << "'");
    return int(x);
  };
  auto to_double = [](const std::string& flag, const std::string& v) {
    char* end = nullptr;
    double x = std::strtod(v.c_str(), &end);
    SCMOE_CHECK(end && *end == 0 && std::isfinite(x), flag << ": expected a number, got '" << v << "'");
    return x;
  };
  // Options with a value, by type; flags below.
  const std::pair<const char*, int*> ints[] = {
      {"--batch", &o.B},           {"--seq", &o.T},        {"--d-model", &o.C},
      {"--heads", &o.H},           {"--vocab", &o.V},      {"--d-ff", &o.F},
      {"--layers", &o.L},          {"--experts", &o.E},    {"--top-k", &o.K},
      {"--d-expert", &o.F_expert}, {"--reps", &o.max_reps}};
  const std::pair<const char*, double*> doubles[] = {{"--capacity-factor", &o.capacity_factor},
                                                     {"--budget-ms", &o.budget_ms},
                                                     {"--peak-bf16", &o.peak_bf16},
                                                     {"--peak-fp32", &o.peak_fp32},
                                                     {"--peak-bw", &o.peak_bw}};
  struct Flag {
    const char* name;
    bool* p;
    bool value;
  };
  const Flag flags[] = {{"--no-simt", &o.simt, false},
                        {"--no-flush", &o.flush, false},
                        {"--device-info", &o.device_info, true}};
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    bool done = false;
    for (const auto& [name, p] : ints)
      if (a == name) *p = to_int(a, need(i)), done = true;
    for (const auto& [name, p] : doubles)
      if (a == name) *p = to_double(a, need(i)), done = true;
    for (const Flag& f : flags)
      if (a == f.name) *f.p = f.value, done = true;
    if (done) continue;
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      std::exit(0);
    } else if (a == "--warmup") {
      o.warmup = int(to_double(a, need(i)));
      SCMOE_CHECK(o.warmup >= 0, "--warmup: expected a count >= 0");
    } else if (a == "--device") {
      o.device = int(to_double(a, need(i)));
    } else if (a == "--filter") {
      o.filter = need(i);
    } else if (a == "--skip") {
      o.skip = need(i);
    } else if (a == "--out") {
      o.out.push_back(need(i));
    } else if (a == "--dtype") {
      const std::string v = need(i);
      SCMOE_CHECK(v == "fp32" || v == "bf16" || v == "both",
                  "--dtype: expected fp32, bf16 or both, got '" << v << "'");
      o.fp32 = v != "bf16", o.bf16 = v != "fp32";
    } else {
      SCMOE_FAIL("unknown option '" << a << "' (see --help)");
    }
  }
  if (o.F_expert == 0) o.F_expert = o.F;
  o.min_reps = std::min(o.min_reps, o.max_reps);
  SCMOE_CHECK(o.C % o.H == 0, "--d-model " << o.C << " must be a multiple of --heads " << o.H);
  SCMOE_CHECK(o.K <= o.E, "--top-k " << o.K << " exceeds --experts " << o.E);
  SCMOE_CHECK(int64_t(o.B) * o.T * o.K < (int64_t(1) << 31), "B*T*K must fit in an int");
  return o;
}

// ---- The device and its peaks ------------------------------------------------------------------------
struct DeviceInfo {
  std::string name;
  int cc_major = 0, cc_minor = 0, sms = 0, bus_bits = 0, driver = 0, runtime = 0;
  double clock_ghz = 0, mem_clock_ghz = 0;
  size_t l2_bytes = 0, total_mem = 0;
  double peak_bw_gbs = 0;                              // 2 (DDR) x memory clock x bus width
  double peak_bf16 = 0, peak_tf32 = 0, peak_fp32 = 0;  // dense TFLOP/s: bf16 tensor, TF32 tensor, fp32 FMA
  std::string peak_source;
};

// Dense (no sparsity) datasheet rates in TFLOP/s. A row matches when every word in `words` is one of the
// device name's words (split at spaces and dashes, lower case); the first match wins, so the specific
// variants come before the plain name.
struct PeakRow {
  std::vector<std::string> words;
  const char* label;
  double bf16, tf32, fp32;
};
const std::vector<PeakRow>& peak_table() {
  static const std::vector<PeakRow> t = {
      {{"h100", "pcie"}, "H100 PCIe", 756, 378, 51.2},
      {{"h100", "nvl"}, "H100 NVL", 835, 418, 60},
      {{"h100"}, "H100 SXM", 989, 495, 67},
      {{"h200", "nvl"}, "H200 NVL", 835, 418, 60},
      {{"gh200"}, "GH200", 989, 495, 67},
      {{"h200"}, "H200 SXM", 989, 495, 67},
      {{"h800", "pcie"}, "H800 PCIe", 756, 378, 51.2},
      {{"h800"}, "H800 SXM", 989, 495, 67},
      {{"a100"}, "A100", 312, 156, 19.5},
      {{"a800"}, "A800", 312, 156, 19.5},
      {{"l40s"}, "L40S", 362, 183, 91.6},
      {{"l4"}, "L4", 121, 60, 30.3},
      {{"a10"}, "A10", 125, 62.5, 31.2},
  };
  return t;
}

std::vector<std::string> name_words(const std::string& name) {
  std::vector<std::string> w;
  std::string cur;
  for (char ch : name) {
    if (ch == ' ' || ch == '-' || ch == '_') {
      if (!cur.empty()) w.push_back(cur), cur.clear();
    } else
      cur += char(std::tolower((unsigned char)ch));
  }
  if (!cur.empty()) w.push_back(cur);
  return w;
}

// Falls back to SMs x clock x operations per clock per SM of the architecture (dense), labelled as such.
void set_peaks(DeviceInfo& d) {
  const auto words = name_words(d.name);
  for (const auto& row : peak_table()) {
    bool all = true;
    for (const auto& w : row.words) all = all && std::find(words.begin(), words.end(), w) != words.end();
    if (all) {
      d.peak_bf16 = row.bf16, d.peak_tf32 = row.tf32, d.peak_fp32 = row.fp32;
      d.peak_source = std::string("datasheet (dense) for ") + row.label;
      return;
    }
  }
  const int cc = d.cc_major * 10 + d.cc_minor;
  double bf16_clk = 1024, fp32_clk = 256;  // FLOP per clock per SM
  if (cc < 80)
    bf16_clk = 0, fp32_clk = 128;
  else if (cc == 80)
    bf16_clk = 2048, fp32_clk = 128;
  else if (cc < 90)
    bf16_clk = 1024;
  else if (cc < 100)
    bf16_clk = 4096;
  else if (cc < 120)
    bf16_clk = 8192;
  const double scale = d.sms * d.clock_ghz * 1e9 / 1e12;
  d.peak_bf16 = bf16_clk * scale, d.peak_tf32 = bf16_clk * scale / 2, d.peak_fp32 = fp32_clk * scale;
  std::ostringstream os;
  os << "estimated (no table entry): " << d.sms << " SMs x " << d.clock_ghz << " GHz x per-SM rate of cc "
     << d.cc_major << "." << d.cc_minor;
  d.peak_source = os.str();
}

// Returns false (with the reason) when no device is usable: no driver, a driver older than the runtime,
// no device, or a context that cannot be created.
bool query_device(int dev, DeviceInfo& d, std::string& reason) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    reason = cudaGetErrorString(e);
    return false;
  }
  if (n == 0) {
    reason = "the CUDA runtime reports 0 devices";
    return false;
  }
  if (dev < 0 || dev >= n) {
    reason = "--device " + std::to_string(dev) + " out of range (" + std::to_string(n) + " devices)";
    return false;
  }
  if ((e = cudaSetDevice(dev)) != cudaSuccess || (e = cudaFree(nullptr)) != cudaSuccess) {
    reason = cudaGetErrorString(e);
    return false;
  }
  cudaDeviceProp p{};
  BENCH_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  d.name = p.name;
  d.cc_major = p.major, d.cc_minor = p.minor, d.sms = p.multiProcessorCount;
  d.bus_bits = p.memoryBusWidth, d.l2_bytes = size_t(p.l2CacheSize), d.total_mem = p.totalGlobalMem;
  // CUDA 13's cudaDeviceProp has no clock fields any more: the attributes still report them (kHz).
  int clk = 0, mem_clk = 0, bus = 0;
  BENCH_CUDA_CHECK(cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, dev));
  BENCH_CUDA_CHECK(cudaDeviceGetAttribute(&mem_clk, cudaDevAttrMemoryClockRate, dev));
  BENCH_CUDA_CHECK(cudaDeviceGetAttribute(&bus, cudaDevAttrGlobalMemoryBusWidth, dev));
  if (bus > 0) d.bus_bits = bus;
  d.clock_ghz = clk / 1e6, d.mem_clock_ghz = mem_clk / 1e6;
  d.peak_bw_gbs = 2.0 * (mem_clk * 1e3) * (d.bus_bits / 8.0) / 1e9;
  BENCH_CUDA_CHECK(cudaDriverGetVersion(&d.driver));
  BENCH_CUDA_CHECK(cudaRuntimeGetVersion(&d.runtime));
  set_peaks(d);
  return true;
}

std::string version_string(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

// ---- Device buffers and random contents ---------------------------------------------------------------
// The backend's named device allocations (cuda::DeviceArray: an out-of-memory error names the buffer),
// never empty so that kernels always get a valid pointer.
template <class T>
struct DevBuf : cu::DeviceArray<T> {
  explicit DevBuf(size_t n, const char* what = "benchmark buffer") : cu::DeviceArray<T>(std::max<size_t>(n, 1), what) {}
};

template <class T>
T from_float(float x) {
  if constexpr (std::is_same<T, bf16>::value)
    return __float2bfloat16(x);
  else
    return T(x);
}

// Uniform values in [-scale*sqrt(3), scale*sqrt(3)) (unit variance times scale), from a host pattern of
// up to 4 Mi elements that is uploaded repeatedly: large buffers repeat it, which timing does not see.
template <class T>
void fill_random(T* dst, size_t n, float scale, uint64_t seed) {
  const size_t chunk = std::min<size_t>(n, size_t(1) << 22);
  std::vector<T> h(chunk);
  scmoe::Rng rng(seed);
  for (auto& x : h) x = from_float<T>(scale * 1.7320508f * float(2.0 * rng.uniform() - 1.0));
  for (size_t off = 0; off < n; off += chunk)
    BENCH_CUDA_CHECK(
        cudaMemcpy(dst + off, h.data(), std::min(chunk, n - off) * sizeof(T), cudaMemcpyHostToDevice));
  BENCH_CUDA_CHECK(cudaDeviceSynchronize());  // before kernels on the non-blocking stream read it
}
template <class T>
void upload(T* dst, const std::vector<T>& h) {
  BENCH_CUDA_CHECK(cudaMemcpy(dst, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  BENCH_CUDA_CHECK(cudaDeviceSynchronize());
}

// ---- Timing and results --------------------------------------------------------------------------------
enum class Rate { memory, bf16_tensor, fp32_fma };  // which compute peak bounds the kernel's FLOPs
const char* rate_name(Rate r) {
  return r == Rate::bf16_tensor ? "bf16 TC" : r == Rate::fp32_fma ? "fp32" : "-";
}

struct Row {
  std::string kernel, dtype, shape;
  double bytes = 0, flops = 0;
  Rate rate = Rate::memory;
  double us = 0;  // median
  double us_min = 0;
  int reps = 0;
  std::string error;
};

struct Bench {
  Options opt;
  DeviceInfo dev;
  cudaStream_t stream = nullptr;
  std::unique_ptr<DevBuf<char> > flush_buf;
  std::vector<Row> rows;
  int failures = 0;

  bool wants(const std::string& name) const {
    return (opt.filter.empty() || name.find(opt.filter) != std::string::npos) &&
           (opt.skip.empty() || name.find(opt.skip) == std::string::npos);
  }
  // A family allocates its buffers only when --filter selects one of its kernels.
  bool wants_any(std::initializer_list<std::string> names) const {
    for (const auto& n : names)
      if (wants(n)) return true;
    return false;
  }
  double peak_flops(Rate r) const {  // TFLOP/s
    return r == Rate::bf16_tensor ? dev.peak_bf16 : r == Rate::fp32_fma ? dev.peak_fp32 : 0;
  }
  // Flushing L2 (a memset of twice its size) keeps the repetitions honest: at these shapes many operands
  // fit in Hopper's 50 MB L2 and a warm cache would report more than DRAM bandwidth.
  void flush() {
    if (flush_buf) BENCH_CUDA_CHECK(cudaMemsetAsync(flush_buf->get(), 0, flush_buf->size(), stream));
  }
  void sync() { BENCH_CUDA_CHECK(cudaStreamSynchronize(stream)); }

  // Times op: warm-up runs, one run to size the repetitions to the budget, then reps runs each between
  // its own pair of events (after a flush); records the median.
  void time(const std::string& kernel, const std::string& dtype, const std::string& shape, double bytes,
            double flops, Rate rate, const std::function<void()>& op) {
    if (!wants(kernel)) return;
    Row r;
    r.kernel = kernel, r.dtype = dtype, r.shape = shape, r.bytes = bytes, r.flops = flops, r.rate = rate;
    std::vector<cudaEvent_t> ev;
    auto event = [&]() {
      cudaEvent_t e;
      BENCH_CUDA_CHECK(cudaEventCreate(&e));
      ev.push_back(e);
      return e;
    };
    try {
      // Uploads and memsets went through the legacy stream, which our non-blocking stream does not wait for.
      BENCH_CUDA_CHECK(cudaDeviceSynchronize());
      for (int i = 0; i < opt.warmup; i++) op();
      sync();
      cudaEvent_t a = event(), b = event();
      flush();
      BENCH_CUDA_CHECK(cudaEventRecord(a, stream));
      op();
      BENCH_CUDA_CHECK(cudaEventRecord(b, stream));
      sync();
      float ms = 0;
      BENCH_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      const int reps = std::clamp(int(opt.budget_ms / std::max(ms, 1e-3f)), opt.min_reps, opt.max_reps);
      std::vector<std::pair<cudaEvent_t, cudaEvent_t> > pairs;
      for (int i = 0; i < reps; i++) pairs.push_back({event(), event()});
      for (auto& [e0, e1] : pairs) {
        flush();
        BENCH_CUDA_CHECK(cudaEventRecord(e0, stream));
        op();
        BENCH_CUDA_CHECK(cudaEventRecord(e1, stream));
      }
      sync();
      BENCH_CUDA_CHECK(cudaGetLastError());
      std::vector<double> t;
      for (auto& [e0, e1] : pairs) {
        BENCH_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms * 1e3);
      }
      std::sort(t.begin(), t.end());
      r.us = t.size() % 2 ? t[t.size() / 2] : 0.5 * (t[t.size() / 2 - 1] + t[t.size() / 2]);
      r.us_min = t.front();
      r.reps = reps;
    } catch (const std::exception& e) {
      r.error = e.what();
      failures++;
      cudaGetLastError();  // clear a non-sticky error so that later cases can run
    }
    for (cudaEvent_t e : ev) cudaEventDestroy(e);
    print_row(r);
    rows.push_back(r);
  }

  struct Derived {
    double gbs, pct_bw, tflops, pct_peak, floor_us, eff;
    const char* bound;
  };
  Derived derive(const Row& r) const {
    Derived d{};
    const double peak = peak_flops(r.rate);
    d.gbs = r.us > 0 ? r.bytes / (r.us * 1e3) : 0;
    d.pct_bw = dev.peak_bw_gbs > 0 ? 100 * d.gbs / dev.peak_bw_gbs : 0;
    d.tflops = r.us > 0 ? r.flops / (r.us * 1e6) : 0;
    d.pct_peak = peak > 0 ? 100 * d.tflops / peak : 0;
    const double mem_us = dev.peak_bw_gbs > 0 ? r.bytes / (dev.peak_bw_gbs * 1e3) : 0;
    const double math_us = peak > 0 ? r.flops / (peak * 1e6) : 0;
    d.floor_us = std::max(mem_us, math_us);
    d.bound = math_us > mem_us ? "math" : "memory";
    d.eff = r.us > 0 ? 100 * d.floor_us / r.us : 0;
    return d;
  }

  static std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
  }

  void print_header() const {
    std::printf("%-40s %-5s %-30s %10s %8s %6s %8s %7s %-7s %9s %6s %-6s\n", "kernel", "dtype", "shape",
                "time_us", "GB/s", "%BW", "TFLOP/s", "%peak", "rate", "floor_us", "%floor", "bound");
  }
  void print_row(const Row& r) const {
    if (!r.error.empty()) {
      std::printf("%-40s %-5s %-30s ERROR: %s\n", r.kernel.c_str(), r.dtype.c_str(), r.shape.c_str(),
                  r.error.c_str());
    } else {
      const Derived d = derive(r);
      std::printf("%-40s %-5s %-30s %10.1f %8.1f %6.1f %8s %7s %-7s %9.1f %6.1f %-6s\n", r.kernel.c_str(),
                  r.dtype.c_str(), r.shape.c_str(), r.us, d.gbs, d.pct_bw,
                  r.flops > 0 ? fmt("%.1f", d.tflops).c_str() : "-",
                  r.flops > 0 && r.rate != Rate::memory ? fmt("%.1f", d.pct_peak).c_str() : "-",
                  rate_name(r.rate), d.floor_us, d.eff, d.bound);
    }
    std::fflush(stdout);
  }

  void write_out(const std::string& path) const {
    std::ofstream f(path);
    SCMOE_CHECK_IO(f.good(), path, "cannot write");
    const bool csv = path.size() >= 4 && path.compare(path.size() - 4, 4, ".csv") == 0;
    if (csv) {
      f << "kernel,dtype,shape,time_us,min_us,reps,bytes,flops,gb_s,pct_bw,tflop_s,pct_peak,rate,floor_us,"
           "pct_floor,bound,error\n";
      for (const Row& r : rows) {
        const Derived d = derive(r);
        f << '"' << r.kernel << "\"," << r.dtype << ",\"" << r.shape << "\"," << r.us << ',' << r.us_min
          << ',' << r.reps << ',' << r.bytes << ',' << r.flops << ',' << d.gbs << ',' << d.pct_bw << ','
          << d.tflops << ',' << d.pct_peak << ',' << rate_name(r.rate) << ',' << d.floor_us << ',' << d.eff
          << ',' << d.bound << ",\"" << r.error << "\"\n";
      }
    } else {
      f << "| kernel | dtype | shape | time (us) | GB/s | % of peak BW | TFLOP/s | % of peak FLOP/s | floor "
           "(us) "
           "| floor / time | bound |\n";
      f << "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
      for (const Row& r : rows) {
        if (!r.error.empty()) {
          f << "| " << r.kernel << " | " << r.dtype << " | " << r.shape << " | error: " << r.error
            << " | | | | | | | |\n";
          continue;
        }
        const Derived d = derive(r);
        f << "| " << r.kernel << " | " << r.dtype << " | " << r.shape << " | " << fmt("%.1f", r.us) << " | "
          << fmt("%.0f", d.gbs) << " | " << fmt("%.1f", d.pct_bw) << " | "
          << (r.flops > 0 ? fmt("%.1f", d.tflops) : "-") << " | "
          << (r.flops > 0 && r.rate != Rate::memory ? fmt("%.1f", d.pct_peak) + " (" + rate_name(r.rate) + ")"
                                                    : std::string("-"))
          << " | " << fmt("%.1f", d.floor_us) << " | " << fmt("%.0f%%", d.eff) << " | " << d.bound << " |\n";
      }
    }
    SCMOE_CHECK_IO(f.good(), path, "cannot write");
    std::printf("wrote %s\n", path.c_str());
  }
};

template <class T>
const char* dname() {
  return std::is_same<T, bf16>::value ? "bf16" : "fp32";
}
// The matrix rate GEMMs of storage type T run at: cuBLASLt with CUBLAS_COMPUTE_32F (kernels/cuda/matmul.cu)
// puts bf16 on the tensor cores and keeps fp32 in full fp32 (no TF32) on the FMA units.
template <class T>
Rate gemm_rate() {
  return std::is_same<T, bf16>::value ? Rate::bf16_tensor : Rate::fp32_fma;
}

std::string shape_str(std::initializer_list<std::pair<const char*, long long> > kv) {
  std::string s;
  for (const auto& [k, v] : kv) s += (s.empty() ? "" : " ") + std::string(k) + "=" + std::to_string(v);
  return s;
}

// Restores the cuBLASLt backend however a SIMT case ends.
struct GemmBackendGuard {
  explicit GemmBackendGuard(cu::GemmBackend b) { cu::set_gemm_backend(b); }
  ~GemmBackendGuard() { cu::set_gemm_backend(cu::GemmBackend::cublas); }
};

// ---- Reference ceilings: a device-to-device copy and a large GEMM through our launcher -----------------
void bench_reference(Bench& b) {
  if (b.wants("ref: memcpy device-to-device")) {
    const size_t n = size_t(1) << 30;
    DevBuf<char> src(n, "memcpy source"), dst(n, "memcpy destination");
    BENCH_CUDA_CHECK(cudaMemset(src.get(), 1, n));
    b.time("ref: memcpy device-to-device", "-", "1 GiB", 2.0 * n, 0, Rate::memory, [&] {
      BENCH_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), n, cudaMemcpyDeviceToDevice, b.stream));
    });
  }
  auto gemm_ref = [&](auto tag, int M) {
    using T = decltype(tag);
    const std::string name = std::string("ref: gemm ") + std::to_string(M) + "^3 (cuBLASLt)";
    if (!b.wants(name) || (std::is_same<T, float>::value ? !b.opt.fp32 : !b.opt.bf16)) return;
    const size_t mm = size_t(M) * M;
    DevBuf<T> A(mm), B(mm), C(mm);
    fill_random(A.get(), mm, 1.f, 1), fill_random(B.get(), mm, 1.f, 2);
    b.time(name, dname<T>(), shape_str({{"M", M}, {"N", M}, {"K", M}}), 3.0 * mm * sizeof(T), 2.0 * mm * M,
           gemm_rate<T>(), [&] {
             cu::gemm<T, T>(false, true, M, M, M, 1.f, A.get(), M, B.get(), M, 0.f, C.get(), M, b.stream);
           });
  };
  gemm_ref(bf16{}, 8192);
  gemm_ref(float{}, 4096);
}

// ---- Dense GPT kernel families ------------------------------------------------------------------------
template <class T>
void bench_dense(Bench& b) {
  const Options& o = b.opt;
  const int B = o.B, Tn = o.T, C = o.C, H = o.H, V = o.V, F = o.F;
  const int N = B * Tn;
  const double s = sizeof(T), NC = double(N) * C;
  const std::string dt = dname<T>();
  const std::string sh_nc = shape_str({{"N", N}, {"C", C}});

  // Token ids (also the targets of the cross-entropy).
  std::vector<int32_t> idx_h(N);
  {
    scmoe::Rng rng(7);
    for (auto& x : idx_h) x = int32_t(rng.next_u64() % uint64_t(V));
  }
  const double distinct = double(std::set<int32_t>(idx_h.begin(), idx_h.end()).size());
  DevBuf<int32_t> idx(N, "token ids");
  upload(idx.get(), idx_h);

  if (b.wants_any({"encoder_forward", "encoder_backward"})) {
    DevBuf<T> wte(size_t(V) * C), wpe(size_t(Tn) * C), out(N * size_t(C));
    DevBuf<float> dwte(size_t(V) * C), dwpe(size_t(Tn) * C);
    fill_random(wte.get(), wte.size(), 0.02f, 11), fill_random(wpe.get(), wpe.size(), 0.02f, 12);
    fill_random(out.get(), out.size(), 1.f, 13);  // the backward's dout when the forward is filtered out
    BENCH_CUDA_CHECK(cudaMemset(dwte.get(), 0, dwte.bytes()));
    BENCH_CUDA_CHECK(cudaMemset(dwpe.get(), 0, dwpe.bytes()));
    const size_t ws_bytes = cu::encoder_backward_workspace_bytes(B, Tn, V);
    DevBuf<char> ws(ws_bytes, "encoder workspace");
    const std::string sh = shape_str({{"B", B}, {"T", Tn}, {"C", C}, {"V", V}});
    b.time("encoder_forward", dt, sh, 4.0 * N + 2 * NC * s + double(Tn) * C * s, 0, Rate::memory,
           [&] { cu::encoder_forward(out.get(), idx.get(), wte.get(), wpe.get(), B, Tn, C, b.stream); });
    // dwte rows of the distinct tokens and all of dwpe are read and written (fp32).
    b.time("encoder_backward", dt, sh, NC * s + 4.0 * N + (distinct + Tn) * C * 8.0, 0, Rate::memory, [&] {
      cu::encoder_backward(dwte.get(), dwpe.get(), out.get(), idx.get(), B, Tn, C, V, ws.get(), ws_bytes,
                           b.stream);
    });
  }

  if (b.wants_any({"layernorm_forward", "layernorm_backward", "fused_residual_layernorm_forward", "add"})) {
    DevBuf<T> x(N * size_t(C)), y(N * size_t(C)), z(N * size_t(C)), r(N * size_t(C)), w(C), bias(C);
    DevBuf<float> mean(N), rstd(N), dw(C), db(C);
    fill_random(x.get(), x.size(), 1.f, 21), fill_random(y.get(), y.size(), 1.f, 22);
    fill_random(w.get(), C, 1.f, 23), fill_random(bias.get(), C, 0.1f, 24);
    BENCH_CUDA_CHECK(cudaMemset(dw.get(), 0, dw.bytes()));
    BENCH_CUDA_CHECK(cudaMemset(db.get(), 0, db.bytes()));
    const size_t ws_bytes = cu::norm_backward_workspace_bytes(N, C);
    DevBuf<char> ws(ws_bytes, "norm workspace");
    b.time("layernorm_forward", dt, sh_nc, 2 * NC * s + 2.0 * C * s + 8.0 * N, 0, Rate::memory, [&] {
      cu::layernorm_forward(z.get(), mean.get(), rstd.get(), x.get(), w.get(), bias.get(), N, C, b.stream);
    });
    // The backward's statistics, whether or not the forward case ran.
    cu::layernorm_forward(z.get(), mean.get(), rstd.get(), x.get(), w.get(), bias.get(), N, C, b.stream);
    b.time("layernorm_backward", dt, sh_nc, 3 * NC * s + C * s + 8.0 * N + 16.0 * C, 0, Rate::memory, [&] {
      cu::layernorm_backward(r.get(), dw.get(), db.get(), y.get(), x.get(), w.get(), mean.get(), rstd.get(),
                             N, C, false, ws.get(), ws_bytes, b.stream);
    });
    b.time("fused_residual_layernorm_forward", dt, sh_nc, 4 * NC * s + 2.0 * C * s + 8.0 * N, 0, Rate::memory,
           [&] {
             cu::fused_residual_layernorm_forward(r.get(), z.get(), mean.get(), rstd.get(), x.get(), y.get(),
                                                  w.get(), bias.get(), N, C, b.stream);
           });
    b.time("add", dt, shape_str({{"n", (long long)(NC)}}), 3 * NC * s, 0, Rate::memory,
           [&] { cu::add(z.get(), x.get(), y.get(), int64_t(NC), b.stream); });
  }

  if (b.wants_any({"gelu_forward", "gelu_backward", "bias_backward"})) {
    const size_t n = size_t(N) * F;
    DevBuf<T> h(n), g(n), dg(n);
    DevBuf<float> dbias(F);
    fill_random(h.get(), n, 1.f, 31), fill_random(dg.get(), n, 1.f, 32);
    BENCH_CUDA_CHECK(cudaMemset(dbias.get(), 0, dbias.bytes()));
    const std::string sh = shape_str({{"n", (long long)n}});
    b.time("gelu_forward", dt, sh, 2.0 * n * s, 0, Rate::memory,
           [&] { cu::gelu_forward(g.get(), h.get(), int64_t(n), b.stream); });
    b.time("gelu_backward", dt, sh, 3.0 * n * s, 0, Rate::memory,
           [&] { cu::gelu_backward(g.get(), h.get(), dg.get(), int64_t(n), b.stream); });
    const size_t ws_bytes = cu::bias_backward_workspace_bytes(N, F);
    DevBuf<char> ws(ws_bytes, "bias workspace");
    b.time("bias_backward", dt, shape_str({{"N", N}, {"OC", F}}), double(n) * s + 8.0 * F, 0, Rate::memory,
           [&] { cu::bias_backward(dbias.get(), dg.get(), N, F, ws.get(), ws_bytes, b.stream); });
  }

  if (b.wants("crossentropy_forward_backward")) {
    const size_t n = size_t(N) * V;
    DevBuf<T> logits(n, "logits");
    DevBuf<float> losses(N);
    fill_random(logits.get(), n, 2.f, 41);
    b.time("crossentropy_forward_backward", dt, shape_str({{"N", N}, {"V", V}}), 2.0 * n * s + 8.0 * N, 0,
           Rate::memory, [&] {
             cu::crossentropy_forward_backward(logits.get(), losses.get(), idx.get(), N, V, 1.f / N, true,
                                               b.stream);
           });
  }

  if (b.wants_any({"attention_forward gemm_softmax", "attention_backward gemm_softmax",
                   "attention_forward flash", "attention_backward flash"})) {
    DevBuf<T> qkv(3 * size_t(N) * C), out(size_t(N) * C), dout(size_t(N) * C), dqkv(3 * size_t(N) * C);
    fill_random(qkv.get(), qkv.size(), 1.f, 51), fill_random(dout.get(), dout.size(), 1.f, 52);
    const std::string sh = shape_str({{"B", B}, {"T", Tn}, {"C", C}, {"H", H}});
    // Model FLOPs as in the MFU formula (12 L T C per token): the full T x T products, causal or not.
    const double f_fwd = 4.0 * B * double(Tn) * Tn * C, f_bwd = 2 * f_fwd;
    const double BHT = double(B) * H * Tn;
    for (cu::AttentionPath path : {cu::AttentionPath::gemm_softmax, cu::AttentionPath::flash}) {
      const bool flash = path == cu::AttentionPath::flash;
      const std::string tag = flash ? " flash" : " gemm_softmax";
      if (!b.wants("attention_forward" + tag) && !b.wants("attention_backward" + tag)) continue;
      if (flash && !cu::flash_attention_supports(C / H)) continue;
      const cu::AttentionBufferSizes sz = cu::attention_buffer_sizes(path, B, Tn, C, H);
      DevBuf<T> saved(sz.saved, "attention saved"), scratch(sz.scratch, "attention scratch");
      DevBuf<float> saved_f32(sz.saved_f32), scratch_f32(sz.scratch_f32);
      cu::AttentionBuffers<T> buf{saved.get(), saved_f32.get(), scratch.get(), scratch_f32.get()};
      // Bytes: the launcher's inputs read and outputs written once (the saved tensors count as outputs of
      // the forward and inputs of the backward; scratch round trips do not count).
      const double saved_bytes = double(sz.saved) * s + double(sz.saved_f32) * 4;
      const Rate rate = flash ? Rate::fp32_fma : gemm_rate<T>();
      b.time("attention_forward" + tag, dt, sh, 4 * NC * s + saved_bytes, f_fwd, rate,
             [&] { cu::attention_forward(path, out.get(), qkv.get(), buf, B, Tn, C, H, b.stream); });
      // The saved tensors the backward reads, whether or not the forward case ran.
      cu::attention_forward(path, out.get(), qkv.get(), buf, B, Tn, C, H, b.stream);
      // Backward: gemm_softmax reads dout and the saved qkvr / probabilities; flash reads dout, qkv, out and
      // lse and writes delta. Both write dqkv.
      const double bwd_bytes = (flash ? 5 * NC * s + 2 * BHT * 4 : NC * s + saved_bytes) + 3 * NC * s;
      b.time("attention_backward" + tag, dt, sh, bwd_bytes, f_bwd, rate, [&] {
        cu::attention_backward(path, dqkv.get(), dout.get(), qkv.get(), out.get(), buf, B, Tn, C, H,
                               b.stream);
      });
    }
  }

  // Linear layers at the GPT's shapes (the lm head is the tied wte: no bias); gradients of bf16 weights
  // are fp32 as in the model (matmul_backward<bf16, float>).
  using TG = float;
  struct Shape {
    const char* name;
    int IC, OC;
    bool bias;
  };
  const std::vector<Shape> shapes = {{"qkv", C, 3 * C, true},  {"attn_proj", C, C, true},
                                     {"fc", C, F, true},       {"fc_proj", F, C, true},
                                     {"lm_head", C, V, false}, {"router_gate", C, o.E, false}};
  for (const bool simt : {false, true}) {
    if (simt && !o.simt) continue;
    const std::string impl = simt ? " (SIMT)" : " (cuBLASLt)";
    for (const Shape& sp : shapes) {
      const std::string fwd = std::string("matmul_forward ") + sp.name + impl;
      const std::string bwd = std::string("matmul_backward ") + sp.name + impl;
      if (!b.wants(fwd) && !b.wants(bwd)) continue;
      GemmBackendGuard guard(simt ? cu::GemmBackend::simt : cu::GemmBackend::cublas);
      const size_t ni = size_t(N) * sp.IC, no = size_t(N) * sp.OC, nw = size_t(sp.OC) * sp.IC;
      DevBuf<T> inp(ni), out(no), W(nw), bias(sp.OC), dinp(ni);
      DevBuf<TG> dW(nw), dbias(sp.OC);
      fill_random(inp.get(), ni, 1.f, 61), fill_random(out.get(), no, 1.f, 62);
      fill_random(W.get(), nw, 0.02f, 63), fill_random(bias.get(), size_t(sp.OC), 0.02f, 64);
      BENCH_CUDA_CHECK(cudaMemset(dW.get(), 0, dW.bytes()));
      BENCH_CUDA_CHECK(cudaMemset(dbias.get(), 0, dbias.bytes()));
      const std::string sh = shape_str({{"N", N}, {"IC", sp.IC}, {"OC", sp.OC}});
      const double flops = 2.0 * N * sp.IC * sp.OC;
      const Rate rate = simt ? Rate::fp32_fma : gemm_rate<T>();
      const T* bptr = sp.bias ? bias.get() : nullptr;
      b.time(fwd, dt, sh, (double(ni) + nw + no + (sp.bias ? sp.OC : 0)) * s, flops, rate,
             [&] { cu::matmul_forward<T>(out.get(), inp.get(), W.get(), bptr, N, sp.IC, sp.OC, b.stream); });
      // The dout tile is reused as the forward's output buffer: both are [N, OC] of T.
      const double bwd_bytes =
          (double(no) + ni + nw + ni) * s + 2.0 * nw * sizeof(TG) + (sp.bias ? 2.0 * sp.OC * sizeof(TG) : 0);
      b.time(bwd, dt, sh, bwd_bytes, 2 * flops, rate, [&] {
        cu::matmul_backward<T, TG>(dinp.get(), dW.get(), sp.bias ? dbias.get() : nullptr, out.get(),
                                   inp.get(), W.get(), N, sp.IC, sp.OC, false, b.stream);
      });
    }
  }
}

// ---- Optimizer: AdamW and the global gradient norm over the whole GPT ---------------------------------
scmoe::ParamTable gpt_table(const Options& o) {
  using scmoe::Init;
  scmoe::ParamTable t;
  const int64_t C = o.C, F = o.F;
  t.add("wte", {o.V, C}, true, Init::normal);
  t.add("wpe", {o.T, C}, true, Init::normal);
  for (int l = 0; l < o.L; l++) {
    const std::string p = "blocks." + std::to_string(l);
    t.add(p + ".ln1.weight", {C}, false, Init::ones), t.add(p + ".ln1.bias", {C}, false, Init::zeros);
    t.add(p + ".attn.qkv.weight", {3 * C, C}, true, Init::normal),
        t.add(p + ".attn.qkv.bias", {3 * C}, false, Init::zeros);
    t.add(p + ".attn.proj.weight", {C, C}, true, Init::normal),
        t.add(p + ".attn.proj.bias", {C}, false, Init::zeros);
    t.add(p + ".ln2.weight", {C}, false, Init::ones), t.add(p + ".ln2.bias", {C}, false, Init::zeros);
    t.add(p + ".mlp.fc.weight", {F, C}, true, Init::normal),
        t.add(p + ".mlp.fc.bias", {F}, false, Init::zeros);
    t.add(p + ".mlp.proj.weight", {C, F}, true, Init::normal),
        t.add(p + ".mlp.proj.bias", {C}, false, Init::zeros);
  }
  t.add("ln_f.weight", {C}, false, Init::ones), t.add("ln_f.bias", {C}, false, Init::zeros);
  return t;
}

void bench_optimizer(Bench& b) {
  if (!b.wants_any({"adamw_step", "adamw_step (+bf16 copy)", "grad_norm_squared"})) return;
  const scmoe::ParamTable table = gpt_table(b.opt);
  const size_t P = table.total();
  const double n = double(table.count());
  const std::vector<cu::ParamChunk> chunks_h = cu::param_chunks(table);
  DevBuf<cu::ParamChunk> chunks(chunks_h.size(), "chunk table");
  upload(chunks.get(), chunks_h);
  DevBuf<float> params(P, "params"), m(P, "m"), v(P, "v"), grads(P, "grads"), mult(2);
  DevBuf<bf16> params_bf16(P, "bf16 params");
  DevBuf<double> sq(4), scratch(cu::grad_norm_scratch());
  fill_random(params.get(), P, 0.02f, 71), fill_random(grads.get(), P, 1e-3f, 72);
  BENCH_CUDA_CHECK(cudaMemset(m.get(), 0, m.bytes()));
  BENCH_CUDA_CHECK(cudaMemset(v.get(), 0, v.bytes()));
  const float one[2] = {1.f, 1.f};
  BENCH_CUDA_CHECK(cudaMemcpy(mult.get(), one, sizeof one, cudaMemcpyHostToDevice));
  scmoe::OptimConfig cfg;
  const std::string sh =
      "P=" + std::to_string(table.count()) + " (" + std::to_string(b.opt.L) + "-layer GPT)";
  int64_t t = 0;
  // fp32 precision: params, m, v, grads read, params, m, v written; bf16 precision also writes the bf16 copy.
  if (b.opt.fp32)
    b.time("adamw_step", "fp32", sh, 28.0 * n, 0, Rate::memory, [&] {
      cu::adamw_step(params.get(), m.get(), v.get(), grads.get(), nullptr, chunks.get(), int(chunks_h.size()),
                     cfg, 1e-4, ++t, mult.get(), cu::Bf16Rounding::nearest, 1, b.stream);
    });
  if (b.opt.bf16)
    b.time("adamw_step (+bf16 copy)", "bf16", sh, 30.0 * n, 0, Rate::memory, [&] {
      cu::adamw_step(params.get(), m.get(), v.get(), grads.get(), params_bf16.get(), chunks.get(),
                     int(chunks_h.size()), cfg, 1e-4, ++t, mult.get(), cu::Bf16Rounding::nearest, 1,
                     b.stream);
    });
  b.time("grad_norm_squared", "fp32", sh, 4.0 * double(P), 0, Rate::memory,
         [&] { cu::grad_norm_squared(sq.get(), scratch.get(), grads.get(), int64_t(P), b.stream); });
}

// ---- MoE: router, dispatch plan, permute / combine, expert GEMMs, ScMoE gate -----------------------------
// Top-k expert ids per token, distinct within a token, uniformly spread (a balanced router).
std::vector<int32_t> random_topk(int N, int k, int E, uint64_t seed) {
  std::vector<int32_t> idx(size_t(N) * k);
  scmoe::Rng rng(seed);
  for (int n = 0; n < N; n++)
    for (int j = 0; j < k; j++) {
      int32_t e;
      bool dup;
      do {
        e = int32_t(rng.next_u64() % uint64_t(E));
        dup = false;
        for (int i = 0; i < j; i++) dup = dup || idx[size_t(n) * k + i] == e;
      } while (dup);
      idx[size_t(n) * k + j] = e;
    }
  return idx;
}

void bench_dispatch_plan(Bench& b) {
  if (!b.wants_any({"dispatch_plan", "route_sort"})) return;
  const Options& o = b.opt;
  const int N = o.B * o.T, k = o.K, E = o.E;
  const int64_t cap = int64_t(k) * int64_t(std::ceil(o.capacity_factor * N / E));
  DevBuf<int32_t> idx(size_t(N) * k), pos(size_t(N) * k);
  DevBuf<int64_t> counts(E), offsets(E + 1), dropped(1), bucket(size_t(E) * k);
  upload(idx.get(), random_topk(N, k, E, 81));
  const size_t ws_bytes = cu::dispatch_workspace_bytes(N, k, E);
  DevBuf<char> ws(ws_bytes, "dispatch workspace");
  const std::string sh = shape_str({{"N", N}, {"k", k}, {"E", E}, {"cap", cap}});
  b.time("dispatch_plan", "int32", sh, 8.0 * N * k, 0, Rate::memory, [&] {
    cu::dispatch_plan(idx.get(), N, k, E, cap, pos.get(), counts.get(), offsets.get(), dropped.get(),
                      ws.get(), b.stream);
  });
  b.time("route_sort", "int32", sh, 8.0 * N * k, 0, Rate::memory,
         [&] { cu::route_sort(idx.get(), N, k, E, pos.get(), bucket.get(), ws.get(), b.stream); });
}

template <class T>
void bench_moe(Bench& b) {
  const Options& o = b.opt;
  const int N = o.B * o.T, k = o.K, E = o.E, C = o.C, FE = o.F_expert;
  const double s = sizeof(T), NC = double(N) * C, Nk = double(N) * k;
  const std::string dt = dname<T>();

  if (b.wants_any({"router_forward", "router_backward"})) {
    DevBuf<T> logits(size_t(N) * E), dlogits(size_t(N) * E);
    DevBuf<float> probs(size_t(N) * E), gate(size_t(N) * k), dgate(size_t(N) * k), pmean(E), losses(3);
    DevBuf<int32_t> topk(size_t(N) * k);
    DevBuf<int64_t> counts(E);
    fill_random(logits.get(), logits.size(), 1.f, 91), fill_random(dgate.get(), dgate.size(), 1.f, 92);
    const size_t ws_bytes = cu::router_forward_workspace_bytes(N, E);
    DevBuf<char> ws(ws_bytes, "router workspace");
    const std::string sh = shape_str({{"N", N}, {"E", E}, {"k", k}});
    scmoe::RouterSpec r;  // softmax top-k, renormalised: the default router
    r.E = E, r.k = k, r.renormalize = true;
    b.time("router_forward", dt, sh, N * E * (s + 4.0) + 8.0 * Nk, 0, Rate::memory, [&] {
      cu::router_forward(logits.get(), N, r, probs.get(), topk.get(), gate.get(), pmean.get(), counts.get(), nullptr,
                         losses.get(), ws.get(), b.stream);
    });
    cu::router_forward(logits.get(), N, r, probs.get(), topk.get(), gate.get(), pmean.get(), counts.get(), nullptr,
                       losses.get(), ws.get(), b.stream);  // the backward's inputs
    b.time("router_backward", dt, sh, N * E * (s + 4.0) + 8.0 * Nk, 0, Rate::memory, [&] {
      cu::router_backward(dlogits.get(), dgate.get(), logits.get(), probs.get(), topk.get(), counts.get(), nullptr, N,
                          r, {0.01, 0.0, 0.0}, b.stream);
    });
  }

  if (b.wants_any({"permute_forward", "permute_backward", "combine_forward", "combine_backward"})) {
    // A real plan (balanced, no drops at capacity factor 2) for the row copies.
    const int64_t cap = int64_t(k) * int64_t(std::ceil(o.capacity_factor * N / E));
    DevBuf<int32_t> idx(size_t(N) * k), pos(size_t(N) * k);
    DevBuf<int64_t> counts(E), offsets(E + 1), dropped(1);
    upload(idx.get(), random_topk(N, k, E, 81));
    DevBuf<char> ws(cu::dispatch_workspace_bytes(N, k, E), "dispatch workspace");
    cu::dispatch_plan(idx.get(), N, k, E, cap, pos.get(), counts.get(), offsets.get(), dropped.get(),
                      ws.get(), b.stream);
    b.sync();
    const size_t rows = size_t(E) * size_t(cap);  // offsets never exceed E * capacity
    DevBuf<T> x(size_t(N) * C), y(size_t(N) * C), xe(rows * C), ye(rows * C), dye(rows * C);
    DevBuf<float> gate(size_t(N) * k), dgate(size_t(N) * k);
    fill_random(x.get(), x.size(), 1.f, 101), fill_random(ye.get(), ye.size(), 1.f, 102);
    fill_random(gate.get(), gate.size(), 0.5f, 103);
    const std::string sh = shape_str({{"N", N}, {"k", k}, {"C", C}});
    b.time("permute_forward", dt, sh, NC * s + Nk * C * s + 4 * Nk, 0, Rate::memory,
           [&] { cu::permute_forward(xe.get(), x.get(), pos.get(), N, k, C, b.stream); });
    b.time("permute_backward", dt, sh, NC * s + Nk * C * s + 4 * Nk, 0, Rate::memory,
           [&] { cu::permute_backward(y.get(), ye.get(), pos.get(), N, k, C, false, b.stream); });
    b.time("combine_forward", dt, sh, NC * s + Nk * C * s + 8 * Nk, 0, Rate::memory,
           [&] { cu::combine_forward(y.get(), ye.get(), gate.get(), pos.get(), N, k, C, b.stream); });
    b.time("combine_backward", dt, sh, NC * s + 2 * Nk * C * s + 12 * Nk, 0, Rate::memory, [&] {
      cu::combine_backward(dye.get(), dgate.get(), x.get(), ye.get(), gate.get(), pos.get(), N, k, C,
                           b.stream);
    });
  }

  if (b.wants_any({"expert_matmul_forward_grouped fc", "expert_matmul_backward_grouped fc",
                   "expert_matmul_forward_grouped proj", "expert_matmul_backward_grouped proj"})) {
    // Balanced groups: N*k rows over E experts, each a [C -> FE] and an [FE -> C] linear layer.
    const int64_t R = int64_t(N) * k;
    std::vector<int64_t> count(E, R / E), first(E);
    count[E - 1] += R % E;
    for (int e = 1; e < E; e++) first[e] = first[e - 1] + count[e - 1];
    scmoe::GroupRows rows;
    rows.groups = E, rows.begin = first.data(), rows.count = count.data();
    using TG = float;
    for (const bool up : {true, false}) {
      const int IC = up ? C : FE, OC = up ? FE : C;
      const std::string tag = up ? "fc" : "proj";
      const std::string fwd = "expert_matmul_forward_grouped " + tag,
                        bwd = "expert_matmul_backward_grouped " + tag;
      if (!b.wants(fwd) && !b.wants(bwd)) continue;
      // Each expert's weight then bias in one span, as the parameter buffer holds them.
      const int64_t stride = int64_t(OC) * IC + OC;
      const size_t ni = size_t(R) * IC, no = size_t(R) * OC, nw = size_t(E) * OC * IC, np = size_t(E) * stride;
      DevBuf<T> inp(ni), out(no), P(np), dinp(ni);
      DevBuf<TG> dP(np);
      fill_random(inp.get(), ni, 1.f, 111), fill_random(out.get(), no, 1.f, 112);
      fill_random(P.get(), np, 0.02f, 113);
      BENCH_CUDA_CHECK(cudaMemset(dP.get(), 0, dP.bytes()));
      const int64_t bias = int64_t(OC) * IC;
      const std::string sh = shape_str({{"E", E}, {"rows", R}, {"IC", IC}, {"OC", OC}});
      const double flops = 2.0 * double(R) * IC * OC;
      b.time(fwd, dt, sh, (double(ni) + nw + no + double(E) * OC) * s, flops, gemm_rate<T>(), [&] {
        cu::matmul_forward_grouped<T>(out.get(), inp.get(), P.get(), P.get() + bias, stride, rows, IC, OC, b.stream);
      });
      b.time(bwd, dt, sh, (double(no) + 2.0 * ni + nw) * s + 2.0 * (nw + double(E) * OC) * sizeof(TG),
             2 * flops, gemm_rate<T>(), [&] {
               cu::matmul_backward_grouped<T, TG>(dinp.get(), dP.get(), dP.get() + bias, out.get(), inp.get(),
                                                  P.get(), stride, rows, IC, OC, false, b.stream);
             });
    }
  }

  if (b.wants_any({"cg1_forward (ScMoE gate)", "cg1_backward (ScMoE gate)"})) {
    DevBuf<T> z(N), se(size_t(N) * C), out(size_t(N) * C), dse(size_t(N) * C), dz(N);
    DevBuf<float> coef(N);
    fill_random(z.get(), size_t(N), 1.f, 121), fill_random(se.get(), se.size(), 1.f, 122);
    const std::string sh = shape_str({{"N", N}, {"C", C}});
    b.time("cg1_forward (ScMoE gate)", dt, sh, 2 * NC * s + N * (s + 4.0), 0, Rate::memory,
           [&] { cu::cg1_forward(out.get(), coef.get(), z.get(), se.get(), N, C, b.stream); });
    b.time("cg1_backward (ScMoE gate)", dt, sh, 3 * NC * s + N * (s + 4.0), 0, Rate::memory,
           [&] { cu::cg1_backward(dse.get(), dz.get(), out.get(), coef.get(), se.get(), N, C, b.stream); });
  }
}

void print_device(const Bench& b) {
  const DeviceInfo& d = b.dev;
  std::printf("device %s\n", d.name.c_str());
  std::printf("compute_capability %d.%d\n", d.cc_major, d.cc_minor);
  std::printf("sms %d\n", d.sms);
  std::printf("sm_clock_ghz %.3f\n", d.clock_ghz);
  std::printf("memory_gib %.1f\n", d.total_mem / 1073741824.0);
  std::printf("memory_clock_ghz %.3f\n", d.mem_clock_ghz);
  std::printf("memory_bus_bits %d\n", d.bus_bits);
  std::printf("l2_mib %.1f\n", d.l2_bytes / 1048576.0);
  std::printf("peak_bw_gb_s %.1f\n", d.peak_bw_gbs);
  std::printf("peak_bf16_tflops %.1f\n", d.peak_bf16);
  std::printf("peak_tf32_tflops %.1f\n", d.peak_tf32);
  std::printf("peak_fp32_tflops %.1f\n", d.peak_fp32);
  std::printf("peak_source %s\n", d.peak_source.c_str());
  std::printf("driver_cuda %s\n", version_string(d.driver).c_str());
  std::printf("runtime_cuda %s\n", version_string(d.runtime).c_str());
}

int run(int argc, char** argv) {
  Bench b;
  b.opt = parse_options(argc, argv);
  std::string reason;
  if (!query_device(b.opt.device, b.dev, reason)) {
    std::printf("SKIPPED: no usable CUDA device (%s)\n", reason.c_str());
    return 0;
  }
  if (b.opt.peak_bf16 > 0) b.dev.peak_bf16 = b.opt.peak_bf16, b.dev.peak_source = "given (--peak-bf16)";
  if (b.opt.peak_fp32 > 0) b.dev.peak_fp32 = b.opt.peak_fp32;
  if (b.opt.peak_bw > 0) b.dev.peak_bw_gbs = b.opt.peak_bw;
  if (b.opt.device_info) {
    print_device(b);
    return 0;
  }
  const Options& o = b.opt;
  std::printf(
      "bench_gpu_kernels: %s (cc %d.%d, %d SMs, %.2f GHz, %.0f GiB), driver CUDA %s, runtime CUDA %s\n",
      b.dev.name.c_str(), b.dev.cc_major, b.dev.cc_minor, b.dev.sms, b.dev.clock_ghz,
      b.dev.total_mem / 1073741824.0, version_string(b.dev.driver).c_str(),
      version_string(b.dev.runtime).c_str());
  std::printf(
      "peaks: memory %.0f GB/s (2 x %.3f GHz x %d-bit bus); bf16 tensor %.0f, fp32 FMA %.1f TFLOP/s (%s)\n",
      b.dev.peak_bw_gbs, b.dev.mem_clock_ghz, b.dev.bus_bits, b.dev.peak_bf16, b.dev.peak_fp32,
      b.dev.peak_source.c_str());
  std::printf("shapes: B=%d T=%d C=%d H=%d V=%d F=%d L=%d; MoE E=%d top-%d d_expert=%d cf=%.2f\n", o.B, o.T,
              o.C, o.H, o.V, o.F, o.L, o.E, o.K, o.F_expert, o.capacity_factor);
  std::printf("timing: %d warm-up, then the median of %d..%d repetitions (about %.0f ms each case)%s\n",
              o.warmup, o.min_reps, o.max_reps, o.budget_ms,
              o.flush ? ", L2 flushed before each" : ", L2 not flushed");
  std::printf(
      "GEMMs: cuBLASLt with CUBLAS_COMPUTE_32F: bf16 on the tensor cores, fp32 in full fp32 (no TF32), so\n"
      "fp32 GEMMs are held to the fp32 FMA rate; the SIMT twin and flash attention run on the FMA units.\n"
      "bytes = each input the launcher reads and each output it writes, once (scratch traffic not\n"
      "counted); floor = max(bytes / peak BW, FLOPs / peak rate); %%floor = floor / time.\n\n");
  BENCH_CUDA_CHECK(cudaStreamCreateWithFlags(&b.stream, cudaStreamNonBlocking));
  if (o.flush) {
    const size_t fb = std::max<size_t>(2 * b.dev.l2_bytes, size_t(64) << 20);
    b.flush_buf = std::make_unique<DevBuf<char> >(fb, "L2 flush buffer");
  }
  b.print_header();
  bench_reference(b);
  if (o.fp32) bench_dense<float>(b);
  if (o.bf16) bench_dense<bf16>(b);
  bench_optimizer(b);
  bench_dispatch_plan(b);
  if (o.fp32) bench_moe<float>(b);
  if (o.bf16) bench_moe<bf16>(b);
  for (const std::string& path : o.out) b.write_out(path);
  b.flush_buf.reset();
  BENCH_CUDA_CHECK(cudaStreamDestroy(b.stream));
  if (b.failures) {
    std::fprintf(stderr, "bench_gpu_kernels: %d case(s) failed (ERROR rows above)\n", b.failures);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_kernels: error: %s\n", e.what());
    return 1;
  }
}

#endif  // SCMOE_HAVE_CUDA
