// LesionService: the lesion.v1.Lesion gRPC service (proto/lesion/v1/service.proto) on gRPC's
// callback API. Every handler authenticates the call (server/auth.h), validates, and hands work to
// the ExperimentTracker or the Engine; no handler waits for a device or a model load (LoadModel and
// RunExperiment finish from the engine's callbacks, WatchExperiment streams from the tracker's
// events). Reads of the experiment store (GetExperiment, ListExperiments) are SQLite reads on the
// calling thread, through the tracker's pool of read connections (bounded pages); retention
// (DeleteExperiments, DropCaptures, admin only) waits on the calling thread for the store's writer.
//
//   LesionService service(engine.get(), tracker.get(), &authenticator, &config);
//   grpc::ServerBuilder builder;
//   builder.RegisterService(&service);
//
// Errors: UNAUTHENTICATED (tokens file, bad or no token), PERMISSION_DENIED (load / unload without
// admin; cancelling someone else's experiment; a model directory outside the model roots),
// INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, CANCELLED; see
// service.proto. RunExperiment cancels its experiment when the call is cancelled or its deadline
// passes.
// Thread-safety: handlers run concurrently on gRPC threads. The engine, tracker, authenticator and
// config are not owned and must outlive the server the service is registered with.
#ifndef LESION_SERVER_SERVICE_H_
#define LESION_SERVER_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "proto/lesion/v1/service.grpc.pb.h"
#include "server/auth.h"
#include "server/config.h"
#include "server/engine.h"
#include "server/tracker.h"

namespace lesion::server {

lesion::v1::ModelInfo ToModelInfo(const ModelSummary& model);

class LesionService final : public lesion::v1::Lesion::CallbackService {
 public:
  LesionService(Engine* engine, ExperimentTracker* tracker, const Authenticator* auth, const ServerConfig* config)
      : engine_(engine), tracker_(tracker), auth_(auth), config_(config) {}

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const lesion::v1::ListModelsRequest* request,
                                       lesion::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* LoadModel(grpc::CallbackServerContext* context, const lesion::v1::LoadModelRequest* request,
                                      lesion::v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* UnloadModel(grpc::CallbackServerContext* context,
                                        const lesion::v1::UnloadModelRequest* request,
                                        lesion::v1::UnloadModelResponse* response) override;
  grpc::ServerUnaryReactor* SubmitExperiment(grpc::CallbackServerContext* context,
                                             const lesion::v1::SubmitExperimentRequest* request,
                                             lesion::v1::Experiment* response) override;
  grpc::ServerWriteReactor<lesion::v1::ExperimentEvent>* WatchExperiment(
      grpc::CallbackServerContext* context, const lesion::v1::WatchExperimentRequest* request) override;
  grpc::ServerUnaryReactor* RunExperiment(grpc::CallbackServerContext* context,
                                          const lesion::v1::SubmitExperimentRequest* request,
                                          lesion::v1::Experiment* response) override;
  grpc::ServerUnaryReactor* GetExperiment(grpc::CallbackServerContext* context,
                                          const lesion::v1::GetExperimentRequest* request,
                                          lesion::v1::Experiment* response) override;
  grpc::ServerUnaryReactor* ListExperiments(grpc::CallbackServerContext* context,
                                            const lesion::v1::ListExperimentsRequest* request,
                                            lesion::v1::ListExperimentsResponse* response) override;
  grpc::ServerUnaryReactor* CancelExperiment(grpc::CallbackServerContext* context,
                                             const lesion::v1::CancelExperimentRequest* request,
                                             lesion::v1::Experiment* response) override;
  grpc::ServerUnaryReactor* ResubmitExperiment(grpc::CallbackServerContext* context,
                                               const lesion::v1::ResubmitExperimentRequest* request,
                                               lesion::v1::Experiment* response) override;
  grpc::ServerUnaryReactor* DeleteExperiments(grpc::CallbackServerContext* context,
                                              const lesion::v1::RetentionRequest* request,
                                              lesion::v1::RetentionResponse* response) override;
  grpc::ServerUnaryReactor* DropCaptures(grpc::CallbackServerContext* context,
                                         const lesion::v1::RetentionRequest* request,
                                         lesion::v1::RetentionResponse* response) override;
  grpc::ServerWriteReactor<lesion::v1::GenerateEvent>* Generate(grpc::CallbackServerContext* context,
                                                                const lesion::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* GetServerStatus(grpc::CallbackServerContext* context,
                                            const lesion::v1::GetServerStatusRequest* request,
                                            lesion::v1::ServerStatus* response) override;

 private:
  absl::StatusOr<Principal> Caller(grpc::CallbackServerContext* context) const;
  // DeleteExperiments and DropCaptures: an admin's retention call, run by the tracker.
  using RetentionCall =
      absl::StatusOr<lesion::v1::RetentionResponse> (ExperimentTracker::*)(const lesion::v1::RetentionRequest&);
  grpc::ServerUnaryReactor* Retain(grpc::CallbackServerContext* context, absl::string_view method,
                                   const lesion::v1::RetentionRequest& request, RetentionCall call,
                                   lesion::v1::RetentionResponse* response);
  grpc::ServerUnaryReactor* FinishWhenRecorded(grpc::CallbackServerContext* context,
                                               absl::StatusOr<lesion::v1::Experiment> submitted,
                                               lesion::v1::Experiment* response);

  Engine* const engine_;
  ExperimentTracker* const tracker_;
  const Authenticator* const auth_;
  const ServerConfig* const config_;
  const absl::Time started_ = absl::Now();  // the uptime of GetServerStatus counts from here
};

}  // namespace lesion::server

#endif  // LESION_SERVER_SERVICE_H_
