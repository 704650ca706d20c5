#include "server/service.h"

#include <atomic>
#include <chrono>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/error_text.h"
#include "common/grpc/grpc_status.h"
#include "common/model_path.h"
#include "common/status_codes.h"
#include "common/status_macros.h"
#include "server/log.h"
#include "server/metrics.h"
#include "storage/sqlite.h"

namespace lesion::server {
namespace {

namespace v1 = lesion::v1;

// What an RPC finishes with. A storage error carries its SQL for us, not for the client: it is
// logged here, where the error leaves the server.
grpc::Status ReplyStatus(const absl::Status& status) {
  if (auto sql = status.GetPayload(storage::kSqlPayloadUrl)) {
    Log(LogLevel::kError, "storage_error",
        {{"code", absl::StatusCodeToString(status.code())}, {"error", status.message()}, {"sql", std::string(*sql)}});
  }
  return ToGrpcStatus(status);
}

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ReplyStatus(status));
  return reactor;
}

std::optional<absl::string_view> Metadata(grpc::CallbackServerContext* context, absl::string_view key) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find(grpc::string_ref(key.data(), key.size()));
  if (it == metadata.end()) return std::nullopt;
  return absl::string_view(it->second.data(), it->second.size());
}

void LogSubmitted(const v1::Experiment& e) {
  Log(LogLevel::kInfo, "experiment_submitted",
      {{"id", e.id()}, {"user", e.user()}, {"model", e.model()}, {"variants", int64_t{e.variants_total()}}});
}

absl::Status RequireId(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("id is empty: pass an experiment id (\"exp-...\")");
  return absl::OkStatus();
}

absl::Status RequireAdmin(const Principal& caller, absl::string_view what) {
  if (caller.is_admin()) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(what, " is admin-only: user '", caller.user, "' has the role user"));
}

// WatchExperiment's stream: the current snapshot, then every newer event of the tracker, one write in
// flight at a time, finishing after the final state. Kept alive by self_ until OnDone and, while a
// tracker event is being delivered, by the watcher's locked weak_ptr.
class WatchReactor : public grpc::ServerWriteReactor<v1::ExperimentEvent> {
 public:
  static WatchReactor* Start(ExperimentTracker* tracker, const std::string& id) {
    auto reactor = std::shared_ptr<WatchReactor>(new WatchReactor());
    reactor->self_ = reactor;
    std::weak_ptr<WatchReactor> weak = reactor;
    absl::StatusOr<ExperimentTracker::Subscription> sub = tracker->Subscribe(id, [weak](const ExperimentEvent& e) {
      if (std::shared_ptr<WatchReactor> r = weak.lock()) r->Push(e);
    });
    if (!sub.ok()) {
      reactor->FinishOnce(ReplyStatus(sub.status()));
      return reactor.get();
    }
    ExperimentEvent current = sub->current();
    {
      std::lock_guard<std::mutex> lock(reactor->mu_);
      reactor->sub_ = std::move(*sub);
    }
    reactor->Push(current);
    return reactor.get();
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!ok || cancelled_) {
      writing_ = false;
      lock.unlock();
      FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "the watch was cancelled"));
      return;
    }
    if (wrote_final_) {
      writing_ = false;
      lock.unlock();
      FinishOnce(grpc::Status::OK);
      return;
    }
    StartNextLocked(lock);
  }

  void OnCancel() override {
    std::unique_lock<std::mutex> lock(mu_);
    cancelled_ = true;
    if (writing_) return;  // OnWriteDone finishes
    lock.unlock();
    FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "the watch was cancelled"));
  }

  void OnDone() override {
    std::shared_ptr<WatchReactor> self;
    ExperimentTracker::Subscription sub;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      sub = std::move(sub_);
      self = std::move(self_);
    }
    sub.Reset();
    // `self` (and the last watcher delivery, if one is running) releases this.
  }

 private:
  WatchReactor() = default;

  void Push(const ExperimentEvent& event) {
    std::unique_lock<std::mutex> lock(mu_);
    if (done_ || cancelled_ || final_queued_) return;
    if (seen_any_ && event.sequence <= last_sequence_) return;  // older than what was queued
    seen_any_ = true;
    last_sequence_ = event.sequence;
    final_queued_ = event.final;
    v1::ExperimentEvent message;
    *message.mutable_experiment() = event.experiment;
    // A slow reader gets the latest state, not a backlog: a newer event replaces a pending one
    // that is not final, so at most one event waits behind the write in flight.
    if (!pending_.empty() && !pending_.back().second) {
      pending_.back() = {std::move(message), event.final};
    } else {
      pending_.push_back({std::move(message), event.final});
    }
    if (writing_) return;
    StartNextLocked(lock);
  }

  // With `lock` held: starts the next pending write (releasing the lock first) or goes idle.
  void StartNextLocked(std::unique_lock<std::mutex>& lock) {
    if (pending_.empty()) {
      writing_ = false;
      return;
    }
    writing_ = true;
    in_flight_ = std::move(pending_.front().first);
    wrote_final_ = pending_.front().second;
    pending_.pop_front();
    lock.unlock();
    StartWrite(&in_flight_);
  }

  void FinishOnce(const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finish_called_) return;
      finish_called_ = true;
    }
    Finish(status);
  }

  std::mutex mu_;
  std::shared_ptr<WatchReactor> self_;                        // guarded by mu_
  ExperimentTracker::Subscription sub_;                       // guarded by mu_
  std::deque<std::pair<v1::ExperimentEvent, bool>> pending_;  // guarded by mu_
  v1::ExperimentEvent in_flight_;                             // written by StartNextLocked only while !writing_
  bool writing_ = false, wrote_final_ = false, final_queued_ = false;  // guarded by mu_
  bool cancelled_ = false, done_ = false, finish_called_ = false;      // guarded by mu_
  bool seen_any_ = false;                                              // guarded by mu_
  int64_t last_sequence_ = 0;                                          // guarded by mu_
};

