// The training loop (see trainer.h).
#include "train/trainer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>

#include "comm/communicator.h"
#ifdef SCMOE_HAVE_NCCL
#include "comm/nccl_communicator.h"
#endif
#include "core/log.h"
#include "core/rng.h"
#include "core/trace.h"
#include "data/loader.h"
#include "model/gpt.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "train/backend_select.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/config.h"
#include "train/metrics.h"
#include "train/moe_metrics.h"
#include "train/rank_agreement.h"
#include "train/run_lock.h"

namespace fs = std::filesystem;

namespace scmoe {

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) { g_stop_signal = sig; }

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

std::string format_eta(double seconds) {
  char buf[32];
  long s = long(seconds);
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  return buf;
}

void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.flush();
  SCMOE_CHECK_IO(f.good(), path, "cannot write");
}

template <class B>
class Trainer {
 public:
  using G = typename B::G;  // master weights, gradients and moments: what checkpoints hold
  Trainer(const Config& cfg, const RunOptions& opt, const std::string& notice)
      : cfg_(cfg), opt_(opt), notice_(notice) {}
  int run();

 private:
  void setup();
  std::string use_shm_transport(bool on_device);
  void resume_from(const std::string& dir);
  void notice_resume_changes(const std::map<std::string, std::string>& md);
  void restore_expert_biases(const StateTensors& state, const std::string& dir);
  void lock_out_dir();
  double evaluate();
  void save_checkpoint();
  bool train_step();  // false when the loss is not finite
  double reduce_mean(double local);  // mean over ranks
  bool any_rank(bool flag);
  std::string comm_fields(std::vector<std::pair<std::string, double>>& fields);

  Config cfg_;
  RunOptions opt_;
  std::string notice_;
  int rank_ = 0, world_ = 1, grad_accum_ = 1;
  ProcessGroupEnv env_;
  std::unique_ptr<Communicator> comm_;         // host collectives (null for a single process)
  std::unique_ptr<Communicator> device_comm_;  // the cuda backend on several ranks: NCCL for device buffers
  Communicator* model_comm_ = nullptr;         // what the model's buffers travel over
  std::unique_ptr<GPT<B>> model_;
  std::unique_ptr<AdamW<B>> optim_;
  std::unique_ptr<DataLoader> train_data_, val_data_;
  std::unique_ptr<MetricsWriter> metrics_;
  std::vector<int32_t> inputs_, targets_;
  TrainState state_;
  Rng rng_;
  std::string ckpt_root_;
  double last_loss_ = 0, last_norm_ = 0, last_lr_ = 0;
  std::unique_ptr<RunLock> lock_;  // rank 0's hold on train.out_dir while training
  int64_t first_step_ = 0;  // the step this process started (or resumed) at
  double last_eval_ms_ = 0;
  MoeStepStats moe_stats_;
};

