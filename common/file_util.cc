#include "common/file_util.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"

namespace lesion {

namespace {

// What a non-regular file is, for messages.
absl::string_view FileTypeName(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "";
}

absl::Status NotRegularFileError(const std::filesystem::path& path, mode_t mode, absl::string_view kind) {
  std::string message = absl::StrCat(path.string(), " is not a regular file");
  if (const absl::string_view type = FileTypeName(mode); !type.empty()) {
    absl::StrAppend(&message, " (it is ", type, ")");
  }
  if (!kind.empty()) absl::StrAppend(&message, ", so not a ", kind);
  return absl::InvalidArgumentError(std::move(message));
}

}  // namespace

absl::Status ErrnoToStatus(int err, absl::string_view what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

ScopedFd::~ScopedFd() { Close(); }

ScopedFd::ScopedFd(ScopedFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

ScopedFd& ScopedFd::operator=(ScopedFd&& other) noexcept {
  if (this != &other) {
    Close();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

int ScopedFd::Close() {
  if (fd_ < 0) return 0;
  // Linux releases the descriptor even when close() fails (EINTR included): never retry.
  return ::close(std::exchange(fd_, -1));
}

absl::StatusOr<OpenedFile> OpenRegularFile(const std::filesystem::path& path, absl::string_view kind) {
  const std::string what = kind.empty() ? absl::StrCat("cannot open ", path.string())
                                        : absl::StrCat("cannot open ", kind, " ", path.string());
  struct stat info;
  if (::stat(path.c_str(), &info) != 0) return ErrnoToStatus(errno, what);
  if (!S_ISREG(info.st_mode)) return NotRegularFileError(path, info.st_mode, kind);
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (fd.get() < 0) return ErrnoToStatus(errno, what);
  if (::fstat(fd.get(), &info) != 0) {
    const int err = errno;  // before StrCat, which may allocate
    return ErrnoToStatus(err, absl::StrCat("cannot stat ", path.string()));
  }
  if (!S_ISREG(info.st_mode)) return NotRegularFileError(path, info.st_mode, kind);
  return OpenedFile{std::move(fd), static_cast<uint64_t>(info.st_size)};
}

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  absl::StatusOr<OpenedFile> file = OpenRegularFile(path, /*kind=*/"");
  if (!file.ok()) return file.status();
  return ReadToEnd(file->fd.get(), path, file->size);
}

absl::StatusOr<std::string> ReadToEnd(int fd, const std::filesystem::path& path, uint64_t size_hint) {
  std::string contents;
  // The size is a hint (the file may change, /proc files say 0): read to the end regardless.
  constexpr uint64_t kMaxReserve = uint64_t{1} << 30;
  contents.reserve(static_cast<size_t>(std::min<uint64_t>(size_hint, kMaxReserve)));
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("error reading ", path.string(), ": ", std::strerror(errno)));
    }
    if (n == 0) break;
    contents.append(buffer, static_cast<size_t>(n));
  }
  return contents;
}

absl::Status WriteFileAtomically(const std::filesystem::path& path, absl::string_view contents) {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) {
      return absl::PermissionDeniedError(absl::StrCat("cannot write ", tmp.string(), ": ", std::strerror(errno)));
    }
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    out.flush();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      return absl::InternalError(absl::StrCat("error writing ", tmp.string()));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return absl::InternalError(absl::StrCat("cannot rename ", tmp.string(), " to ", path.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

absl::Status RemoveTree(const std::filesystem::path& path) {
  struct stat info;
  if (lstat(path.c_str(), &info) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("cannot stat ", path.string(), ": ", std::strerror(errno)));
  }
  auto remove_one = [](const char* entry, const struct stat*, int, struct FTW*) {
    return std::remove(entry) == 0 ? 0 : -1;
  };
  if (nftw(path.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS) != 0) {
    return absl::InternalError(absl::StrCat("cannot remove ", path.string(), ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace lesion