// RunExperiment: submit, then finish with the final state. A cancelled call (client gone, deadline
// passed) cancels the experiment.
class RunReactor : public grpc::ServerUnaryReactor {
 public:
  static RunReactor* Start(ExperimentTracker* tracker, const Principal& caller, const v1::ExperimentSpec& spec,
                           v1::Experiment* response) {
    auto reactor = std::shared_ptr<RunReactor>(new RunReactor(tracker, response));
    reactor->self_ = reactor;
    absl::StatusOr<v1::Experiment> submitted = tracker->Submit(caller, spec);
    if (!submitted.ok()) {
      reactor->FinishOnce(ReplyStatus(submitted.status()), std::nullopt);
      return reactor.get();
    }
    LogSubmitted(*submitted);
    std::weak_ptr<RunReactor> weak = reactor;
    absl::StatusOr<ExperimentTracker::Subscription> sub =
        tracker->Subscribe(submitted->id(), [weak](const ExperimentEvent& e) {
          if (!e.final) return;
          if (std::shared_ptr<RunReactor> r = weak.lock()) r->FinishFinal(e.experiment);
        });
    if (!sub.ok()) {
      reactor->FinishOnce(ReplyStatus(sub.status()), std::nullopt);
      return reactor.get();
    }
    bool cancelled;
    {
      std::lock_guard<std::mutex> lock(reactor->mu_);
      reactor->id_ = submitted->id();
      cancelled = reactor->cancelled_;
    }
    if (sub->current().final) {
      reactor->FinishFinal(sub->current().experiment);
    } else if (cancelled) {
      tracker->CancelQuietly(submitted->id());
    }
    {
      std::lock_guard<std::mutex> lock(reactor->mu_);
      reactor->sub_ = std::move(*sub);
    }
    return reactor.get();
  }

  // A failed experiment ends the call with its failure's status; any other final state with the
  // record.
  void FinishFinal(const v1::Experiment& e) {
    if (e.status() != v1::FAILED) {
      FinishOnce(grpc::Status::OK, e);
      return;
    }
    const absl::StatusCode code = StatusCodeFromName(e.error_code()).value_or(absl::StatusCode::kInternal);
    FinishOnce(ReplyStatus(absl::Status(code, absl::StrCat("experiment ", e.id(), " failed: ", e.error()))),
               std::nullopt);
  }

