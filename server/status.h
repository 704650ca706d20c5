// The one mapping between absl::Status and grpc::Status at the gRPC boundary: code for code (the
// two enums share their numbering), message kept. Thread-safe (no state).
#ifndef LESION_SERVER_STATUS_H_
#define LESION_SERVER_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace lesion::server {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace lesion::server

#endif  // LESION_SERVER_STATUS_H_
