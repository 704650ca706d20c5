// Torch-free reading and writing of safetensors files (https://github.com/huggingface/safetensors).
//
// A safetensors file is an 8-byte little-endian u64 N, N bytes of UTF-8 JSON (the header), then
// the data section. The header maps each tensor name to {"dtype", "shape", "data_offsets":
// [begin, end]} with offsets relative to the start of the data section, plus an optional
// "__metadata__" string->string map.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> ckpt,
//                    SafetensorsCheckpoint::Open(dir));
//   std::optional<SafetensorsCheckpoint::Entry> e = ckpt->Find("model.embed_tokens.weight");
//   if (!e.has_value()) return absl::NotFoundError("...");
//   absl::Span<const std::byte> bytes = e->file->Data(*e->info);  // may be unaligned: memcpy it
//
// Thread-safety: every function here is thread-safe; SafetensorsFile and SafetensorsCheckpoint are
// immutable after Open and may be shared across threads without locking.
//
// Nothing here throws, and no input bytes can make Open crash: every header field is validated
// before use. One caveat inherent to mmap: if another process truncates a file while it is mapped,
// touching the lost pages raises SIGBUS.
#ifndef LESION_MODEL_SAFETENSORS_SAFETENSORS_H_
#define LESION_MODEL_SAFETENSORS_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/mapped_file.h"

namespace lesion::model {

// Element types supported by lesion. The safetensors spec also names U16, U32, U64, F8_E8M0 and
// sub-byte types; files using those are rejected with Unimplemented.
enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool, kF8E4M3, kF8E5M2 };

// The safetensors spelling of `dtype`: "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8",
// "U8", "BOOL", "F8_E4M3", "F8_E5M2".
absl::string_view DTypeName(DType dtype);

// Inverse of DTypeName (exact, case-sensitive match); nullopt for any other string.
std::optional<DType> ParseDType(absl::string_view name);

// Bytes per element: 8, 4, 2, 2, 8, 4, 2, 1, 1, 1, 1, 1 in enum order (BOOL is one byte).
size_t DTypeSize(DType dtype);

// One tensor's header entry. data_begin/data_end are byte offsets into the data section (not the
// file), end exclusive; data_end - data_begin == numel() * DTypeSize(dtype) for every TensorInfo
// that SafetensorsFile returns.
struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // empty for a 0-d (scalar) tensor
  uint64_t data_begin;
  uint64_t data_end;

  // Product of `shape`: 1 for a 0-d tensor, 0 if any dimension is 0.
  int64_t numel() const;
};

// A memory-mapped, validated .safetensors file.
//
// Thread-safety: immutable after Open; all methods are const and thread-safe.
// Ownership: owns the file's MappedFile (common/mapped_file.h: a read-only private mapping; the
// file descriptor is closed once mapped). The spans returned by Data() and the references returned
// by tensors()/Find()/metadata() live as long as this object.
// Alignment: the data section starts at byte 8 + N of the file and tensors may start at any offset
// within it, so a span returned by Data() may be unaligned for its element type. Copy it (memcpy)
// rather than reinterpret_cast-ing it to float* and friends.
// Gaps between tensors and trailing bytes after the last tensor are tolerated (the Python library
// rejects them); overlapping tensors are not.
class SafetensorsFile {
 public:
  // Maps (with MappedFile::Open) and validates `path`. Errors (every message names the file;
  // header errors also name the tensor and the offending values):
  //   NotFound          `path` does not exist.
  //   InvalidArgument   `path` is not a regular file ("... is not a regular file (it is a FIFO),
  //                     so not a safetensors file": a directory, FIFO or device, refused without
  //                     being opened, so a FIFO never blocks).
  //   PermissionDenied  `path` cannot be opened for reading.
  //   DataLoss          truncated or corrupt: shorter than 8 bytes; header length beyond the file
  //                     or above 100 MB; header not a UTF-8 JSON object; an entry that is not an
  //                     object or lacks/mistypes dtype, shape or data_offsets; an unknown dtype;
  //                     a negative or non-integer dimension; data_offsets not two non-negative
  //                     integers with begin <= end; end beyond the data section; a byte count that
  //                     is not numel x dtype size (overflow included); two tensors whose bytes
  //                     overlap; "__metadata__" not a string->string map.
  //   Unimplemented     a dtype named by the safetensors spec that lesion does not support (U16).
  //   ResourceExhausted / Internal   mmap or another system call failed.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Every tensor, in file order: ascending data_begin (ties broken by data_end, then name).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  // The tensor called `name`, or nullptr if there is none. The pointer lives as long as `this`.
  const TensorInfo* Find(absl::string_view name) const;

