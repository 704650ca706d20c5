#include "common/grpc/grpc_status.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/error_text.h"

namespace lesion {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string message(status.message());
  if (message.size() > kMaxStatusMessageBytes) {
    const std::string note = absl::StrCat(" [message cut from ", message.size(), " bytes]");
    message = absl::StrCat(ClipForError(message, kMaxStatusMessageBytes - note.size() - 3), note);
  }
  int code = static_cast<int>(status.code());
  // Codes outside gRPC's range (absl reserves none today) become UNKNOWN rather than garbage.
  if (code < 0 || code > static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)) {
    return grpc::Status(grpc::StatusCode::UNKNOWN, std::move(message));
  }
  return grpc::Status(static_cast<grpc::StatusCode>(code), std::move(message));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  int code = static_cast<int>(status.error_code());
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(status.error_message());
  }
  return absl::Status(static_cast<absl::StatusCode>(code), status.error_message());
}

}  // namespace lesion
