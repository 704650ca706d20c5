#include "common/mapped_file.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace lesion {

static_assert(sizeof(size_t) >= sizeof(uint64_t), "a file size must fit in size_t");

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::filesystem::path& path,
                                                             absl::string_view kind) {
  absl::StatusOr<OpenedFile> file = OpenRegularFile(path, kind);
  if (!file.ok()) return file.status();
  const auto size = static_cast<size_t>(file->size);
  void* mapping = nullptr;
  if (size > 0) {
    mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, file->fd.get(), 0);
    if (mapping == MAP_FAILED) {
      const int err = errno;  // before StrCat, which may allocate
      return ErrnoToStatus(err, absl::StrCat("cannot mmap ", path.string()));
    }
  }
  // The descriptor closes on return; the mapping keeps the file alive.
  return std::unique_ptr<MappedFile>(new MappedFile(path, mapping, size));
}

MappedFile::MappedFile(std::filesystem::path path, void* mapping, size_t size)
    : path_(std::move(path)), mapping_(mapping), size_(size) {}

MappedFile::~MappedFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

}  // namespace lesion