  void OnCancel() override {
    std::string id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      id = id_;
    }
    FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED,
                            absl::StrCat("the call was cancelled or its deadline passed; experiment ",
                                         id.empty() ? std::string("(not yet queued)") : id, " is cancelled")),
               std::nullopt);
    if (!id.empty()) tracker_->CancelQuietly(id);
  }

  void OnDone() override {
    std::shared_ptr<RunReactor> self;
    ExperimentTracker::Subscription sub;
    {
      std::lock_guard<std::mutex> lock(mu_);
      sub = std::move(sub_);
      self = std::move(self_);
    }
    sub.Reset();
  }

 private:
  RunReactor(ExperimentTracker* tracker, v1::Experiment* response) : tracker_(tracker), response_(response) {}

  void FinishOnce(const grpc::Status& status, const std::optional<v1::Experiment>& experiment) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finish_called_) return;
      finish_called_ = true;
      if (experiment.has_value()) *response_ = *experiment;
    }
    Finish(status);
  }

  ExperimentTracker* const tracker_;
  v1::Experiment* const response_;  // written once, under mu_, before Finish
  std::mutex mu_;
  std::shared_ptr<RunReactor> self_;                // guarded by mu_
  ExperimentTracker::Subscription sub_;             // guarded by mu_
  std::string id_;                                  // guarded by mu_
  bool cancelled_ = false, finish_called_ = false;  // guarded by mu_
};

