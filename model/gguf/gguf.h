// Torch-free reading of GGUF files (llama.cpp's model format, versions 2 and 3), single files and
// the split sets that llama.cpp's gguf-split writes.
//
// A GGUF file is, all little-endian: "GGUF", u32 version, u64 tensor count, u64 key-value count;
// the key-value pairs (u64-length-prefixed key, u32 value type, value); the tensor infos (name,
// u32 n_dims, n_dims x u64 dims in ggml order, u32 ggml type, u64 offset); padding up to
// `general.alignment` (default 32); then the data section, in which every tensor's offset is a
// multiple of the alignment. Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
//
//   ASSIGN_OR_RETURN(std::unique_ptr<GgufCheckpoint> ckpt, GgufCheckpoint::Open(path));
//   const GgufValue* arch = ckpt->Find("general.architecture");
//   std::optional<GgufCheckpoint::Entry> e = ckpt->FindTensor("blk.0.attn_q.weight");
//   if (!e.has_value()) return absl::NotFoundError("...");
//   std::vector<float> w(e->info->numel());
//   RETURN_IF_ERROR(DequantizeTensor(*e->file, *e->info, absl::MakeSpan(w)));  // dequantize.h
//
// Thread-safety: every function here is thread-safe; GgufValue, GgufFile and GgufCheckpoint are
// immutable after construction and may be shared across threads without locking.
//
// Hostile input: nothing here throws, and no bytes can make Open crash, hang or allocate more than
// a small multiple of the file size (with absolute caps on the numbers of keys, tensors and
// nested arrays): every count, length, dimension, type number and offset is validated before it
// is used. One caveat inherent to mmap: if another process truncates a file while it is mapped,
// touching the lost pages raises SIGBUS.
#ifndef LESION_MODEL_GGUF_GGUF_H_
#define LESION_MODEL_GGUF_GGUF_H_

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/mapped_file.h"

namespace lesion::model {

namespace gguf_internal {
class Parser;
// `s` (a name from a file) double-quoted for an error message: escaped, and cut if long.
std::string Quote(absl::string_view s);
}  // namespace gguf_internal

// ggml's tensor type numbers (ggml.h, as mirrored by gguf-py 0.19.0's GGMLQuantizationType). The
// gaps (4, 5, 31-33, 36-38) are types that ggml has removed; files using them are refused by
// llama.cpp, and here they are "unknown" types.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
  kNVFP4 = 40,
  kQ1_0 = 41,
};

// The name of a ggml type number as gguf-py spells it: "F32", "Q4_1", "Q4_K", "BF16", "IQ2_XXS",
// ...; "unknown type 77" for a number ggml does not define (removed types included).
std::string GgmlTypeName(uint32_t type);

// Whether `type` is a ggml type number at all (one of the GgmlType enumerators).
bool IsKnownGgmlType(uint32_t type);

// Whether DequantizeToFloat (dequantize.h) supports `type`: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1
// Q2_K Q3_K Q4_K Q5_K Q6_K.
bool CanDequantize(uint32_t type);

// Elements per block and bytes per block of a known type (F32: 1 and 4; Q4_K: 256 and 144).
// InvalidArgument naming the type for an unknown one.
absl::StatusOr<std::pair<int64_t, int64_t>> GgmlBlockSize(uint32_t type);

// Bytes of `n_elements` elements of `type`. InvalidArgument (naming the type) if the type is
// unknown, n_elements is negative or not a multiple of the type's block size, or the byte count
// overflows 64 bits.
absl::StatusOr<uint64_t> GgmlRowBytes(uint32_t type, int64_t n_elements);

// The types a metadata value can have (the numbers are the file's).
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "uint8", "int8", ..., "float32", "bool", "string", "array", "uint64", "int64", "float64".
absl::string_view GgufValueTypeName(GgufValueType type);

// One metadata value: a scalar or an array (of scalars, strings, or arrays). Immutable; holds its
// own copy of the bytes, so it may outlive the file it came from. Accessors return nullopt when
// the value is not of the kind asked for; none of them fails otherwise.
class GgufValue {
 public:
  GgufValue() = default;  // an uint8 0; GgufFile never hands out default values

  GgufValueType type() const { return type_; }

  // The value of a scalar of any integer type (not bool); nullopt for a uint64 above INT64_MAX.
  std::optional<int64_t> AsInt() const;
  // A float32 or float64 scalar (exactly), or an integer scalar (converted, rounding above 2^53).
  std::optional<double> AsFloat() const;
  // A bool scalar (any nonzero byte is true, as in C).
  std::optional<bool> AsBool() const;
  // A string scalar: its bytes, which GGUF means as UTF-8 but lesion does not check. The view
  // lives as long as this value.
  std::optional<absl::string_view> AsString() const;

