// A read-only, private memory mapping of a whole regular file: what the torch-free checkpoint
// readers (model/gguf/, model/safetensors/) parse and hand tensor bytes out of.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path, "GGUF file"));
//   absl::Span<const std::byte> bytes = file->bytes();  // the whole file; lives as long as `file`
//
// Thread-safety: immutable after Open; all methods are const and thread-safe.
// Ownership: owns the mapping (PROT_READ, MAP_PRIVATE), unmapped on destruction; the descriptor is
// closed as soon as the file is mapped. bytes() lives as long as this object.
// Caveat inherent to mmap: if another process truncates the file while it is mapped, touching the
// lost pages raises SIGBUS; what another process writes into it may or may not show through.
#ifndef LESION_COMMON_MAPPED_FILE_H_
#define LESION_COMMON_MAPPED_FILE_H_

#include <cstddef>
#include <filesystem>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace lesion {

class MappedFile {
 public:
  // Maps all of `path` (symbolic links followed), which must be a regular file; it is opened as
  // OpenRegularFile (common/file_util.h) opens it, so a directory, FIFO, socket or device is
  // refused without being opened, and nothing blocks. An empty file is not mapped (mmap refuses a
  // zero length): it opens fine, with an empty bytes(). `kind` names what the caller expects
  // ("GGUF file", "safetensors file"), for messages. Errors (every message names the path):
  //   NotFound          `path` does not exist ("cannot open KIND PATH: No such file or directory").
  //   PermissionDenied  it cannot be opened for reading.
  //   InvalidArgument   it is not a regular file: "PATH is not a regular file (it is a
  //                     directory), so not a KIND" ("a FIFO", "a character device", ...).
  //   ResourceExhausted / Internal   mmap or another system call failed ("cannot mmap PATH: ...").
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::filesystem::path& path, absl::string_view kind);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // The file's bytes, as large as the file was when opened; empty (with a null data()) for an
  // empty file.
  absl::Span<const std::byte> bytes() const {
    return absl::Span<const std::byte>(static_cast<const std::byte*>(mapping_), size_);
  }
  // The path passed to Open.
  const std::filesystem::path& path() const { return path_; }

 private:
  MappedFile(std::filesystem::path path, void* mapping, size_t size);

  const std::filesystem::path path_;
  void* const mapping_;  // the mmap'ed file; nullptr for an empty file
  const size_t size_;    // the file size
};

}  // namespace lesion

#endif  // LESION_COMMON_MAPPED_FILE_H_
