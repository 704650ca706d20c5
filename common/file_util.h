// Small file helpers shared by every layer. The functions are thread-safe (no shared state);
// ScopedFd is thread-compatible.
#ifndef LESION_COMMON_FILE_UTIL_H_
#define LESION_COMMON_FILE_UTIL_H_

#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lesion {

// The status for a failed system call: "`what`: strerror(err)", with the code that `err` (an errno
// value) calls for:
//   NotFound           ENOENT, ENOTDIR
//   PermissionDenied   EACCES, EPERM, EROFS
//   ResourceExhausted  ENOSPC, EDQUOT, ENOMEM, EMFILE, ENFILE
//   Internal           anything else
absl::Status ErrnoToStatus(int err, absl::string_view what);

// An owned file descriptor, closed on destruction. Move-only; -1 when empty.
class ScopedFd {
 public:
  ScopedFd() = default;
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd();
  ScopedFd(ScopedFd&& other) noexcept;
  ScopedFd& operator=(ScopedFd&& other) noexcept;

  int get() const { return fd_; }
  // Closes now and returns close()'s result (0, or -1 with errno set), which the destructor would
  // swallow; the descriptor is released either way. 0 if empty.
  int Close();

 private:
  int fd_ = -1;
};

// A regular file opened for reading by OpenRegularFile.
struct OpenedFile {
  ScopedFd fd;    // read-only, O_CLOEXEC, O_NONBLOCK (which changes nothing for a regular file)
  uint64_t size;  // st_size at open
};

// Opens `path` (symbolic links followed) for reading if it is a regular file, never blocking and
// never opening anything else: `path` is stat'ed first, so a directory, FIFO, socket or device is
// refused without being opened (opening a FIFO waits for a writer; opening a device can have side
// effects), and the open uses O_NONBLOCK | O_NOCTTY and is checked again with fstat, so a FIFO
// swapped in between cannot block it either. `kind` names what the caller expects ("GGUF file"),
// for messages; it may be empty. Errors (every message names the path):
//   InvalidArgument   not a regular file: "PATH is not a regular file (it is a directory), so not
//                     a KIND" (", so not a KIND" only when `kind` is not empty; "a FIFO",
//                     "a character device", "a block device", "a socket" for the others).
//   NotFound / PermissionDenied / ResourceExhausted / Internal   stat, open or fstat failed, as
//                     ErrnoToStatus: "cannot open KIND PATH: REASON" ("cannot stat PATH: REASON"
//                     for fstat).
absl::StatusOr<OpenedFile> OpenRegularFile(const std::filesystem::path& path, absl::string_view kind);

// Reads a whole regular file (symbolic links followed), opened by OpenRegularFile. NotFound if it
// does not exist; InvalidArgument if it is a directory or not a regular file (a FIFO, socket or
// device, which is refused without being opened, never read); PermissionDenied / ResourceExhausted
// / Internal on I/O errors. Every message names the path.
absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path);
// The rest of the open file `fd`, read to its end (`path` names it in errors). Reading a descriptor
// already checked (its type, its mode) leaves no window for another file to be swapped in.
absl::StatusOr<std::string> ReadToEnd(int fd, const std::filesystem::path& path, uint64_t size_hint = 0);

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