// Generate: a generation job on the engine; each token is written as the executor chooses it, then
// the final event. Writes go out one at a time from a queue (a generation's tokens are bounded by
// its max_new_tokens); the call finishes when the queue is drained after the last event or an
// error. A cancelled call (client gone, deadline passed) cancels the job. Kept alive by self_ until
// OnDone; the engine's callbacks hold a weak_ptr.
class GenerateReactor : public grpc::ServerWriteReactor<v1::GenerateEvent> {
 public:
  static GenerateReactor* Start(Engine* engine, const Principal& caller, const v1::GenerateRequest& request) {
    auto reactor = std::shared_ptr<GenerateReactor>(new GenerateReactor(engine));
    reactor->self_ = reactor;
    absl::StatusOr<std::shared_ptr<GenerationJob>> generation = ToGenerationJob(request);
    absl::Status st = generation.status();
    if (st.ok()) st = engine->ValidateGeneration(request.model(), **generation);
    if (!st.ok()) {
      reactor->End(st);
      return reactor.get();
    }
    std::weak_ptr<GenerateReactor> weak = reactor;
    (*generation)->on_token = [weak](bool intervened, int32_t id, double logprob, const std::string& text) {
      std::shared_ptr<GenerateReactor> r = weak.lock();
      if (r == nullptr) return;
      v1::GenerateEvent event;
      v1::GenerateEvent::Token* token = event.mutable_token();
      token->set_intervened(intervened);
      token->set_id(id);
      token->set_logprob(logprob);
      token->set_text(text);
      r->Push(std::move(event));
    };
    static std::atomic<int64_t> counter{0};
    Job job;
    job.id = absl::StrCat("generate-", absl::ToUnixMicros(absl::Now()), "-", counter++);
    job.user = caller.user;
    job.model = request.model();
    job.generation = *generation;
    job.callbacks.on_finish = [weak, g = *generation](absl::StatusOr<result::Experiment> outcome) {
      std::shared_ptr<GenerateReactor> r = weak.lock();
      if (r == nullptr) return;
      if (!outcome.ok()) {
        r->End(outcome.status());
        return;
      }
      v1::GenerateEvent event;
      v1::GenerateEvent::Done* done = event.mutable_done();
      done->mutable_prompt_ids()->Add(g->prompt_ids.begin(), g->prompt_ids.end());
      done->mutable_baseline_ids()->Add(g->baseline_ids.begin(), g->baseline_ids.end());
      done->mutable_intervened_ids()->Add(g->intervened_ids.begin(), g->intervened_ids.end());
      done->set_baseline_text(g->baseline_text);
      done->set_intervened_text(g->intervened_text);
      r->Push(std::move(event));
      r->End(absl::OkStatus());
    };
    const std::string id = job.id;
    {
      std::lock_guard<std::mutex> lock(reactor->mu_);
      reactor->id_ = id;
    }
    if (absl::StatusOr<int64_t> ahead = engine->Submit(std::move(job)); !ahead.ok()) {
      reactor->End(ahead.status());
    } else {
      Log(LogLevel::kInfo, "generation_submitted", {{"id", id}, {"user", caller.user}, {"model", request.model()}});
    }
    return reactor.get();
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      lock.unlock();
      FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading"));
      return;
    }
    StartNextLocked(lock);
  }

  void OnCancel() override {
    std::string id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      id = id_;
    }
    if (!id.empty()) (void)engine_->Cancel(id);  // NotFound once it has finished
    FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled or its deadline passed"));
  }

  void OnDone() override {
    std::shared_ptr<GenerateReactor> self;
    {
      std::lock_guard<std::mutex> lock(mu_);
      self = std::move(self_);
    }
  }

 private:
  explicit GenerateReactor(Engine* engine) : engine_(engine) {}

  static absl::StatusOr<std::shared_ptr<GenerationJob>> ToGenerationJob(const v1::GenerateRequest& request) {
    constexpr int64_t kMaxNewTokens = 4096;
    auto g = std::make_shared<GenerationJob>();
    if (request.model().empty()) return absl::InvalidArgumentError("generate: model is empty");
    switch (request.prompt_case()) {
      case v1::GenerateRequest::kText:
        g->has_text = true;
        g->text = request.text();
        break;
      case v1::GenerateRequest::kIds:
        g->ids.assign(request.ids().ids().begin(), request.ids().ids().end());
        break;
      case v1::GenerateRequest::PROMPT_NOT_SET:
        return absl::InvalidArgumentError("generate: give a prompt (text or ids)");
    }
    g->max_new_tokens = request.max_new_tokens() == 0 ? 64 : request.max_new_tokens();
    if (g->max_new_tokens < 0 || g->max_new_tokens > kMaxNewTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("generate: max_new_tokens must be in 1..", kMaxNewTokens, ", got ", request.max_new_tokens()));
    }
    g->temperature = request.temperature();
    g->top_k = request.top_k();
    g->seed = request.seed();
    g->baseline = !request.skip_baseline();
    // The interventions are checked as a spec's are: parse them as one.
    v1::ExperimentSpec wrapper;
    wrapper.mutable_dataset()->mutable_token_ids()->add_ids(0);  // a dataset the parser accepts
    wrapper.mutable_dataset()->mutable_token_ids()->add_ids(0);
    wrapper.add_measurements()->mutable_perplexity();
    *wrapper.mutable_interventions() = request.interventions();
    ASSIGN_OR_RETURN(spec::Experiment parsed, spec::ParseExperimentProto(wrapper.SerializeAsString()));
    if (!g->baseline && parsed.interventions.empty()) {
      return absl::InvalidArgumentError("generate: skip_baseline needs interventions: there would be nothing to run");
    }
    g->interventions = std::move(parsed.interventions);
    return g;
  }

  void Push(v1::GenerateEvent event) {
    std::unique_lock<std::mutex> lock(mu_);
    if (cancelled_ || ended_) return;
    pending_.push_back(std::move(event));
    if (!writing_) StartNextLocked(lock);
  }

  // No more events: finish with `status` once the queued ones are written.
  void End(const absl::Status& status) {
    std::unique_lock<std::mutex> lock(mu_);
    if (ended_) return;
    ended_ = true;
    final_status_ = ReplyStatus(status);
    if (!writing_) StartNextLocked(lock);
  }

  // With `lock` held: the next queued write, or the finish once the queue is empty and ended.
  void StartNextLocked(std::unique_lock<std::mutex>& lock) {
    if (!pending_.empty()) {
      writing_ = true;
      in_flight_ = std::move(pending_.front());
      pending_.pop_front();
      lock.unlock();
      StartWrite(&in_flight_);
      return;
    }
    if (!ended_) return;
    const grpc::Status status = final_status_;
    lock.unlock();
    FinishOnce(status);
  }

  void FinishOnce(const grpc::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finish_called_) return;
      finish_called_ = true;
    }
    Finish(status);
  }

  Engine* const engine_;
  std::mutex mu_;
  std::shared_ptr<GenerateReactor> self_;           // guarded by mu_
  std::string id_;                                  // guarded by mu_
  std::deque<v1::GenerateEvent> pending_;           // guarded by mu_
  v1::GenerateEvent in_flight_;                     // written only while !writing_
  grpc::Status final_status_;                       // guarded by mu_
  bool writing_ = false, ended_ = false;            // guarded by mu_
  bool cancelled_ = false, finish_called_ = false;  // guarded by mu_
};

