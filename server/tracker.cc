#include "server/tracker.h"

#include <google/protobuf/util/json_util.h>

#include <iostream>
#include <set>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "common/error_text.h"
#include "common/status_codes.h"
#include "common/status_macros.h"
#include "server/log.h"
#include "spec/result_proto.h"
#include "spec/spec.h"

namespace lesion::server {
namespace {

namespace v1 = lesion::v1;

int64_t Micros(absl::Time t) { return absl::ToUnixMicros(t); }

absl::string_view StatusWord(v1::ExperimentStatus status) {
  switch (status) {
    case v1::QUEUED:
      return "queued";
    case v1::RUNNING:
      return "running";
    case v1::DONE:
      return "done";
    case v1::FAILED:
      return "failed";
    case v1::CANCELLED:
      return "cancelled";
    case v1::INTERRUPTED:
      return "interrupted";
    default:
      return "unspecified";
  }
}

void StripPass(v1::PassResult& pass) {
  for (v1::Tensor& t : *pass.mutable_captures()) t.clear_data();
}

v1::Experiment RecordToProto(const storage::ExperimentRecord& record) {
  v1::Experiment e;
  e.set_id(record.id);
  e.set_user(record.user);
  e.set_name(record.name);
  for (const std::string& tag : record.tags) e.add_tags(tag);
  e.set_model(record.model);
  e.set_model_fingerprint(record.model_fingerprint);
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  auto parsed = google::protobuf::util::JsonStringToMessage(record.spec_json, e.mutable_spec(), options);
  if (!parsed.ok()) {
    Log(LogLevel::kWarning, "stored_spec_unreadable", {{"id", record.id}, {"error", parsed.ToString()}});
  }
  e.set_status(ToProtoStatus(record.status));
  e.set_error(record.error);
  e.set_created_unix_micros(Micros(record.created));
  if (record.started.has_value()) e.set_started_unix_micros(Micros(*record.started));
  if (record.finished.has_value()) e.set_finished_unix_micros(Micros(*record.finished));
  if (record.parent_id.has_value()) e.set_parent_id(*record.parent_id);
  // A stored failure reads "CODE: message" (FinishLocked writes it so).
  if (record.status == storage::ExperimentStatus::kFailed) {
    const absl::string_view prefix = absl::string_view(record.error).substr(0, record.error.find(':'));
    if (StatusCodeFromName(prefix).has_value()) e.set_error_code(std::string(prefix));
  }
  return e;
}

// A stored sweep's counts, from its result (a finished parent has a row per variant).
void SetSweepCounts(v1::Experiment& e) {
  if (!e.has_result() || !e.result().has_sweep()) return;
  e.set_variants_total(e.result().sweep().variants_size());
  e.set_variants_done(e.result().sweep().variants_size());
}

// Bound on the specs a sweep keeps in memory (every child holds its own, dataset included).
constexpr int64_t kMaxSweepSpecBytes = int64_t{256} << 20;

void LogWrite(const std::string& what, const std::string& id, const absl::Status& status) {
  if (!status.ok()) {
    const auto sql = status.GetPayload(storage::kSqlPayloadUrl);  // absl::optional<absl::Cord>
    Log(LogLevel::kError, "store_write_failed",
        {{"write", what},
         {"id", id},
         {"code", absl::StatusCodeToString(status.code())},
         {"error", status.message()},
         {"sql", sql.has_value() ? std::string(*sql) : std::string()}});
  }
}

}  // namespace

v1::ExperimentStatus ToProtoStatus(storage::ExperimentStatus status) {
  switch (status) {
    case storage::ExperimentStatus::kQueued:
      return v1::QUEUED;
    case storage::ExperimentStatus::kRunning:
      return v1::RUNNING;
    case storage::ExperimentStatus::kDone:
      return v1::DONE;
    case storage::ExperimentStatus::kFailed:
      return v1::FAILED;
    case storage::ExperimentStatus::kCancelled:
      return v1::CANCELLED;
    case storage::ExperimentStatus::kInterrupted:
      return v1::INTERRUPTED;
  }
  return v1::EXPERIMENT_STATUS_UNSPECIFIED;
}

bool IsFinal(v1::ExperimentStatus status) {
  return status == v1::DONE || status == v1::FAILED || status == v1::CANCELLED || status == v1::INTERRUPTED;
}

void StripCaptures(v1::ExperimentResult& result) {
  StripPass(*result.mutable_baseline());
  StripPass(*result.mutable_intervened());
}

// ---- Subscription ----------------------------------------------------------------------------------

ExperimentTracker::Subscription& ExperimentTracker::Subscription::operator=(Subscription&& other) noexcept {
  if (this != &other) {
    Reset();
    tracker_ = std::exchange(other.tracker_, nullptr);
    id_ = std::move(other.id_);
    handle_ = std::exchange(other.handle_, 0);
    slot_ = std::move(other.slot_);
    current_ = std::move(other.current_);
  }
  return *this;
}

void ExperimentTracker::Subscription::Reset() {
  if (slot_ != nullptr) {
    absl::MutexLock lock(&slot_->mu);  // waits for a call in flight
    slot_->active = false;
  }
  slot_.reset();
  if (tracker_ != nullptr && handle_ != 0) tracker_->Unsubscribe(id_, handle_);
  tracker_ = nullptr;
  handle_ = 0;
}

// ---- Construction ----------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ExperimentTracker>> ExperimentTracker::Create(const std::string& db_path, Engine* engine,
                                                                             TrackerOptions options) {
  if (db_path.empty() || db_path == ":memory:") {
    return absl::InvalidArgumentError(
        "the experiment database must be a file (the writer and the readers share it): got '" + db_path + "'");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<storage::ExperimentStore> writer, storage::ExperimentStore::Open(db_path));
  ASSIGN_OR_RETURN(int64_t interrupted, writer->MarkInterruptedOnStart(absl::Now()));
  if (interrupted > 0) {
    // ResubmitExperiment runs one again.
    Log(LogLevel::kWarning, "experiments_interrupted_by_last_run", {{"count", interrupted}});
  }
  if (!writer->auto_vacuum_status().ok()) {
    Log(LogLevel::kWarning, "database_not_incremental_vacuum",
        {{"error", std::string(writer->auto_vacuum_status().message())}});
  }
  ASSIGN_OR_RETURN(std::unique_ptr<storage::ReadPool> readers,
                   storage::ReadPool::Create(db_path, options.read_connections));
  ASSIGN_OR_RETURN(std::unique_ptr<storage::ExperimentStore> point_reader,
                   storage::ExperimentStore::OpenReadOnly(db_path));
  return std::unique_ptr<ExperimentTracker>(
      new ExperimentTracker(engine, std::move(writer), std::move(readers), std::move(point_reader), options));
}

