// MemoryFile: the fuzz input as a file, for the readers whose API takes a path (safetensors, GGUF,
// tokenizer files). One memfd per process, rewritten for each input and opened through
// /proc/self/fd/N, so a run costs no disk I/O and leaves nothing behind.
//
//   static MemoryFile file;
//   auto gguf = GgufFile::Open(file.Write(data, size));
//
// Thread-compatible: one per fuzz target (libFuzzer runs inputs one at a time).
#ifndef LESION_FUZZ_FUZZ_FILE_H_
#define LESION_FUZZ_FUZZ_FILE_H_

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace lesion::fuzz {

class MemoryFile {
 public:
  MemoryFile() : fd_(memfd_create("lesion-fuzz", 0)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;

  // Replaces the file's contents with `data` and returns the path to open it by. Aborts on an I/O
  // error: that is the harness failing, not the code under test.
  const std::filesystem::path& Write(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0) Fail("ftruncate");
    size_t done = 0;
    while (done < size) {
      const ssize_t n = pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0) Fail("pwrite");
      done += static_cast<size_t>(n);
    }
    return path_;
  }

 private:
  [[noreturn]] static void Fail(const char* what) {
    std::perror(what);
    std::abort();
  }

  int fd_;
  std::filesystem::path path_;
};

// Reads every byte of a span so that AddressSanitizer checks the whole range a reader handed out.
template <typename Span>
uint8_t TouchBytes(const Span& bytes) {
  uint8_t x = 0;
  for (std::byte b : bytes) x ^= static_cast<uint8_t>(b);
  return x;
}

}  // namespace lesion::fuzz

#endif  // LESION_FUZZ_FUZZ_FILE_H_
