// The one mapping between absl::Status and grpc::Status at the gRPC boundary, used by lesiond and
// its clients alike: code for code (the two enums share their numbering; a code outside gRPC's range
// becomes UNKNOWN), and on the way out the message kept up to kMaxStatusMessageBytes. Thread-safe
// (no state).
#ifndef LESION_COMMON_GRPC_GRPC_STATUS_H_
#define LESION_COMMON_GRPC_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include <cstddef>

#include "absl/status/status.h"

namespace lesion {

// The longest message ToGrpcStatus passes on. gRPC sends the message as trailing metadata, which a
// client refuses beyond 16 KiB (by default; 8 KiB is its soft limit): a longer message would reach
// the client as RESOURCE_EXHAUSTED "Stream removed" instead of the real error (and the message is
// percent-encoded on the wire, up to three times as long: 4 KiB stays clear). Messages quote user
// input at a bounded length (common/error_text.h); this is the safety net for any that does not.
inline constexpr size_t kMaxStatusMessageBytes = 4096;

// A longer message is cut at a UTF-8 boundary and says so.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace lesion

#endif  // LESION_COMMON_GRPC_GRPC_STATUS_H_