ExperimentTracker::ExperimentTracker(Engine* engine, std::unique_ptr<storage::ExperimentStore> writer,
                                     std::unique_ptr<storage::ReadPool> readers,
                                     std::unique_ptr<storage::ExperimentStore> point_reader, TrackerOptions options)
    : engine_(engine),
      options_(options),
      baselines_(options.baseline_cache_bytes),
      readers_(std::move(readers)),
      point_reader_(std::move(point_reader)),
      writer_(std::move(writer)) {}

void ExperimentTracker::WriteLocked(Live& live, Write write) {
  if (live.inserted) {
    Enqueue(std::move(write));
  } else {
    live.held_writes.push_back(std::move(write));
  }
}

void ExperimentTracker::RetireLocked(const std::string& id) {
  auto it = live_.find(id);
  if (it == live_.end()) return;
  WriteLocked(it->second, [this, id](storage::ExperimentStore&) {
    absl::MutexLock lock(&mu_);
    live_.erase(id);
  });
}

// ---- Events --------------------------------------------------------------------------------------------

ExperimentTracker::Delivery ExperimentTracker::PublishLocked(Live& live) {
  ++live.sequence;
  if (live.watchers.empty()) return {ExperimentEvent{live.sequence, {}, live.final}, {}};  // no copy for nobody
  ExperimentEvent event{live.sequence, live.snapshot, live.final};
  std::vector<std::shared_ptr<WatcherSlot>> watchers;
  watchers.reserve(live.watchers.size());
  for (const auto& [handle, watcher] : live.watchers) watchers.push_back(watcher);
  if (live.final) live.watchers.clear();  // nothing follows the final event
  return {std::move(event), std::move(watchers)};
}

void ExperimentTracker::Notify(const ExperimentEvent& event,
                               const std::vector<std::shared_ptr<WatcherSlot>>& watchers) {
  for (const auto& slot : watchers) {
    absl::MutexLock lock(&slot->mu);
    if (slot->active) slot->fn(event);
  }
}

absl::StatusOr<ExperimentTracker::Subscription> ExperimentTracker::Subscribe(const std::string& id, Watcher watcher) {
  Subscription sub;
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it != live_.end()) {
      Live& live = it->second;
      sub.current_ = ExperimentEvent{live.sequence, live.snapshot, live.final};
      if (!live.final) {
        sub.tracker_ = this;
        sub.id_ = id;
        sub.handle_ = next_handle_++;
        sub.slot_ = std::make_shared<WatcherSlot>();
        sub.slot_->fn = std::move(watcher);
        live.watchers.emplace(sub.handle_, sub.slot_);
      }
      return sub;
    }
  }
  ASSIGN_OR_RETURN(v1::Experiment stored, ReadStored(id, /*include_result=*/true, /*include_captures=*/true));
  sub.current_ = ExperimentEvent{0, std::move(stored), /*final=*/true};
  return sub;
}

void ExperimentTracker::Unsubscribe(const std::string& id, int64_t handle) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(id);
  if (it != live_.end()) it->second.watchers.erase(handle);
}

// ---- Submission ------------------------------------------------------------------------------------------

absl::StatusOr<std::string> ExperimentTracker::NewId() {
  absl::BitGen gen;
  for (int attempt = 0; attempt < 16; ++attempt) {
    uint64_t bits = absl::Uniform<uint64_t>(gen) & ((uint64_t{1} << 48) - 1);
    std::string id = absl::StrFormat("exp-%012x", bits);
    {
      absl::MutexLock lock(&mu_);
      if (live_.contains(id)) continue;
    }
    absl::MutexLock lock(&point_mu_);
    absl::StatusOr<storage::ExperimentRecord> existing = point_reader_->Get(id);
    if (absl::IsNotFound(existing.status())) return id;
    if (!existing.ok()) return existing.status();
  }
  return absl::InternalError("could not draw an unused experiment id in 16 attempts");
}