template <class B>
void Trainer<B>::setup() {
  log_info("%s", notice_.c_str());
  if (cfg_.train.threads > 0) omp_set_num_threads(cfg_.train.threads);
  env_ = read_process_group_env();
  rank_ = env_.rank, world_ = env_.world_size;
  log_rank() = rank_;
  const bool on_device = !B::kHostMemory;
  if (world_ > 1) {
    comm_ = make_gloo_communicator(env_, cfg_.comm.timeout_s);
    check_ranks_agree(cfg_, *comm_);  // before anything else runs on different configurations
    const std::string moe_path = use_shm_transport(on_device);
    comm_->set_simulated_link({cfg_.comm.simulate_link.bandwidth_gb_s, cfg_.comm.simulate_link.latency_us});
    log_info("process group: %d ranks (%s, gloo via %s:%d; MoE All-to-Alls %s)", world_, env_.source.c_str(),
             env_.master_addr.c_str(), env_.master_port, moe_path.c_str());
    model_comm_ = comm_.get();
#ifdef SCMOE_HAVE_NCCL
    if (on_device) {  // the device's buffers travel over NCCL (one GPU per local rank); Gloo keeps the
                      // host-side collectives (losses, statistics, checkpoints)
      device_comm_ = make_nccl_communicator(env_, cfg_.comm.timeout_s, nullptr, comm_.get());
      device_comm_->set_simulated_link({cfg_.comm.simulate_link.bandwidth_gb_s, cfg_.comm.simulate_link.latency_us});
      model_comm_ = device_comm_.get();
    }
#endif
  }

  const auto& tc = cfg_.train;
  int64_t micro_tokens = int64_t(tc.batch_size) * cfg_.model.seq_len * world_;
  grad_accum_ = tc.grad_accum;
  if (tc.global_batch_tokens > 0) {
    SCMOE_CHECK(tc.global_batch_tokens % micro_tokens == 0,
                "train.global_batch_tokens (" << tc.global_batch_tokens << ") must be a multiple of train.batch_size"
                " x model.seq_len x world size (" << micro_tokens << ")");
    grad_accum_ = int(tc.global_batch_tokens / micro_tokens);
  }
  model_ = std::make_unique<GPT<B>>(cfg_, tc.batch_size, model_comm_);
  model_->init(tc.seed);
  optim_ = std::make_unique<AdamW<B>>(cfg_.optim, *model_);
  rng_ = Rng(hash_string("train-rng", tc.seed));
  inputs_.resize(size_t(tc.batch_size) * cfg_.model.seq_len);
  targets_.resize(inputs_.size());
  if (on_device)
    log_info(
        "model: %s, %zu parameters (%.2f M) on cuda, precision %s, device memory %.1f MiB (%s for "
        "micro-batch %d x %d); %s",
        cfg_.model.arch.c_str(), model_->num_params(), model_->num_params() / 1e6, tc.precision.c_str(),
        model_->memory_use().total() / 1048576.0, model_->memory_use().describe().c_str(), tc.batch_size,
        cfg_.model.seq_len,
        model_->overlapped() ? "MoE exchanges on a communication stream, overlapped"
                             : "MoE exchanges in order");
  else
    log_info("model: %s, %zu parameters (%.2f M), activations %.1f MiB for micro-batch %d x %d, dtype %s, %d threads",
             cfg_.model.arch.c_str(), model_->num_params(), model_->num_params() / 1e6,
             model_->activation_bytes() / 1048576.0, tc.batch_size, cfg_.model.seq_len, tc.dtype.c_str(),
             omp_get_max_threads());
  log_info("batch: %d seq x %d tokens x %d ranks x %d accumulation = %lld tokens per step", tc.batch_size,
           cfg_.model.seq_len, world_, grad_accum_, (long long)(micro_tokens * grad_accum_));

  val_data_ = std::make_unique<DataLoader>(cfg_.data.val, "data.val", cfg_.model.seq_len, cfg_.model.vocab_size,
                                           false, tc.seed);
  if (!opt_.eval_only)
    train_data_ = std::make_unique<DataLoader>(cfg_.data.train, "data.train", cfg_.model.seq_len,
                                               cfg_.model.vocab_size, cfg_.data.shuffle, tc.seed);
  ckpt_root_ = (fs::path(tc.out_dir) / "checkpoints").string();
}

// comm.transport: wraps comm_ so that the MoE All-to-Alls travel through shared memory (auto: when every
// rank is on this host and the segment can be made; a failure is the same on every rank, so all fall
// back together). Returns how the MoE exchanges travel, for the log.
template <class B>
std::string Trainer<B>::use_shm_transport(bool on_device) {
  const std::string& t = cfg_.comm.transport;
  if (on_device) return "over NCCL on the device";
  const bool one_host = env_.local_world_size == env_.world_size;
  SCMOE_CHECK(t != "shm" || one_host, "comm.transport shm needs every rank on this host (world size "
                                          << env_.world_size << ", " << env_.local_world_size
                                          << " local ranks); use gloo or auto");
  if (t == "gloo" || !one_host) return "over gloo";
  try {
    comm_ = make_shm_communicator(comm_, cfg_.comm.timeout_s);
    return "through shared memory";
  } catch (const Error& e) {
    if (t == "shm") throw;
    log_info("comm.transport auto: %s; the MoE All-to-Alls go over gloo", e.what());
    return "over gloo";
  }
}