  bool is_array() const { return type_ == GgufValueType::kArray; }
  // The type of the elements of an array; for a scalar, type().
  GgufValueType element_type() const { return is_array() ? element_type_ : type_; }
  // The number of elements of an array; 0 for a scalar.
  size_t size() const { return size_; }

  // An array of strings, copied out.
  std::optional<std::vector<std::string>> AsStringArray() const;
  // Element `i` of an array of strings without copying (nullopt if out of range or not strings).
  std::optional<absl::string_view> StringAt(size_t i) const;
  // An array of any integer element type (not bool); nullopt if an element is a uint64 above
  // INT64_MAX.
  std::optional<std::vector<int64_t>> AsIntArray() const;
  // An array of float32 elements (token scores, say).
  std::optional<std::vector<float>> AsFloat32Array() const;
  // An array of bools (any nonzero byte is true); a per-layer flag list, say.
  std::optional<std::vector<bool>> AsBoolArray() const;
  // The elements of an array of arrays (empty for any other value).
  absl::Span<const GgufValue> ArrayElements() const { return elements_; }

  // Human-readable text for `inspect`: integers in decimal, floats in their shortest round-trip
  // form, bools as true/false, strings quoted and escaped, arrays as "[1, 2, 3]" if that fits in
  // `max_chars` and else as a summary such as "[49152 strings]" or "[49152 float32 values]".
  // Strings longer than `max_chars` are cut (with "..." and their length in bytes).
  std::string ToString(size_t max_chars = 80) const;

 private:
  friend class gguf_internal::Parser;

  std::string ElementToString(size_t i, size_t max_chars) const;
  // The raw little-endian bits of numeric/bool element `i` (zero-extended).
  uint64_t ElementBits(size_t i) const;

  GgufValueType type_ = GgufValueType::kUint8;
  GgufValueType element_type_ = GgufValueType::kUint8;  // arrays only
  uint64_t bits_ = 0;  // numeric and bool scalars: the raw little-endian bits, zero-extended
  size_t size_ = 0;    // arrays: the element count
  // kString: the string. Arrays of numbers and bools: the elements' little-endian bytes. Arrays of
  // strings: the strings concatenated, element i ending at string_ends_[i].
  std::string bytes_;
  std::vector<uint64_t> string_ends_;
  std::vector<GgufValue> elements_;  // arrays of arrays
};

// One tensor's entry in a GGUF file.
struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] varies fastest (the row length); <= 4 of them
  uint32_t type;              // a GgmlType number, raw so unknown types can be named in errors
  uint64_t offset;            // from the start of the data section; a multiple of the alignment
  uint64_t n_bytes;           // GgmlRowBytes(type, numel()); 0 when the type is unknown

  // Product of dims: 1 for no dims, 0 if any is 0.
  int64_t numel() const;
  // Row-major (numpy / torch) order: dims reversed.
  std::vector<int64_t> shape() const;
};

// A memory-mapped, validated GGUF file.
//
// Thread-safety: immutable after Open; all methods are const and thread-safe.
// Ownership: owns the file's MappedFile (common/mapped_file.h: a read-only private mapping; the
// descriptor is closed once mapped). Spans from Data() and the references and pointers from
// metadata()/Find()/tensors()/FindTensor() live as long as this object.
// Alignment: Data() spans start at a multiple of the file's alignment from the start of the
// mapping's data section, but the data section itself need not be aligned in memory for every
// element type; copy (memcpy) rather than reinterpret_cast.
// Tensors whose type number ggml does not define are listed (so `inspect` can show them) with
// n_bytes 0 and an empty Data(); types that are defined but that lesion cannot dequantize (IQ2_XXS,
// Q8_K, I32, ...) have their bytes available, and DequantizeToFloat refuses them by name.
class GgufFile {
 public:
  // Maps (with MappedFile::Open) and validates `path`. Every message names the file, and the
  // key, tensor, and type involved, if any.
  //   NotFound          `path` does not exist.
  //   PermissionDenied  it cannot be opened for reading.
  //   InvalidArgument   not a regular file ("... is not a regular file (it is a FIFO), so not a
  //                     GGUF file": a directory, FIFO or device, refused without being opened, so
  //                     a FIFO never hangs); not GGUF (bad magic); version 1 ("GGUF version 1
  //                     is not supported"), a big-endian file, or a version above 3; a key or
  //                     array element of an undefined value type; arrays nested more than 4
  //                     deep or more than 2^20 nested arrays; more than 2^20 keys or tensors;
  //                     a duplicate key or tensor name; general.alignment not an integer power
  //                     of two <= 2^31; a tensor with more than 4 dims, a dim >= 2^63, an element
  //                     count or byte count that overflows, a row length (dims[0]) that is not a
  //                     multiple of its type's block size, or an offset that is not a multiple of
  //                     the alignment; two tensors whose bytes overlap.
  //   DataLoss          the file is empty, or ends before something it announces: a truncated
  //                     file, or a count, string length or array length larger than the bytes
  //                     left could hold, or a tensor whose bytes extend past the end of the file.
  //   ResourceExhausted / Internal   mmap or another system call failed.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::filesystem::path& path);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  // The path passed to Open.
  const std::filesystem::path& path() const { return mapping_->path(); }
  // general.alignment, or 32 if absent.
  uint64_t alignment() const { return alignment_; }
  // The byte offset of the data section in the file.
  uint64_t data_offset() const { return data_offset_; }