std::string BaselineKey(const ModelSummary& model, bool tf32, const std::string& baseline_sha256) {
  std::set<std::string> kinds;  // "cuda:0,cuda:1" -> cuda; "cpu,cpu" -> cpu
  for (absl::string_view device : absl::StrSplit(model.device, ',', absl::SkipEmpty())) {
    kinds.insert(std::string(device.substr(0, device.find(':'))));
  }
  return absl::StrCat(model.fingerprint, ":", absl::StrJoin(kinds, "+"), tf32 ? ":tf32:" : ":", baseline_sha256);
}

std::optional<result::Pass> ExperimentTracker::LookupBaseline(const std::string& key) {
  if (std::optional<v1::PassResult> held = baselines_.Get(key)) return result::FromProto(*held);
  absl::StatusOr<std::optional<v1::PassResult>> stored;
  {
    absl::MutexLock lock(&point_mu_);
    stored = point_reader_->GetBaseline(key);
  }
  if (!stored.ok()) {
    Log(LogLevel::kWarning, "baseline_read_failed",
        {{"key", key},
         {"code", absl::StatusCodeToString(stored.status().code())},
         {"error", stored.status().message()}});
    return std::nullopt;
  }
  if (!stored->has_value()) return std::nullopt;
  baselines_.Put(key, **stored);  // not held if it has captures
  return result::FromProto(**stored);
}

JobCallbacks ExperimentTracker::MakeCallbacks(const std::string& id) {
  JobCallbacks callbacks;
  callbacks.on_start = [this, id] { OnStart(id); };
  callbacks.on_progress = [this, id](int64_t done, int64_t planned) { OnProgress(id, done, planned); };
  callbacks.on_finish = [this, id](absl::StatusOr<result::Experiment> result) { OnFinish(id, std::move(result)); };
  return callbacks;
}

absl::StatusOr<v1::Experiment> ExperimentTracker::Submit(const Principal& caller, const v1::ExperimentSpec& spec) {
  return SubmitParsed(caller, spec);
}

absl::StatusOr<v1::Experiment> ExperimentTracker::SubmitParsed(const Principal& caller,
                                                               const v1::ExperimentSpec& spec_proto,
                                                               const FinishedVariants* finished) {
  ASSIGN_OR_RETURN(spec::Experiment spec, spec::ParseExperimentProto(spec_proto.SerializeAsString()));
  if (spec.model.empty()) {
    return absl::InvalidArgumentError("spec.model is empty: name a loaded model (ListModels lists them)");
  }
  ASSIGN_OR_RETURN(ModelSummary model, engine_->GetModel(spec.model));
  std::vector<spec::Experiment> variants;
  if (spec.has_sweep) {
    ASSIGN_OR_RETURN(variants, spec::ExpandSweep(spec, {model.n_layers, model.n_heads, model.d_model},
                                                 options_.max_sweep_variants, kMaxSweepSpecBytes));
    RETURN_IF_ERROR(engine_->ValidateSweep(spec.model, spec, variants));
  } else {
    RETURN_IF_ERROR(engine_->Validate(spec.model, spec));
  }
  RETURN_IF_ERROR(CheckStoredQuota(caller.user));
  ASSIGN_OR_RETURN(std::string id, NewId());
  const absl::Time now = absl::Now();

  auto make_record = [&](const spec::Experiment& e, const std::string& record_id) {
    storage::ExperimentRecord record;
    record.id = record_id;
    record.user = caller.user;
    record.name = e.name;
    record.tags = e.tags;
    record.model = e.model;
    record.model_fingerprint = model.fingerprint;
    record.spec_json = e.canonical_json;
    record.created = now;
    return record;
  };
  auto make_live = [&](const spec::Experiment& e, const std::string& live_id, const v1::ExperimentSpec& proto) {
    Live live;
    v1::Experiment& snap = live.snapshot;
    snap.set_id(live_id);
    snap.set_user(caller.user);
    snap.set_name(e.name);
    for (const std::string& tag : e.tags) snap.add_tags(tag);
    snap.set_model(e.model);
    snap.set_model_fingerprint(model.fingerprint);
    *snap.mutable_spec() = proto;
    snap.set_status(v1::QUEUED);
    snap.set_created_unix_micros(Micros(now));
    return live;
  };

  std::vector<storage::ExperimentRecord> records = {make_record(spec, id)};
  Live live = make_live(spec, id, spec_proto);
  live.baseline_key = BaselineKey(model, options_.tf32, spec.baseline_sha256);
  std::vector<std::pair<std::string, Live>> children;
  if (spec.has_sweep) {
    live.snapshot.set_variants_total(static_cast<int32_t>(variants.size()));
    google::protobuf::util::JsonParseOptions options;
    for (size_t i = 0; i < variants.size(); ++i) {
      if (finished != nullptr) {
        auto done = finished->rows.find(static_cast<int64_t>(i));
        if (done != finished->rows.end()) {  // finished by the earlier run: not run again
          result::SweepVariant row = done->second;
          row.name = variants[i].variant_name;
          live.children.push_back(row.experiment_id);
          live.resumed_rows.emplace(done->first, std::move(row));
          continue;
        }
      }
      const std::string child_id = absl::StrCat(id, ".", i);
      storage::ExperimentRecord record = make_record(variants[i], child_id);
      record.parent_id = id;
      records.push_back(std::move(record));
      v1::ExperimentSpec child_proto;
      if (auto parsed = google::protobuf::util::JsonStringToMessage(variants[i].canonical_json, &child_proto, options);
          !parsed.ok()) {
        return absl::InternalError(absl::StrCat("re-reading a variant's spec: ", parsed.message().as_string()));
      }
      Live child = make_live(variants[i], child_id, child_proto);
      child.snapshot.set_parent_id(id);
      live.children.push_back(child_id);
      children.emplace_back(child_id, std::move(child));
    }
  }

  Job job;
  job.id = id;
  job.user = caller.user;
  job.model = spec.model;
  job.lookup_cached_baseline = [this, key = live.baseline_key] { return LookupBaseline(key); };
  job.spec = std::move(spec);
  job.variants = std::move(variants);
  for (const auto& [index, row] : live.resumed_rows) job.skip_variants.push_back(index);
  live.snapshot.set_variants_done(static_cast<int32_t>(live.resumed_rows.size()));
  job.callbacks = MakeCallbacks(id);
  if (!job.variants.empty()) {
    job.callbacks.on_variant = [this, id](int64_t index, result::Experiment result) {
      OnVariant(id, index, std::move(result));
    };
  }
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) {
      return absl::UnavailableError("lesiond is shutting down: submit the experiment again once it is back");
    }
    RETURN_IF_ERROR(CheckQueuedQuotaLocked(caller.user));
    live_.emplace(id, std::move(live));
    for (auto& [child_id, child] : children) live_.emplace(child_id, std::move(child));
  }
  absl::StatusOr<int64_t> ahead = engine_->Submit(std::move(job));
  absl::MutexLock lock(&mu_);
  auto it = live_.find(id);
  if (!ahead.ok()) {
    if (it != live_.end()) {
      for (const std::string& child_id : it->second.children) {
        if (absl::StartsWith(child_id, id)) live_.erase(child_id);  // not an earlier run's variant
      }
      live_.erase(it);
    }
    return ahead.status();
  }
  // One write (one transaction) records the parent before its children.
  Enqueue([records = std::move(records)](storage::ExperimentStore& store) {
    storage::Transaction transaction(store.database());
    absl::Status begun = transaction.Begin();
    for (const storage::ExperimentRecord& record : records) LogWrite("insert", record.id, store.Insert(record));
    if (begun.ok()) LogWrite("commit", records.front().id, transaction.Commit());
  });
  // Present: only the writer removes them, after the writes released below.
  std::vector<std::string> ids = it->second.children;
  ids.insert(ids.begin(), id);
  for (const std::string& live_id : ids) {
    auto entry_it = live_.find(live_id);
    if (entry_it == live_.end()) continue;  // a resubmitted sweep's variant finished earlier
    Live& entry = entry_it->second;
    if (entry.snapshot.status() == v1::QUEUED) entry.snapshot.set_queue_position(static_cast<int32_t>(*ahead));
    entry.inserted = true;
    for (Write& write : entry.held_writes) Enqueue(std::move(write));
    entry.held_writes.clear();
  }
  return live_.at(id).snapshot;
}