template <class B>
void Trainer<B>::resume_from(const std::string& dir) {
  std::string optim_path = (fs::path(dir) / optim_file_name(rank_, world_)).string();
  if (!fs::exists(optim_path)) {
    std::string found;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().filename().string().rfind("optim-rank00000-of-", 0) == 0) found = e.path().filename().string();
    SCMOE_CHECK(found.empty(), dir << " was written by a different number of ranks (" << found << "); this run has "
                                   << world_ << ". Re-shard it: /usr/bin/python3 scripts/reshard_checkpoint.py " << dir
                                   << " OUT_DIR --world-size " << world_);
    SCMOE_FAIL(dir << ": " << optim_file_name(rank_, world_) << " missing (not a checkpoint of this program?)");
  }
  const ParamTable& table = model_->table();
  std::vector<G> params(table.total()), m(table.total()), v(table.total());
  StateTensors state;
  read_model_file<G>((fs::path(dir) / "model.safetensors").string(), table, params.data(), Subset::replicated,
                     &state);
  if (model_->arch().has_moe())
    read_model_file<G>((fs::path(dir) / experts_file_name(rank_, world_)).string(), table, params.data(),
                       Subset::experts);
  auto md = read_optim_file<G>(optim_path, table, m.data(), v.data());
  auto dt = md.find("dtype");
  SCMOE_CHECK(dt != md.end() && dt->second == cfg_.train.dtype,
              optim_path << ": checkpoint was written with train.dtype "
                         << (dt == md.end() ? "?" : dt->second) << ", this run uses " << cfg_.train.dtype);
  state_ = TrainState::from_metadata(md, optim_path);
  model_->set_params(params.data());
  restore_expert_biases(state, dir);
  optim_->set_moments(m.data(), v.data());
  optim_->set_t(state_.adam_t);
  rng_.state = state_.rng_state;
  if (train_data_) train_data_->set_state({state_.data_epoch, state_.data_cursor});
  log_info("resumed from %s at step %lld", dir.c_str(), (long long)state_.step);
  if (!opt_.eval_only) notice_resume_changes(md);
}

// The checkpoint's expert biases into the model; a bias the checkpoint lacks (the option newly turned
// on) starts at zero, one the model does not use (turned off) is dropped, each with a notice.
template <class B>
void Trainer<B>::restore_expert_biases(const StateTensors& state, const std::string& dir) {
  std::set<std::string> used;
  for (const auto& [name, zeros] : model_->expert_biases()) {
    auto it = std::find_if(state.begin(), state.end(), [&](const auto& t) { return t.first == name; });
    if (it == state.end()) {
      log_info("notice: %s holds no %s (written without moe.expert_bias): the bias starts at zero", dir.c_str(),
               name.c_str());
      continue;
    }
    SCMOE_CHECK(it->second.size() == zeros.size(), dir << ": " << name << " holds " << it->second.size()
                                                       << " values, the model has " << zeros.size() << " experts");
    model_->set_expert_bias(name, it->second);
    used.insert(name);
  }
  for (const auto& [name, v] : state)
    if (!used.count(name))
      log_info("notice: %s's %s is not used (moe.expert_bias.enabled is false)", dir.c_str(), name.c_str());
}