  // Every key-value pair, in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  // The value of `key`, or nullptr if absent. Lives as long as `this`.
  const GgufValue* Find(absl::string_view key) const;

  // Every tensor, in file order (the order of the tensor infos, not of the offsets).
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // The tensor called `name`, or nullptr. Lives as long as `this`.
  const GgufTensorInfo* FindTensor(absl::string_view name) const;

  // The n_bytes bytes of `info`, which must be an element of this file's tensors(). Empty for a
  // tensor of an unknown type or with no elements, and for a foreign GgufTensorInfo whose range
  // lies outside the data section. May be unaligned (see the class comment).
  absl::Span<const std::byte> Data(const GgufTensorInfo& info) const;

 private:
  GgufFile() = default;

  std::unique_ptr<const MappedFile> mapping_;  // the whole file (never empty); never null
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  absl::flat_hash_map<std::string, size_t> metadata_index_;  // key -> position in metadata_
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;  // name -> position in tensors_
};

// All files of a checkpoint: one .gguf, or the splits that llama.cpp's gguf-split (and gguf-py's
// GGUFWriter with split_max_*) writes: NAME-00001-of-00003.gguf ... NAME-00003-of-00003.gguf, each
// with the metadata split.no (0-based), split.count and, in at least the first, split.tensors.count.
// It can be opened from any one split; a file without split.count (or with split.count 1) is a
// single-file checkpoint, whatever its name. Every split is opened and validated in Open.
//
// Thread-safety: immutable after Open; all methods are const and thread-safe.
// Ownership: owns its GgufFiles; Entry pointers live as long as the checkpoint.
class GgufCheckpoint {
 public:
  // Errors (messages name the file at fault, and the file the checkpoint was opened from):
  //   NotFound          `path` or another split of its set does not exist.
  //   InvalidArgument   split.no / split.count are not integers or inconsistent (split.no out of
  //                     range, a split whose split.no or split.count disagrees with its name, a
  //                     name that does not follow the NAME-0000i-of-0000n.gguf pattern while
  //                     split.count > 1), split.tensors.count differs from the number of tensors
  //                     found, or a tensor name occurs in two splits.
  //   Others as GgufFile::Open.
  static absl::StatusOr<std::unique_ptr<GgufCheckpoint>> Open(const std::filesystem::path& path);

  // The first split (the only file of a single-file checkpoint): it holds the model's metadata.
  const GgufFile& first() const { return *files_.front(); }
  // Every split, in split order.
  const std::vector<std::unique_ptr<GgufFile>>& files() const { return files_; }
  // Metadata of the first file; nullptr if absent.
  const GgufValue* Find(absl::string_view key) const { return first().Find(key); }

  struct Entry {
    const GgufFile* file;        // not owned; lives as long as the checkpoint
    const GgufTensorInfo* info;  // an element of file->tensors()
  };
  // The tensor called `name` in any split, or nullopt.
  std::optional<Entry> FindTensor(absl::string_view name) const;
  // Every tensor: the splits in order, each one's tensors in file order.
  std::vector<Entry> Tensors() const;

 private:
  GgufCheckpoint() = default;

  std::vector<std::unique_ptr<GgufFile>> files_;
  absl::flat_hash_map<std::string, Entry> entries_;
};

}  // namespace lesion::model

#endif  // LESION_MODEL_GGUF_GGUF_H_