absl::StatusOr<v1::Experiment> ExperimentTracker::Resubmit(const Principal& caller, const std::string& id) {
  ASSIGN_OR_RETURN(v1::Experiment old, Get(id, /*include_captures=*/false));
  v1::ExperimentStatus status = old.status();
  if (status != v1::INTERRUPTED && status != v1::FAILED && status != v1::CANCELLED) {
    return absl::FailedPreconditionError(absl::StrCat("experiment ", id, " is ", StatusWord(status),
                                                      ": only interrupted, failed or cancelled experiments can be "
                                                      "resubmitted"));
  }
  if (old.spec().has_sweep() && old.parent_id().empty()) {
    ASSIGN_OR_RETURN(FinishedVariants finished, ReadFinishedVariants(id));
    return SubmitParsed(caller, old.spec(), &finished);
  }
  return SubmitParsed(caller, old.spec());
}

absl::StatusOr<ExperimentTracker::FinishedVariants> ExperimentTracker::ReadFinishedVariants(const std::string& parent) {
  FinishedVariants finished;
  finished.parent = parent;
  storage::QueryOptions query;
  // Ids are "exp-" and hex digits: nothing to escape.
  query.where = absl::StrCat("parent = \"", parent, "\" AND status = \"done\"");
  query.include_results = true;  // without captured bytes
  query.limit = 1000;
  while (true) {
    storage::QueryPage page;
    {
      storage::ReadPool::Lease reader = readers_->Acquire();
      ASSIGN_OR_RETURN(page, reader->Query(query));
    }
    for (size_t r = 0; r < page.records.size(); ++r) {
      const std::string& child = page.records[r].id;
      int64_t index = -1;
      if (!absl::SimpleAtoi(absl::string_view(child).substr(child.rfind('.') + 1), &index) || index < 0 ||
          r >= page.results.size() || !page.results[r].has_value()) {
        continue;  // not a variant id, or no result: run it again
      }
      const v1::ExperimentResult& result = *page.results[r];
      result::SweepVariant row;
      row.experiment_id = child;
      if (result.intervened().has_perplexity() && result.baseline().has_perplexity()) {
        const double base = result.baseline().perplexity().ppl();
        row.has_perplexity = true;
        row.perplexity = result.intervened().perplexity().ppl();
        row.perplexity_delta_pct = 100.0 * (row.perplexity - base) / base;
      }
      for (const v1::Metric& metric : result.metrics()) {
        if (metric.name() == "kl_divergence") {
          row.has_kl_divergence = true;
          row.kl_divergence = result.kl_divergence();
        }
      }
      finished.rows.emplace(index, std::move(row));
    }
    if (page.next_offset <= 0) break;
    query.offset = page.next_offset;
  }
  return finished;
}

