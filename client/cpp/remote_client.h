// RemoteClient: a blocking C++ client of a lesiond server (proto/lesion/v1/service.proto), for the
// `lesion` CLI's remote commands and for end-to-end tests. Torch-free; links gRPC.
//
//   ASSIGN_OR_RETURN(auto client, RemoteClient::Connect({.address = "127.0.0.1:50051", .token = t}));
//   ASSIGN_OR_RETURN(lesion::v1::Experiment queued, client->Submit(spec));
//   ASSIGN_OR_RETURN(lesion::v1::Experiment done, client->Watch(queued.id(), [](const auto& e) {...}));
//
// Every call returns the server's status as an absl::Status, code for code, message kept.
// Thread-safety: thread-safe (a gRPC stub); calls block the calling thread.
#ifndef LESION_CLIENT_CPP_REMOTE_CLIENT_H_
#define LESION_CLIENT_CPP_REMOTE_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/lesion/v1/service.grpc.pb.h"

namespace lesion::client {

struct RemoteOptions {
  std::string address = "127.0.0.1:50051";     // host:port or unix:PATH
  std::string token;                           // sent as "authorization: Bearer TOKEN" when set
  std::string user;                            // sent as "x-lesion-user" (servers without tokens)
  bool tls = false;                            // the CLI's --tls / --tls-ca
  std::string tls_root_certs;                  // PEM; empty: the system roots
  absl::Duration timeout = absl::Seconds(60);  // per unary call; Watch and Run have none by default
  absl::Duration connect_timeout = absl::Seconds(10);
};

class RemoteClient {
 public:
  // Connects and waits up to connect_timeout for the channel. Unavailable naming the address.
  static absl::StatusOr<std::unique_ptr<RemoteClient>> Connect(const RemoteOptions& options);
  // Over an existing channel (e.g. grpc::Server::InProcessChannel), without waiting.
  static std::unique_ptr<RemoteClient> FromChannel(std::shared_ptr<grpc::Channel> channel,
                                                   const RemoteOptions& options);

  absl::StatusOr<lesion::v1::ListModelsResponse> ListModels();
  absl::StatusOr<lesion::v1::ModelInfo> LoadModel(const lesion::v1::LoadModelRequest& request);
  absl::Status UnloadModel(const std::string& name);

  absl::StatusOr<lesion::v1::Experiment> Submit(const lesion::v1::ExperimentSpec& spec);
  // Blocks until the experiment is final; `deadline` (infinite: none) cancels it when it passes.
  absl::StatusOr<lesion::v1::Experiment> Run(const lesion::v1::ExperimentSpec& spec,
                                             absl::Duration deadline = absl::InfiniteDuration());
  // Streams the experiment's events to `on_event` (may be empty) and returns the final state.
  // `deadline` (infinite: none) bounds the whole stream: DeadlineExceeded when it passes (the
  // experiment itself goes on).
  absl::StatusOr<lesion::v1::Experiment> Watch(const std::string& id,
                                               const std::function<void(const lesion::v1::Experiment&)>& on_event,
                                               absl::Duration deadline = absl::InfiniteDuration());
  absl::StatusOr<lesion::v1::Experiment> Get(const std::string& id, bool include_captures = false);
  absl::StatusOr<lesion::v1::ListExperimentsResponse> List(const lesion::v1::ListExperimentsRequest& request);
  absl::StatusOr<lesion::v1::Experiment> Cancel(const std::string& id);
  absl::StatusOr<lesion::v1::Experiment> Resubmit(const std::string& id);
  // DeleteExperiments / DropCaptures (admin only): retention by query.
  absl::StatusOr<lesion::v1::RetentionResponse> DeleteExperiments(const lesion::v1::RetentionRequest& request);
  absl::StatusOr<lesion::v1::RetentionResponse> DropCaptures(const lesion::v1::RetentionRequest& request);
  // GetServerStatus: the server at a glance.
  absl::StatusOr<lesion::v1::ServerStatus> Status();

  lesion::v1::Lesion::Stub* stub() { return stub_.get(); }

 private:
  RemoteClient(std::shared_ptr<grpc::Channel> channel, RemoteOptions options);
  // A context with the auth metadata and `timeout` (infinite: no deadline).
  std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout) const;

  const RemoteOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<lesion::v1::Lesion::Stub> stub_;
};

}  // namespace lesion::client

#endif  // LESION_CLIENT_CPP_REMOTE_CLIENT_H_
