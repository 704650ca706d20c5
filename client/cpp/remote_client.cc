#include "client/cpp/remote_client.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc/grpc_status.h"

namespace lesion::client {

namespace v1 = lesion::v1;

RemoteClient::RemoteClient(std::shared_ptr<grpc::Channel> channel, RemoteOptions options)
    : options_(std::move(options)), channel_(std::move(channel)), stub_(v1::Lesion::NewStub(channel_)) {}

absl::StatusOr<std::unique_ptr<RemoteClient>> RemoteClient::Connect(const RemoteOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs;
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(512 << 20);
  args.SetMaxSendMessageSize(512 << 20);
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(options.address, credentials, args);
  if (!channel->WaitForConnected(absl::ToChronoTime(absl::Now() + options.connect_timeout))) {
    // A TLS mismatch looks like an unreachable server from here: say what to check.
    return absl::UnavailableError(absl::StrCat(
        "cannot reach lesiond at ", options.address, " within ", absl::FormatDuration(options.connect_timeout),
        options.tls ? " over TLS (does the server serve TLS, with a certificate for this address that the "
                      "trusted roots or --tls-ca sign?)"
                    : " (if the server serves TLS, pass --tls or --tls-ca FILE)"));
  }
  return std::unique_ptr<RemoteClient>(new RemoteClient(std::move(channel), options));
}

std::unique_ptr<RemoteClient> RemoteClient::FromChannel(std::shared_ptr<grpc::Channel> channel,
                                                        const RemoteOptions& options) {
  return std::unique_ptr<RemoteClient>(new RemoteClient(std::move(channel), options));
}

std::unique_ptr<grpc::ClientContext> RemoteClient::Context(absl::Duration timeout) const {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
  if (!options_.user.empty()) context->AddMetadata("x-lesion-user", options_.user);
  if (timeout != absl::InfiniteDuration()) context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return context;
}

absl::StatusOr<v1::ListModelsResponse> RemoteClient::ListModels() {
  v1::ListModelsResponse response;
  grpc::Status status = stub_->ListModels(Context(options_.timeout).get(), {}, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ModelInfo> RemoteClient::LoadModel(const v1::LoadModelRequest& request) {
  v1::ModelInfo response;
  // Loading a large checkpoint takes longer than an ordinary call.
  grpc::Status status = stub_->LoadModel(Context(absl::InfiniteDuration()).get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::Status RemoteClient::UnloadModel(const std::string& name) {
  v1::UnloadModelRequest request;
  request.set_name(name);
  v1::UnloadModelResponse response;
  return FromGrpcStatus(stub_->UnloadModel(Context(options_.timeout).get(), request, &response));
}

absl::StatusOr<v1::Experiment> RemoteClient::Submit(const v1::ExperimentSpec& spec) {
  v1::SubmitExperimentRequest request;
  *request.mutable_spec() = spec;
  v1::Experiment response;
  grpc::Status status = stub_->SubmitExperiment(Context(options_.timeout).get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::Experiment> RemoteClient::Run(const v1::ExperimentSpec& spec, absl::Duration deadline) {
  v1::SubmitExperimentRequest request;
  *request.mutable_spec() = spec;
  v1::Experiment response;
  grpc::Status status = stub_->RunExperiment(Context(deadline).get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::Experiment> RemoteClient::Watch(const std::string& id,
                                                   const std::function<void(const v1::Experiment&)>& on_event,
                                                   absl::Duration deadline) {
  v1::WatchExperimentRequest request;
  request.set_id(id);
  std::unique_ptr<grpc::ClientContext> context = Context(deadline);
  std::unique_ptr<grpc::ClientReader<v1::ExperimentEvent>> reader = stub_->WatchExperiment(context.get(), request);
  v1::ExperimentEvent event;
  v1::Experiment last;
  bool any = false;
  while (reader->Read(&event)) {
    any = true;
    last = event.experiment();
    if (on_event) on_event(last);
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  if (!any) return absl::InternalError(absl::StrCat("the watch of ", id, " ended without an event"));
  return last;
}

absl::StatusOr<v1::Experiment> RemoteClient::Get(const std::string& id, bool include_captures) {
  v1::GetExperimentRequest request;
  request.set_id(id);
  request.set_include_captures(include_captures);
  v1::Experiment response;
  grpc::Status status = stub_->GetExperiment(Context(options_.timeout).get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ListExperimentsResponse> RemoteClient::List(const v1::ListExperimentsRequest& request) {
  v1::ListExperimentsResponse response;
  grpc::Status status = stub_->ListExperiments(Context(options_.timeout).get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::Experiment> RemoteClient::Cancel(const std::string& id) {
  v1::CancelExperimentRequest request;
  request.set_id(id);
  v1::Experiment response;
  grpc::Status status = stub_->CancelExperiment(Context(options_.timeout).get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::Experiment> RemoteClient::Resubmit(const std::string& id) {
  v1::ResubmitExperimentRequest request;
  request.set_id(id);
  v1::Experiment response;
  grpc::Status status = stub_->ResubmitExperiment(Context(options_.timeout).get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::RetentionResponse> RemoteClient::DeleteExperiments(const v1::RetentionRequest& request) {
  v1::RetentionResponse response;
  grpc::Status status = stub_->DeleteExperiments(Context(options_.timeout).get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::RetentionResponse> RemoteClient::DropCaptures(const v1::RetentionRequest& request) {
  v1::RetentionResponse response;
  grpc::Status status = stub_->DropCaptures(Context(options_.timeout).get(), request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ServerStatus> RemoteClient::Status() {
  v1::ServerStatus response;
  grpc::Status status = stub_->GetServerStatus(Context(options_.timeout).get(), {}, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

}  // namespace lesion::client