// What a resume changes that the user may not have meant: a different batch (the data position and the
// learning-rate schedule carry on in steps, so the tokens per step change), or nothing left to train.
template <class B>
void Trainer<B>::notice_resume_changes(const std::map<std::string, std::string>& md) {
  auto was = [&](const char* key, int64_t now, const char* name) {
    auto it = md.find(key);
    if (it == md.end() || it->second == std::to_string(now)) return;  // older checkpoints lack the keys
    log_info(
        "notice: %s was %s when the checkpoint was written, now %lld (training continues by steps: each "
        "step now takes a different number of tokens; the data position and learning-rate schedule carry on)",
        name, it->second.c_str(), (long long)now);
  };
  was("batch_size", cfg_.train.batch_size, "train.batch_size");
  was("seq_len", cfg_.model.seq_len, "model.seq_len");
  was("grad_accum", grad_accum_, "the gradient accumulation (train.grad_accum / global_batch_tokens)");
  if (state_.step >= cfg_.train.max_steps)
    log_info(
        "notice: the checkpoint is at step %lld and train.max_steps is %d: nothing to train (raise "
        "train.max_steps to continue, e.g. --set train.max_steps=%lld)",
        (long long)state_.step, cfg_.train.max_steps, (long long)state_.step + cfg_.train.max_steps);
}

template <class B>
double Trainer<B>::evaluate() {
  val_data_->reset();
  double sum = 0, forward_ms = 0;
  for (int i = 0; i < cfg_.train.eval_batches; i++) {
    val_data_->next_batch(cfg_.train.batch_size, rank_, world_, inputs_.data(), targets_.data());
    double t0 = now_ms();
    sum += model_->forward(inputs_.data(), targets_.data(), 0.0);
    forward_ms += now_ms() - t0;
  }
  last_eval_ms_ = forward_ms / cfg_.train.eval_batches;  // a forward-only (inference) pass per batch
  model_->take_comm_timings();  // evaluation's exchanges are not part of the next step's figures
  return reduce_mean(sum / cfg_.train.eval_batches);
}

template <class B>
void Trainer<B>::save_checkpoint() {
  const ParamTable& table = model_->table();
  std::vector<G> params(table.total()), m(table.total()), v(table.total());
  model_->get_params(params.data());
  optim_->get_moments(m.data(), v.data());
  // A checkpoint never holds a non-finite weight (readers refuse one): a step whose loss was still
  // finite can leave diverged weights behind, and the last good checkpoint must survive it.
  std::string bad;
  for (const ParamSpec& p : table.specs()) {
    for (size_t i = 0; i < p.numel && bad.empty(); i++)
      if (!std::isfinite(double(params[p.offset + i]))) bad = "'" + p.name + "' element " + std::to_string(i);
    if (!bad.empty()) break;
  }
  SCMOE_CHECK(!any_rank(!bad.empty()), "the weights are not finite after step "
                                           << state_.step << " (" << (bad.empty() ? "on another rank" : bad)
                                           << "): training diverged; no checkpoint written, the last "
                                              "one (if any) in "
                                           << ckpt_root_ << " is intact; lower optim.lr");
  state_.adam_t = optim_->t();
  state_.rng_state = rng_.state;
  LoaderState ls = train_data_->state();
  state_.data_epoch = ls.epoch;
  state_.data_cursor = ls.cursor;
  const StateTensors biases = model_->expert_biases();  // replicated: every rank holds the same
  auto md = state_.to_metadata(cfg_.train.dtype);
  md["world_size"] = std::to_string(world_);
  md["rank"] = std::to_string(rank_);
  md["experts_per_rank"] = std::to_string(cfg_.model.arch == "dense" ? 0 : cfg_.moe.num_experts / world_);
  // The batch's shape, so that a resume that changes it says so (resume_from).
  md["batch_size"] = std::to_string(cfg_.train.batch_size);
  md["seq_len"] = std::to_string(cfg_.model.seq_len);
  md["grad_accum"] = std::to_string(grad_accum_);
  // Every rank writes its own files into rank 0's temporary directory; rank 0 renames it only when all
  // ranks report success, so a rank dying mid-write leaves no directory that looks complete.
  auto write_mine = [&](const std::string& tmp) {
    if (rank_ == 0) {
      write_model_file<G>((fs::path(tmp) / "model.safetensors").string(), table, params.data(), Subset::replicated,
                          {}, biases);
      write_text_file((fs::path(tmp) / "config.yaml").string(), config_to_yaml(cfg_));
    }
    if (model_->arch().has_moe())
      write_model_file<G>((fs::path(tmp) / experts_file_name(rank_, world_)).string(), table, params.data(),
                          Subset::experts);
    write_optim_file<G>((fs::path(tmp) / optim_file_name(rank_, world_)).string(), table, m.data(), v.data(), md);
  };
  // Writes this rank's files, then all ranks agree: one failure anywhere fails the checkpoint everywhere.
  auto write_and_agree = [&](const std::string& tmp) {
    std::string err;
    try {
      write_mine(tmp);
    } catch (const std::exception& e) {
      err = e.what();
    }
    SCMOE_CHECK(!any_rank(!err.empty()),
                "checkpoint " << tmp << " failed" << (err.empty() ? " on another rank" : ": " + err));
  };
  if (rank_ == 0) {
    std::string dir = commit_checkpoint(ckpt_root_, state_.step, cfg_.checkpoint.keep, [&](const std::string& tmp) {
      if (comm_) comm_->barrier(nullptr);  // the directory exists: other ranks may write
      write_and_agree(tmp);
    });
    log_info("checkpoint written: %s", dir.c_str());
  } else {
    comm_->barrier(nullptr);
    write_and_agree((fs::path(ckpt_root_) / (".tmp-" + checkpoint_name(state_.step))).string());
  }
}