// ---- Engine callbacks (executor threads) ----------------------------------------------------------------

void ExperimentTracker::OnStart(const std::string& id) {
  const absl::Time now = absl::Now();
  std::vector<Delivery> out;
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it == live_.end() || it->second.final) return;
    // A sweep's variants run with it (in rounds, reported as each is done); once they are all
    // recorded, one transaction marks them running.
    std::vector<std::string> ids = it->second.children;
    ids.insert(ids.begin(), id);
    const bool batched = it->second.inserted;  // a sweep's records were inserted together
    std::vector<std::string> marked;
    for (const std::string& live_id : ids) {
      auto l = live_.find(live_id);
      if (l == live_.end() || l->second.final) continue;
      Live& live = l->second;
      live.snapshot.set_status(v1::RUNNING);
      live.snapshot.set_started_unix_micros(Micros(now));
      live.snapshot.set_queue_position(0);
      if (batched) {
        marked.push_back(live_id);
      } else {
        WriteLocked(live, [live_id, now](storage::ExperimentStore& store) {
          LogWrite("mark-running", live_id, store.MarkRunning(live_id, now));
        });
      }
      out.push_back(PublishLocked(live));
    }
    if (!marked.empty()) {
      Enqueue([marked = std::move(marked), now](storage::ExperimentStore& store) {
        storage::Transaction transaction(store.database());
        const absl::Status begun = transaction.Begin();
        for (const std::string& live_id : marked) LogWrite("mark-running", live_id, store.MarkRunning(live_id, now));
        if (begun.ok()) LogWrite("commit", marked.front(), transaction.Commit());
      });
    }
  }
  for (const auto& [event, watchers] : out) Notify(event, watchers);
  RefreshQueuePositions();
}

void ExperimentTracker::RefreshQueuePositions() {
  // Everyone behind a started or finished experiment moved up. Asked of the engine on the writer
  // thread, never on an executor thread (inside an engine callback).
  Enqueue([this](storage::ExperimentStore&) {
    std::vector<std::string> queued;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [qid, live] : live_) {
        // A sweep's variants wait with their parent: the engine knows only the parent.
        if (live.snapshot.status() == v1::QUEUED && live.snapshot.parent_id().empty()) queued.push_back(qid);
      }
    }
    for (const std::string& qid : queued) {
      absl::StatusOr<int64_t> position = engine_->QueuePosition(qid);
      if (!position.ok()) continue;
      Delivery update;
      {
        absl::MutexLock lock(&mu_);
        auto it = live_.find(qid);
        if (it == live_.end() || it->second.snapshot.status() != v1::QUEUED ||
            it->second.snapshot.queue_position() == *position) {
          continue;
        }
        it->second.snapshot.set_queue_position(static_cast<int32_t>(*position));
        update = PublishLocked(it->second);
      }
      Notify(update.first, update.second);
    }
  });
}

void ExperimentTracker::OnProgress(const std::string& id, int64_t done, int64_t planned) {
  Delivery out;
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it == live_.end() || it->second.final) return;
    it->second.snapshot.set_passes_done(done);
    it->second.snapshot.set_passes_planned(planned);
    out = PublishLocked(it->second);
  }
  Notify(out.first, out.second);
}

ExperimentTracker::Delivery ExperimentTracker::FinishLocked(const std::string& id,
                                                            const absl::StatusOr<result::Experiment>& result,
                                                            std::shared_ptr<const v1::ExperimentResult> converted,
                                                            absl::Time now) {
  Live& live = live_.at(id);
  v1::Experiment& snap = live.snapshot;
  const bool was_queued = snap.status() == v1::QUEUED;
  snap.set_queue_position(0);
  snap.set_finished_unix_micros(Micros(now));
  if (result.ok()) {
    const v1::ExperimentResult& proto = *converted;
    snap.set_status(v1::DONE);
    if (!proto.run().model_fingerprint().empty()) snap.set_model_fingerprint(proto.run().model_fingerprint());
    if (was_queued) {
      snap.set_started_unix_micros(Micros(now));
      WriteLocked(live, [id, now](storage::ExperimentStore& store) {
        LogWrite("mark-running", id, store.MarkRunning(id, now));
      });
    }
    if (!result->baseline_from_cache && !live.baseline_key.empty()) {
      baselines_.Put(live.baseline_key, proto.baseline());
      WriteLocked(live, [key = live.baseline_key, pass = proto.baseline(), now](storage::ExperimentStore& store) {
        LogWrite("put-baseline", key, store.PutBaseline(key, pass, now));
      });
    }
    WriteLocked(live, [id, converted, now](storage::ExperimentStore& store) {
      LogWrite("finish", id, store.Finish(id, *converted, now));
    });
    *snap.mutable_result() = proto;
  } else if (absl::IsCancelled(result.status()) && shutting_down_) {
    // Left queued / running in the store until RecordInterrupted (or, after a crash, the next
    // start) records it as interrupted.
    snap.set_status(v1::INTERRUPTED);
    snap.set_error("the server stopped");
  } else if (absl::IsCancelled(result.status())) {
    snap.set_status(v1::CANCELLED);
    snap.set_error(std::string(result.status().message()));
    // The reason stays with the record (a sweep's variants say which sweep stopped them).
    WriteLocked(live, [id, now, why = snap.error()](storage::ExperimentStore& store) {
      LogWrite("cancel", id, store.Cancel(id, now, why));
    });
  } else {
    std::string error = absl::StrCat(absl::StatusCodeToString(result.status().code()), ": ", result.status().message());
    snap.set_status(v1::FAILED);
    snap.set_error(error);
    snap.set_error_code(absl::StatusCodeToString(result.status().code()));
    WriteLocked(
        live, [id, error, now](storage::ExperimentStore& store) { LogWrite("fail", id, store.Fail(id, error, now)); });
  }
  live.final = true;
  if (finish_observer_) {
    v1::Experiment summary;  // what observers need, without the spec's and result's bytes
    summary.set_id(snap.id());
    summary.set_user(snap.user());
    summary.set_name(snap.name());
    summary.set_model(snap.model());
    summary.set_parent_id(snap.parent_id());
    summary.set_status(snap.status());
    summary.set_error(snap.error());
    summary.set_error_code(snap.error_code());
    summary.set_created_unix_micros(snap.created_unix_micros());
    summary.set_started_unix_micros(snap.started_unix_micros());
    summary.set_finished_unix_micros(snap.finished_unix_micros());
    WriteLocked(live, [observer = finish_observer_, summary = std::move(summary)](storage::ExperimentStore&) {
      observer(summary);
    });
  }
  auto out = PublishLocked(live);
  RetireLocked(id);
  return out;
}