// LoadModel: the load runs on the engine's loader threads and finishes the call. A call that is
// cancelled (the client gone, its deadline passed) ends at once and abandons the load, which then
// leaves nothing loaded. Kept alive by self_ until OnDone; the engine's report holds a weak_ptr,
// since an abandoned load reports after the call is over.
class LoadReactor : public grpc::ServerUnaryReactor {
 public:
  static LoadReactor* Start(Engine* engine, const v1::LoadModelRequest& request, const std::string& dir,
                            const std::string& user, std::chrono::system_clock::time_point deadline,
                            v1::ModelInfo* response) {
    auto reactor = std::shared_ptr<LoadReactor>(new LoadReactor(response));
    reactor->self_ = reactor;
    // Asked by the loader between tensors. The deadline is checked here too, so that a load never
    // outlives its caller's deadline by more than a tensor even before OnCancel has run.
    std::function<bool()> cancelled = [gone = reactor->gone_, deadline] {
      return gone->load() || std::chrono::system_clock::now() >= deadline;
    };
    std::weak_ptr<LoadReactor> weak = reactor;
    absl::Status queued = engine->LoadModel(
        request.name(), dir, request.dtype(), request.device(), std::move(cancelled),
        [weak, name = request.name(), user, deadline](absl::StatusOr<ModelSummary> summary) {
          // Abandoned at the deadline (asked between tensors): this reply may reach the client
          // before its own timer fires, so it says what that timer would.
          if (absl::IsCancelled(summary.status()) && std::chrono::system_clock::now() >= deadline) {
            summary = absl::DeadlineExceededError(absl::StrCat("the deadline of the call passed while loading model ",
                                                               QuoteForError(name), "; the load is abandoned"));
          }
          if (summary.ok()) {
            Log(LogLevel::kInfo, "model_loaded",
                {{"model", name},
                 {"user", user},
                 {"dir", summary->dir},
                 {"device", summary->device},
                 {"dtype", summary->dtype},
                 {"weight_bytes", summary->weight_bytes}});
          } else {
            Log(LogLevel::kWarning, "model_load_failed",
                {{"model", name},
                 {"user", user},
                 {"code", absl::StatusCodeToString(summary.status().code())},
                 {"error", summary.status().message()}});
          }
          if (std::shared_ptr<LoadReactor> r = weak.lock()) r->FinishOnce(summary);
        });
    if (!queued.ok()) reactor->FinishOnce(queued);
    return reactor.get();
  }

  void OnCancel() override {
    gone_->store(true);  // the loader stops at its next tensor
    FinishOnce(absl::CancelledError("the call was cancelled or its deadline passed; the load is abandoned"));
  }

  void OnDone() override {
    std::shared_ptr<LoadReactor> self;
    std::lock_guard<std::mutex> lock(mu_);
    self = std::move(self_);  // released after the lock, when `self` goes out of scope
  }

 private:
  explicit LoadReactor(v1::ModelInfo* response) : response_(response) {}

  void FinishOnce(const absl::StatusOr<ModelSummary>& summary) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finish_called_) return;
      finish_called_ = true;
      if (summary.ok()) *response_ = ToModelInfo(*summary);
    }
    Finish(ReplyStatus(summary.status()));
  }

  v1::ModelInfo* const response_;  // written once, under mu_, before Finish
  const std::shared_ptr<std::atomic<bool>> gone_ = std::make_shared<std::atomic<bool>>(false);
  std::mutex mu_;
  std::shared_ptr<LoadReactor> self_;  // guarded by mu_
  bool finish_called_ = false;         // guarded by mu_
};

}  // namespace

v1::ModelInfo ToModelInfo(const ModelSummary& m) {
  v1::ModelInfo info;
  info.set_name(m.name);
  info.set_architecture(m.architecture);
  info.set_dir(m.dir);
  info.set_n_layers(static_cast<int32_t>(m.n_layers));
  info.set_n_heads(static_cast<int32_t>(m.n_heads));
  info.set_n_kv_heads(static_cast<int32_t>(m.n_kv_heads));
  info.set_d_model(static_cast<int32_t>(m.d_model));
  info.set_d_ffn(static_cast<int32_t>(m.d_ffn));
  info.set_vocab_size(static_cast<int32_t>(m.vocab_size));
  info.set_n_params(m.n_params);
  info.set_dtype(m.dtype);
  info.set_device(m.device);
  info.set_weight_bytes(m.weight_bytes);
  info.set_fingerprint(m.fingerprint);
  info.set_dequantized_from(m.dequantized_from);
  return info;
}