  // The bytes of `t`, which must be an element of this file's tensors(). The span may be unaligned
  // (see the class comment) and is empty for a tensor with no elements. For a TensorInfo from
  // elsewhere whose range lies outside the data section, returns an empty span.
  absl::Span<const std::byte> Data(const TensorInfo& t) const;

  // The header's "__metadata__" map; empty if absent.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The path passed to Open.
  const std::filesystem::path& path() const { return mapping_->path(); }

 private:
  SafetensorsFile(std::unique_ptr<const MappedFile> mapping, uint64_t data_start, std::vector<TensorInfo> tensors,
                  std::map<std::string, std::string> metadata);

  const std::unique_ptr<const MappedFile> mapping_;  // the whole file (>= 8 bytes); never null
  const uint64_t data_start_;                        // 8 + header length (<= the file size)
  const std::vector<TensorInfo> tensors_;
  const absl::flat_hash_map<std::string, size_t> index_;  // name -> position in tensors_
  const std::map<std::string, std::string> metadata_;
};

// A Hugging Face checkpoint directory: either `model.safetensors`, or
// `model.safetensors.index.json` ({"metadata": {...}, "weight_map": {tensor: shard file}}) plus the
// shards it names, which are resolved relative to the directory. If both exist the single file
// wins, as in transformers. Every shard is opened (and validated) in Open. Tensor names must be
// unique across shards; tensors present in a shard but absent from the weight map are included.
//
// Thread-safety: immutable after Open; all methods are const and thread-safe.
// Ownership: owns its SafetensorsFiles; Entry pointers live as long as the checkpoint.
class SafetensorsCheckpoint {
 public:
  // Opens the checkpoint in `dir`. Errors (messages name the file at fault):
  //   NotFound         `dir` does not exist, holds neither model.safetensors nor the index, or a
  //                    shard named in the index is missing.
  //   InvalidArgument  `dir` is not a directory; the index is not JSON, not an object, has no
  //                    "weight_map" object, maps a tensor to a non-string, or names a shard by an
  //                    absolute path or one with "..".
  //   DataLoss         a shard is corrupt (see SafetensorsFile::Open), a tensor in the weight map
  //                    is absent from its shard, or a tensor name occurs in two shards.
  //   Others as SafetensorsFile::Open.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::filesystem::path& dir);

  // Every tensor name, sorted.
  std::vector<std::string> TensorNames() const;

  struct Entry {
    const SafetensorsFile* file;  // not owned; lives as long as the checkpoint
    const TensorInfo* info;       // an element of file->tensors()
  };
  // The tensor called `name`, or nullopt if there is none.
  std::optional<Entry> Find(absl::string_view name) const;

  // The paths of the opened files: the single file, or the shards in sorted order.
  std::vector<std::filesystem::path> files() const;

 private:
  SafetensorsCheckpoint() = default;

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry, std::less<>> entries_;
};

// One tensor for WriteSafetensors. `data` is the raw little-endian element bytes, row-major; it is
// not owned and must stay valid for the duration of the call.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;  // empty for a 0-d tensor
  absl::Span<const std::byte> data;
};

// Writes `tensors` and `metadata` as a safetensors file at `path`, atomically: the bytes go to
// `path` + ".tmp", which is flushed and renamed over `path`, so readers never see a partial file.
// The header is compact JSON with "__metadata__" first (omitted when empty), then the tensors in
// the given order, whose data is laid out in that same order; it is padded with spaces so that the
// data section starts at a multiple of 8 bytes. With the tensors in the Python library's order the
// output is byte-identical to safetensors.torch.save_file's.
// Thread-safe (no shared state); concurrent writes to the same path race on the temporary file.
// Errors:
//   InvalidArgument   duplicate or reserved ("__metadata__") names; names or metadata that are not
//                     valid UTF-8; a negative dimension; data.size() != numel x dtype size; a
//                     header above 100 MB.
//   NotFound          the parent directory of `path` does not exist.
//   PermissionDenied  it cannot be written.
//   ResourceExhausted the disk is full.
//   Internal          any other I/O error.
absl::Status WriteSafetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace lesion::model

#endif  // LESION_MODEL_SAFETENSORS_SAFETENSORS_H_