void ExperimentTracker::OnVariant(const std::string& parent, int64_t index, result::Experiment result) {
  const absl::Time now = absl::Now();
  const std::string id = absl::StrCat(parent, ".", index);
  auto converted = std::make_shared<const v1::ExperimentResult>(result::ToProto(result));
  std::vector<Delivery> out;
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it == live_.end() || it->second.final) return;
    out.push_back(FinishLocked(id, result, std::move(converted), now));
    auto p = live_.find(parent);
    if (p != live_.end() && !p->second.final) {
      p->second.snapshot.set_variants_done(p->second.snapshot.variants_done() + 1);
      out.push_back(PublishLocked(p->second));
    }
  }
  Enqueue([out = std::move(out)](storage::ExperimentStore&) {  // after the variant's writes, as OnFinish
    for (const auto& [event, watchers] : out) Notify(event, watchers);
  });
}

void ExperimentTracker::OnFinish(const std::string& id, absl::StatusOr<result::Experiment> result) {
  const absl::Time now = absl::Now();
  std::vector<Delivery> out;
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it == live_.end() || it->second.final) return;
    const std::vector<std::string> children = it->second.children;
    if (result.ok()) {
      for (size_t i = 0; i < children.size() && i < result->sweep.variants.size(); ++i) {
        result->sweep.variants[i].experiment_id = children[i];
      }
      // A resubmitted sweep: rows of variants the earlier run finished and this one did not run.
      for (const auto& [index, row] : it->second.resumed_rows) {
        if (index < static_cast<int64_t>(result->sweep.variants.size()) && result->sweep.variants[index].name.empty()) {
          result->sweep.variants[index] = row;
        }
      }
    }
    // Converted under the lock only for a sweep's parent (its rows name the children); shared with
    // the store write rather than copied (captures can be large).
    std::shared_ptr<const v1::ExperimentResult> converted;
    if (result.ok()) converted = std::make_shared<const v1::ExperimentResult>(result::ToProto(*result));
    // Variants not done follow their sweep: failed, cancelled or interrupted with it.
    for (const std::string& child : children) {
      auto c = live_.find(child);
      if (c == live_.end() || c->second.final) continue;
      const absl::Status why = result.ok()
                                   ? absl::InternalError(absl::StrCat("sweep ", id, " finished without this variant"))
                                   : absl::Status(result.status().code(),
                                                  absl::StrCat("sweep ", id, " stopped: ", result.status().message()));
      out.push_back(FinishLocked(child, why, nullptr, now));
    }
    if (it->second.snapshot.variants_total() > 0 && result.ok()) {
      it->second.snapshot.set_variants_done(it->second.snapshot.variants_total());
    }
    out.push_back(FinishLocked(id, result, std::move(converted), now));
  }
  // Final events go out once their writes are in the store, so that whoever sees an experiment
  // (and a sweep's variants) done finds it done in every query too.
  Enqueue([out = std::move(out)](storage::ExperimentStore&) {
    for (const auto& [event, watchers] : out) Notify(event, watchers);
  });
  RefreshQueuePositions();
}

// ---- Cancel, reads --------------------------------------------------------------------------------------

absl::StatusOr<v1::Experiment> ExperimentTracker::Cancel(const Principal& caller, const std::string& id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it != live_.end()) {
      const v1::Experiment& snap = it->second.snapshot;
      if (snap.user() != caller.user && !caller.is_admin()) {
        return absl::PermissionDeniedError(absl::StrCat("experiment ", id, " belongs to user '", snap.user(),
                                                        "': only its owner or an admin can cancel it"));
      }
      if (it->second.final) {
        return absl::FailedPreconditionError(
            absl::StrCat("experiment ", id, " is already ", StatusWord(snap.status())));
      }
      if (!snap.parent_id().empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat("experiment ", id, " is a variant of sweep ", snap.parent_id(), ": cancel the sweep"));
      }
    } else {
      ASSIGN_OR_RETURN(v1::Experiment stored, ReadStored(id, false, false));
      if (stored.user() != caller.user && !caller.is_admin()) {
        return absl::PermissionDeniedError(absl::StrCat("experiment ", id, " belongs to user '", stored.user(),
                                                        "': only its owner or an admin can cancel it"));
      }
      return absl::FailedPreconditionError(
          absl::StrCat("experiment ", id, " is already ", StatusWord(stored.status())));
    }
  }
  absl::Status cancelled = engine_->Cancel(id);
  // NotFound: it finished while we asked; the snapshot below says how.
  if (!cancelled.ok() && !absl::IsNotFound(cancelled)) return cancelled;
  return Get(id, /*include_captures=*/false);
}