absl::StatusOr<Principal> LesionService::Caller(grpc::CallbackServerContext* context) const {
  return auth_->Authenticate(Metadata(context, "authorization"), Metadata(context, "x-lesion-user"));
}

grpc::ServerUnaryReactor* LesionService::ListModels(grpc::CallbackServerContext* context,
                                                    const v1::ListModelsRequest* request,
                                                    v1::ListModelsResponse* response) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  for (const ModelSummary& m : engine_->ListModels()) *response->add_models() = ToModelInfo(m);
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* LesionService::LoadModel(grpc::CallbackServerContext* context,
                                                   const v1::LoadModelRequest* request, v1::ModelInfo* response) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  if (absl::Status st = RequireAdmin(*caller, "LoadModel"); !st.ok()) return FinishNow(context, st);
  if (request->name().empty()) return FinishNow(context, absl::InvalidArgumentError("name is empty: name the model"));
  if (request->dir().empty()) {
    return FinishNow(context, absl::InvalidArgumentError("dir is empty: give the model's directory on the server"));
  }
  // `dir` may be org/name[@revision] in the server's Hugging Face cache; the model roots apply to
  // the path it resolves to.
  absl::StatusOr<std::filesystem::path> dir = ResolveModelPath(request->dir());
  if (!dir.ok()) return FinishNow(context, dir.status());
  if (absl::Status st = CheckModelDirAllowed(*config_, dir->string()); !st.ok()) return FinishNow(context, st);
  return LoadReactor::Start(engine_, *request, dir->string(), caller->user, context->deadline(), response);
}

grpc::ServerUnaryReactor* LesionService::UnloadModel(grpc::CallbackServerContext* context,
                                                     const v1::UnloadModelRequest* request,
                                                     v1::UnloadModelResponse* response) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  if (absl::Status st = RequireAdmin(*caller, "UnloadModel"); !st.ok()) return FinishNow(context, st);
  if (request->name().empty()) return FinishNow(context, absl::InvalidArgumentError("name is empty: name the model"));
  absl::Status unloaded = engine_->UnloadModel(request->name());
  if (unloaded.ok()) Log(LogLevel::kInfo, "model_unloaded", {{"model", request->name()}, {"user", caller->user}});
  return FinishNow(context, unloaded);
}

// The answer to a submission goes out once its record is in the database (the writer thread
// finishes the call), so an id a client holds survives a crash of the server.
grpc::ServerUnaryReactor* LesionService::FinishWhenRecorded(grpc::CallbackServerContext* context,
                                                            absl::StatusOr<v1::Experiment> submitted,
                                                            v1::Experiment* response) {
  if (!submitted.ok()) return FinishNow(context, submitted.status());
  *response = *std::move(submitted);
  LogSubmitted(*response);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  tracker_->AfterQueuedWrites([reactor] { reactor->Finish(grpc::Status::OK); });
  return reactor;
}

grpc::ServerUnaryReactor* LesionService::SubmitExperiment(grpc::CallbackServerContext* context,
                                                          const v1::SubmitExperimentRequest* request,
                                                          v1::Experiment* response) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  if (!request->has_spec()) return FinishNow(context, absl::InvalidArgumentError("spec is missing"));
  return FinishWhenRecorded(context, tracker_->Submit(*caller, request->spec()), response);
}

grpc::ServerWriteReactor<v1::ExperimentEvent>* LesionService::WatchExperiment(
    grpc::CallbackServerContext* context, const v1::WatchExperimentRequest* request) {
  absl::Status st = Caller(context).status();
  if (st.ok()) st = RequireId(request->id());
  if (!st.ok()) {
    // A stream that fails at once.
    class Failed : public grpc::ServerWriteReactor<v1::ExperimentEvent> {
     public:
      explicit Failed(const absl::Status& status) { Finish(ReplyStatus(status)); }
      void OnDone() override { delete this; }
    };
    return new Failed(st);
  }
  return WatchReactor::Start(tracker_, request->id());
}