// One optimizer step: micro-batches accumulate gradients (the backward of one is queued before its loss
// is read), then the optimizer sums the replicated gradients over ranks, clips and updates (AdamW<B>).
template <class B>
bool Trainer<B>::train_step() {
  const int Bn = cfg_.train.batch_size;
  // Each rank's gradients are scaled by its share of the global batch, so their sum is the mean.
  const double grad_scale = 1.0 / (double(Bn) * cfg_.model.seq_len * grad_accum_ * world_);
  model_->zero_grad();
  double loss = 0;
  moe_stats_.reset();
  for (int micro = 0; micro < grad_accum_; micro++) {
    train_data_->next_batch(Bn, rank_, world_, inputs_.data(), targets_.data());
    model_->forward_async(inputs_.data(), targets_.data(), grad_scale, &rng_);
    model_->backward();
    loss += model_->loss() / grad_accum_;
    moe_stats_.add(model_->moe_stats(), model_->aux_loss());
  }
  moe_stats_.reduce(comm_.get());
  last_loss_ = reduce_mean(loss);
  if (!std::isfinite(last_loss_)) return false;
  last_lr_ = lr_at(cfg_.optim, cfg_.train.max_steps, state_.step);
  last_norm_ = optim_->step(last_lr_, model_comm_);
  model_->update_expert_biases();  // moe.expert_bias: by this step's global loads, outside the optimizer
  state_.step++;
  state_.tokens_seen += int64_t(Bn) * cfg_.model.seq_len * world_ * grad_accum_;
  return true;
}

template <class B>
double Trainer<B>::reduce_mean(double local) {
  if (!comm_) return local;
  comm_->all_reduce_sum(&local, 1, DType::f64, nullptr);
  return local / world_;
}