void ExperimentTracker::CancelQuietly(const std::string& id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it == live_.end() || it->second.final) return;
  }
  engine_->Cancel(id).IgnoreError();
}

absl::Status ExperimentTracker::CheckQueuedQuotaLocked(const std::string& user) {
  if (options_.max_queued_per_user <= 0) return absl::OkStatus();
  int64_t queued = 0;
  for (const auto& [id, live] : live_) {
    const v1::Experiment& snap = live.snapshot;
    if (!live.final && snap.status() == v1::QUEUED && snap.parent_id().empty() && snap.user() == user) ++queued;
  }
  if (queued < options_.max_queued_per_user) return absl::OkStatus();
  return absl::ResourceExhaustedError(
      absl::StrCat("user '", user, "' has ", queued, " experiments queued, the limit per user (--max-queued-per-user ",
                   options_.max_queued_per_user, "): wait for some to start, or cancel some"));
}

absl::Status ExperimentTracker::CheckStoredQuota(const std::string& user) {
  if (options_.max_user_bytes <= 0) return absl::OkStatus();
  absl::StatusOr<int64_t> stored;
  {
    absl::MutexLock lock(&point_mu_);
    stored = point_reader_->UserBytes(user);
  }
  if (!stored.ok()) return stored.status();
  if (*stored < options_.max_user_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "user '", user, "' stores ", *stored, " bytes of experiments, at or over the limit per user (--max-user-bytes ",
      options_.max_user_bytes, "): ask an admin to delete experiments or drop their captures (lesion rm / lesion gc)"));
}

absl::StatusOr<v1::RetentionResponse> ExperimentTracker::DeleteExperiments(const v1::RetentionRequest& request) {
  return Retain(request, /*captures_only=*/false);
}

absl::StatusOr<v1::RetentionResponse> ExperimentTracker::DropCaptures(const v1::RetentionRequest& request) {
  return Retain(request, /*captures_only=*/true);
}

absl::StatusOr<v1::RetentionResponse> ExperimentTracker::Retain(const v1::RetentionRequest& request,
                                                                bool captures_only) {
  // Experiments (with their variants) per writer batch: small enough that a Submit's insert,
  // queued behind a batch, waits milliseconds rather than for the whole deletion.
  constexpr int64_t kBatch = 64;
  auto run = [captures_only](storage::ExperimentStore& store, const storage::RetentionOptions& options) {
    return captures_only ? store.DropCaptures(options) : store.DeleteExperiments(options);
  };
  storage::RetentionOptions options{.where = request.where(), .dry_run = request.dry_run()};
  v1::RetentionResponse response;
  auto add = [&response](const storage::RetentionReport& report) {
    response.set_experiments(response.experiments() + report.experiments);
    response.set_bytes(response.bytes() + report.bytes);
    // Skipped ones stay and are counted again by every batch; the last one counts them all.
    response.set_skipped_active(report.skipped_active);
    response.set_skipped_variants(report.skipped_variants);
  };
  if (request.dry_run()) {
    storage::ReadPool::Lease reader = readers_->Acquire();
    ASSIGN_OR_RETURN(storage::RetentionReport report, run(*reader, options));
    add(report);
    return response;
  }
  options.max_families = kBatch;
  while (true) {
    struct Batch {
      absl::Notification done;
      absl::StatusOr<storage::RetentionReport> report;
      absl::StatusOr<int64_t> reclaimed = 0;
    };
    auto batch = std::make_shared<Batch>();
    Enqueue([batch, options, run](storage::ExperimentStore& store) {
      batch->report = run(store, options);
      if (batch->report.ok()) batch->reclaimed = store.ReclaimSpace();
      batch->done.Notify();
    });
    batch->done.WaitForNotification();
    if (!batch->report.ok()) return batch->report.status();
    add(*batch->report);
    if (batch->reclaimed.ok()) {
      response.set_file_bytes_reclaimed(response.file_bytes_reclaimed() + *batch->reclaimed);
    } else {  // the deletion stands; the pages are reused, the file just does not shrink yet
      Log(LogLevel::kWarning, "incremental_vacuum_failed", {{"error", batch->reclaimed.status().ToString()}});
    }
    if (!batch->report->more) break;
  }
  Log(LogLevel::kInfo, captures_only ? "captures_dropped" : "experiments_deleted",
      {{"where", request.where()}, {"experiments", response.experiments()}, {"bytes", response.bytes()}});
  return response;
}

absl::StatusOr<std::map<std::string, int64_t>> ExperimentTracker::CountByStatus() {
  std::map<std::string, int64_t> counts;
  storage::ReadPool::Lease reader = readers_->Acquire();
  for (storage::ExperimentStatus status :
       {storage::ExperimentStatus::kQueued, storage::ExperimentStatus::kRunning, storage::ExperimentStatus::kDone,
        storage::ExperimentStatus::kFailed, storage::ExperimentStatus::kCancelled,
        storage::ExperimentStatus::kInterrupted}) {
    const std::string name(storage::ExperimentStatusName(status));
    storage::QueryOptions count;
    count.where = absl::StrCat("status = \"", name, "\"");
    count.limit = 0;
    ASSIGN_OR_RETURN(storage::QueryPage page, reader->Query(count));
    counts[name] = page.total;
  }
  return counts;
}