grpc::ServerUnaryReactor* LesionService::RunExperiment(grpc::CallbackServerContext* context,
                                                       const v1::SubmitExperimentRequest* request,
                                                       v1::Experiment* response) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  if (!request->has_spec()) return FinishNow(context, absl::InvalidArgumentError("spec is missing"));
  return RunReactor::Start(tracker_, *caller, request->spec(), response);
}

grpc::ServerUnaryReactor* LesionService::GetExperiment(grpc::CallbackServerContext* context,
                                                       const v1::GetExperimentRequest* request,
                                                       v1::Experiment* response) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  if (absl::Status st = RequireId(request->id()); !st.ok()) return FinishNow(context, st);
  absl::StatusOr<v1::Experiment> experiment = tracker_->Get(request->id(), request->include_captures());
  if (experiment.ok()) *response = std::move(*experiment);
  return FinishNow(context, experiment.status());
}

grpc::ServerUnaryReactor* LesionService::ListExperiments(grpc::CallbackServerContext* context,
                                                         const v1::ListExperimentsRequest* request,
                                                         v1::ListExperimentsResponse* response) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  absl::StatusOr<v1::ListExperimentsResponse> page = tracker_->List(*request);
  if (page.ok()) *response = std::move(*page);
  return FinishNow(context, page.status());
}

grpc::ServerUnaryReactor* LesionService::CancelExperiment(grpc::CallbackServerContext* context,
                                                          const v1::CancelExperimentRequest* request,
                                                          v1::Experiment* response) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  if (absl::Status st = RequireId(request->id()); !st.ok()) return FinishNow(context, st);
  absl::StatusOr<v1::Experiment> experiment = tracker_->Cancel(*caller, request->id());
  if (experiment.ok()) *response = std::move(*experiment);
  return FinishNow(context, experiment.status());
}

grpc::ServerUnaryReactor* LesionService::ResubmitExperiment(grpc::CallbackServerContext* context,
                                                            const v1::ResubmitExperimentRequest* request,
                                                            v1::Experiment* response) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  if (absl::Status st = RequireId(request->id()); !st.ok()) return FinishNow(context, st);
  return FinishWhenRecorded(context, tracker_->Resubmit(*caller, request->id()), response);
}

grpc::ServerUnaryReactor* LesionService::DeleteExperiments(grpc::CallbackServerContext* context,
                                                           const v1::RetentionRequest* request,
                                                           v1::RetentionResponse* response) {
  return Retain(context, "DeleteExperiments", *request, &ExperimentTracker::DeleteExperiments, response);
}

grpc::ServerUnaryReactor* LesionService::DropCaptures(grpc::CallbackServerContext* context,
                                                      const v1::RetentionRequest* request,
                                                      v1::RetentionResponse* response) {
  return Retain(context, "DropCaptures", *request, &ExperimentTracker::DropCaptures, response);
}

grpc::ServerUnaryReactor* LesionService::Retain(grpc::CallbackServerContext* context, absl::string_view method,
                                                const v1::RetentionRequest& request, RetentionCall call,
                                                v1::RetentionResponse* response) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  if (absl::Status st = RequireAdmin(*caller, method); !st.ok()) return FinishNow(context, st);
  absl::StatusOr<v1::RetentionResponse> done = (tracker_->*call)(request);
  if (done.ok()) *response = std::move(*done);
  return FinishNow(context, done.status());
}

grpc::ServerWriteReactor<v1::GenerateEvent>* LesionService::Generate(grpc::CallbackServerContext* context,
                                                                     const v1::GenerateRequest* request) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) {
    class Failed : public grpc::ServerWriteReactor<v1::GenerateEvent> {
     public:
      explicit Failed(const absl::Status& status) { Finish(ReplyStatus(status)); }
      void OnDone() override { delete this; }
    };
    return new Failed(caller.status());
  }
  return GenerateReactor::Start(engine_, *caller, *request);
}

grpc::ServerUnaryReactor* LesionService::GetServerStatus(grpc::CallbackServerContext* context,
                                                         const v1::GetServerStatusRequest* request,
                                                         v1::ServerStatus* response) {
  absl::StatusOr<Principal> caller = Caller(context);
  if (!caller.ok()) return FinishNow(context, caller.status());
  absl::StatusOr<v1::ServerStatus> status = CollectServerStatus(*engine_, *tracker_, config_->database, started_);
  if (status.ok()) *response = std::move(*status);
  return FinishNow(context, status.status());
}

}  // namespace lesion::server