// comm_ms, exposed_comm_ms and overlap (this rank's MoE exchanges in the last step, summed over layers,
// plus per layer) and, where the waits for the slowest rank were measured (shared-memory transport or
// comm.measure_peer_wait), peer_wait_ms, exposed_peer_wait_ms and transfer_overlap (the same without
// those waits); returns the step line's suffix.
template <class B>
std::string Trainer<B>::comm_fields(std::vector<std::pair<std::string, double>>& fields) {
  auto timings = model_->take_comm_timings();
  if (timings.empty()) return "";
  double comm = 0, exposed = 0, peer = 0, exposed_peer = 0;
  bool peer_known = false;
  for (const auto& t : timings) {
    peer_known |= t.peer_wait_known;
    std::string p = "moe" + std::to_string(t.layer) + "_";
    fields.push_back({p + "comm_ms", t.comm_ms});
    fields.push_back({p + "exposed_comm_ms", t.exposed_ms});
    comm += t.comm_ms, exposed += t.exposed_ms;
    peer += t.peer_wait_ms, exposed_peer += t.exposed_peer_wait_ms;
  }
  double overlap = comm > 0 ? std::max(0.0, 1.0 - exposed / comm) : 0.0;
  fields.push_back({"comm_ms", comm});
  fields.push_back({"exposed_comm_ms", exposed});
  fields.push_back({"overlap", overlap});
  const auto& link = cfg_.comm.simulate_link;
  char buf[256];
  int n = std::snprintf(buf, sizeof buf, " | comm %.1f ms exposed %.1f overlap %.2f%s", comm, exposed, overlap,
                        link.bandwidth_gb_s > 0 || link.latency_us > 0 ? " (simulated link)" : "");
  if (peer_known) {
    // The transfers alone: comm and exposure without the waits for the slowest rank.
    const double tc = comm - peer, te = std::max(0.0, exposed - exposed_peer);
    const double transfer_overlap = tc > 0 ? std::max(0.0, 1.0 - te / tc) : 0.0;
    fields.push_back({"peer_wait_ms", peer});
    fields.push_back({"exposed_peer_wait_ms", exposed_peer});
    fields.push_back({"transfer_overlap", transfer_overlap});
    std::snprintf(buf + n, sizeof buf - n, " | peer wait %.1f ms (exposed %.1f), transfer overlap %.2f", peer,
                  exposed_peer, transfer_overlap);
  }
  return buf;
}

template <class B>
bool Trainer<B>::any_rank(bool flag) {
  if (!comm_) return flag;
  int64_t v = flag ? 1 : 0;
  comm_->all_reduce_sum(&v, 1, DType::i64, nullptr);
  return v > 0;
}

// Rank 0 locks train.out_dir (RunLock); every rank stops if it could not.
template <class B>
void Trainer<B>::lock_out_dir() {
  std::string err, notice;
  if (rank_ == 0) {
    try {
      lock_ = std::make_unique<RunLock>(cfg_.train.out_dir, &notice);
    } catch (const Error& e) {
      err = e.what();
    }
  }
  if (!notice.empty()) log_info("notice: %s", notice.c_str());
  const bool failed = any_rank(!err.empty());
  if (!err.empty()) throw Error(err);
  SCMOE_CHECK(!failed, "rank 0 could not lock train.out_dir '" << cfg_.train.out_dir << "' (see its error)");
}