void ExperimentTracker::BeginShutdown() {
  absl::MutexLock lock(&mu_);
  shutting_down_ = true;
}

int64_t ExperimentTracker::InterruptQueued() {
  std::vector<std::string> queued;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, live] : live_) {
      if (!live.final && live.snapshot.status() == v1::QUEUED && live.snapshot.parent_id().empty()) {
        queued.push_back(id);
      }
    }
  }
  // Cancelled by the engine while shutting down: reported as interrupted (FinishLocked).
  for (const std::string& id : queued) engine_->Cancel(id).IgnoreError();
  return static_cast<int64_t>(queued.size());
}

bool ExperimentTracker::AwaitUnfinished(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(
                                  +[](ExperimentTracker* t) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                    for (const auto& [id, live] : t->live_) {
                                      if (!live.final) return false;
                                    }
                                    return true;
                                  },
                                  this),
                              timeout);
}

absl::StatusOr<int64_t> ExperimentTracker::RecordInterrupted() {
  auto marked = std::make_shared<absl::StatusOr<int64_t>>(0);
  Enqueue([marked](storage::ExperimentStore& store) { *marked = store.MarkInterruptedOnStart(absl::Now()); });
  Flush();
  return *marked;
}

absl::StatusOr<v1::Experiment> ExperimentTracker::ReadStored(const std::string& id, bool include_result,
                                                             bool include_captures) {
  storage::ReadPool::Lease reader = readers_->Acquire();
  absl::StatusOr<storage::ExperimentRecord> record = reader->Get(id);
  if (absl::IsNotFound(record.status())) {
    return absl::NotFoundError(absl::StrCat("no experiment ", QuoteForError(id), " (ListExperiments lists them)"));
  }
  if (!record.ok()) return record.status();
  v1::Experiment e = RecordToProto(*record);
  if (include_result && record->status == storage::ExperimentStatus::kDone) {
    ASSIGN_OR_RETURN(*e.mutable_result(), reader->GetResult(id, include_captures));
    SetSweepCounts(e);
  }
  return e;
}

absl::StatusOr<v1::Experiment> ExperimentTracker::Get(const std::string& id, bool include_captures) {
  {
    absl::MutexLock lock(&mu_);
    auto it = live_.find(id);
    if (it != live_.end()) {
      v1::Experiment e = it->second.snapshot;
      if (!include_captures && e.has_result()) StripCaptures(*e.mutable_result());
      return e;
    }
  }
  return ReadStored(id, /*include_result=*/true, include_captures);
}

absl::StatusOr<v1::ListExperimentsResponse> ExperimentTracker::List(const v1::ListExperimentsRequest& request) {
  if (request.limit() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("limit ", request.limit(), " is negative (0 means 100)"));
  }
  if (request.offset() < 0)
    return absl::InvalidArgumentError(absl::StrCat("offset ", request.offset(), " is negative"));
  storage::QueryOptions options;
  options.where = request.where();
  options.order_by = request.order_by();
  options.limit = request.limit() == 0 ? 100 : request.limit();
  options.offset = request.offset();
  // Results come without captured bytes (never read), and the page stops at max_list_bytes.
  options.include_results = request.include_results();
  options.max_bytes = options_.max_list_bytes;
  v1::ListExperimentsResponse response;
  {
    storage::ReadPool::Lease reader = readers_->Acquire();
    ASSIGN_OR_RETURN(storage::QueryPage page, reader->Query(options));
    response.set_total(page.total);
    response.set_next_offset(static_cast<int32_t>(page.next_offset));
    for (size_t i = 0; i < page.records.size(); ++i) {
      const storage::ExperimentRecord& record = page.records[i];
      v1::Experiment* e = response.add_experiments();
      *e = RecordToProto(record);
      if (request.include_results() && record.status == storage::ExperimentStatus::kDone && i < page.results.size() &&
          page.results[i].has_value()) {
        *e->mutable_result() = *std::move(page.results[i]);
        SetSweepCounts(*e);
      }
    }
  }
  // The store may lag behind the live state by the writes still queued: live experiments show
  // their live state. A row read unfinished whose experiment is no longer live finished (and its
  // writes landed) between the read and now: read it again.
  std::vector<int> finished_since;
  {
    absl::MutexLock lock(&mu_);
    for (int i = 0; i < response.experiments_size(); ++i) {
      v1::Experiment& e = *response.mutable_experiments(i);
      auto it = live_.find(e.id());
      if (it == live_.end()) {
        if (!IsFinal(e.status())) finished_since.push_back(i);
        continue;
      }
      e = it->second.snapshot;
      if (!request.include_results()) {
        e.clear_result();
      } else if (e.has_result()) {
        StripCaptures(*e.mutable_result());
      }
    }
  }
  for (int i : finished_since) {
    v1::Experiment& e = *response.mutable_experiments(i);
    ASSIGN_OR_RETURN(e, ReadStored(e.id(), request.include_results(), /*include_captures=*/false));
    if (!request.include_results()) e.clear_result();
  }
  return response;
}

}  // namespace lesion::server
