// Small file helpers shared by every layer. Thread-compatible (no state).
#ifndef LESION_COMMON_FILE_UTIL_H_
#define LESION_COMMON_FILE_UTIL_H_

#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lesion {

// Reads a whole file. NotFound if it does not exist, PermissionDenied / Internal on I/O errors;
// every message names the path.
absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path);

// Writes `contents` to `path` atomically: a temporary file beside it is written, flushed and renamed
// over the target, so a failure never leaves a half-written file behind.
absl::Status WriteFileAtomically(const std::filesystem::path& path, absl::string_view contents);

// Removes `path` and everything below it; OK if it does not exist. Implemented with POSIX nftw
// rather than std::filesystem::remove_all: LibTorch exports its own copy of the std::filesystem
// symbols, and in binaries linked with it (the CUDA 2.11 wheel, seen on a GPU host) calls bind to
// that copy, whose remove_all crashed.
absl::Status RemoveTree(const std::filesystem::path& path);

}  // namespace lesion

#endif  // LESION_COMMON_FILE_UTIL_H_