template <class B>
int Trainer<B>::run() {
  setup();
  if (!opt_.eval_only) lock_out_dir();  // before looking for a checkpoint another run may be writing
  std::string resume_dir = opt_.resume.empty() ? "" : resolve_resume(opt_.resume, ckpt_root_);
  if (opt_.resume == "auto" && resume_dir.empty()) log_info("resume auto: no checkpoint in %s, starting fresh", ckpt_root_.c_str());
  if (opt_.eval_only) {
    SCMOE_CHECK(!resume_dir.empty(), "--eval-only needs a checkpoint: pass --resume PATH (or auto with one present)");
    resume_from(resume_dir);
    double vl = evaluate();
    std::printf("val_loss %.6f\n", vl);
    return 0;
  }
  if (!resume_dir.empty()) resume_from(resume_dir);
  first_step_ = state_.step;

  fs::create_directories(cfg_.train.out_dir);
  if (rank_ == 0) write_text_file((fs::path(cfg_.train.out_dir) / "config.yaml").string(), config_to_yaml(cfg_));
  metrics_ = std::make_unique<MetricsWriter>((fs::path(cfg_.train.out_dir) / "metrics.jsonl").string(),
                                             rank_ == 0, resume_dir.empty() ? -1 : state_.step);
  const auto& tc = cfg_.train;
  const int64_t step_tokens = int64_t(tc.batch_size) * cfg_.model.seq_len * world_ * grad_accum_;
  double ema_ms = 0;
  while (state_.step < tc.max_steps) {
    double t0 = now_ms();
    const bool tracing = tc.trace_step > 0 && state_.step + 1 == tc.trace_step;
    if (tracing) Tracer::get().start();
    if (!train_step()) {
      std::fprintf(stderr, "error: loss is %f at step %lld; stopping. The last checkpoint (if any) in %s is intact; "
                   "lower optim.lr or check the data.\n", last_loss_, (long long)state_.step + 1, ckpt_root_.c_str());
      metrics_->write(state_.step + 1, {{"loss", last_loss_}});
      return 1;
    }
    double ms = now_ms() - t0;
    if (tracing) {
      std::string path = (fs::path(tc.out_dir) / ("trace-rank" + std::to_string(rank_) + ".json")).string();
      Tracer::get().write(path, rank_);
      log_info("trace of step %lld written to %s (open in ui.perfetto.dev or chrome://tracing)",
               (long long)state_.step, path.c_str());
    }
    ema_ms = ema_ms == 0 ? ms : 0.9 * ema_ms + 0.1 * ms;
    double tok_s = step_tokens / (ms / 1000.0);
    std::vector<std::pair<std::string, double>> fields = {
        {"loss", last_loss_}, {"lr", last_lr_}, {"grad_norm", last_norm_}, {"tokens_per_s", tok_s}, {"step_ms", ms}};
    for (auto& f : moe_stats_.fields()) fields.push_back(f);
    std::string comm_summary = comm_fields(fields);
    metrics_->write(state_.step, fields);
    std::string tuned = model_->tune_slots(int(state_.step - first_step_));
    if (!tuned.empty()) log_info("expert_slot auto: %s", tuned.c_str());
    if (tc.log_every > 0 && (state_.step % tc.log_every == 0 || state_.step == tc.max_steps))
      log_info("step %5lld/%d | loss %.4f | lr %.2e | grad_norm %.3f | %.1f ms | %.0f tok/s | eta %s%s",
               (long long)state_.step, tc.max_steps, last_loss_, last_lr_, last_norm_, ms, tok_s,
               format_eta((tc.max_steps - state_.step) * ema_ms / 1000.0).c_str(),
               (moe_stats_.summary() + comm_summary).c_str());
    bool last = state_.step == tc.max_steps;
    // The checkpoint first: an evaluation that fails (data changed under the run, a model gone bad)
    // then costs no training.
    if ((cfg_.checkpoint.every > 0 && state_.step % cfg_.checkpoint.every == 0) || last) save_checkpoint();
    if ((tc.eval_every > 0 && state_.step % tc.eval_every == 0) || last) {
      double vl = evaluate();
      metrics_->write(state_.step, {{"val_loss", vl}, {"eval_forward_ms", last_eval_ms_}});
      log_info("step %5lld/%d | val_loss %.4f", (long long)state_.step, tc.max_steps, vl);
    }
    // Ranks may see a forwarded signal at different steps: agree before stopping together.
    if (any_rank(g_stop_signal != 0)) {
      int sig = g_stop_signal ? int(g_stop_signal) : SIGTERM;
      if (!last) save_checkpoint();
      log_info("stopped by signal %d at step %lld after writing a checkpoint", sig, (long long)state_.step);
      return 128 + sig;
    }
  }
  return 0;
}

}  // namespace

void install_stop_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

int run_training(const Config& cfg, const RunOptions& opt) {
  const ProcessGroupEnv env = read_process_group_env();
  std::string notice;
  const BackendKind kind = select_backend(cfg, env.world_size, env.local_world_size, &notice);
  return with_backend(kind, [&](auto tag) {
    using B = typename decltype(tag)::type;
    return Trainer<B>(cfg, opt, notice).run();
  });
}

}  // namespace scmoe
