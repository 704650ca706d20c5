#include "model/safetensors/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <system_error>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/mapped_file.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "nlohmann/json.hpp"

namespace lesion::model {
namespace {

using json = nlohmann::json;

// The Python library's MAX_HEADER_SIZE; anything larger is corruption, not a real header.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr absl::string_view kMetadataKey = "__metadata__";
constexpr char kSingleFileName[] = "model.safetensors";
constexpr char kIndexFileName[] = "model.safetensors.index.json";
// Error messages quote names and values from the file, which may be arbitrarily long.
constexpr size_t kMaxQuotedChars = 120;
constexpr size_t kMaxQuotedDims = 16;

struct DTypeEntry {
  DType dtype;
  absl::string_view name;
  size_t size;
};
constexpr std::array<DTypeEntry, 12> kDTypes = {{
    {DType::kF64, "F64", 8},
    {DType::kF32, "F32", 4},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kI64, "I64", 8},
    {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},
    {DType::kI8, "I8", 1},
    {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
    {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kF8E5M2, "F8_E5M2", 1},
}};

// Dtypes that the safetensors spec defines but lesion does not: a valid file we cannot use, not a
// corrupt one.
constexpr std::array<absl::string_view, 9> kUnsupportedDTypes = {"U16",     "U32",     "U64", "F8_E8M0", "F4",
                                                                 "F6_E2M3", "F6_E3M2", "C64", "C128"};

std::string Quote(absl::string_view s) {
  if (s.size() <= kMaxQuotedChars) return absl::StrCat("\"", s, "\"");
  return absl::StrCat("\"", s.substr(0, kMaxQuotedChars), "...\" (", s.size(), " bytes)");
}

// A short description of a JSON value for error messages. Never recursive: dumping a deeply nested
// value from a hostile header could exhaust the stack.
std::string Describe(const json& j) {
  switch (j.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return j.get<bool>() ? "true" : "false";
    case json::value_t::number_integer:
      return absl::StrCat(j.get<int64_t>());
    case json::value_t::number_unsigned:
      return absl::StrCat(j.get<uint64_t>());
    case json::value_t::number_float:
      return absl::StrCat(j.get<double>());
    case json::value_t::string:
      return Quote(j.get_ref<const std::string&>());
    case json::value_t::array:
      return absl::StrCat("an array of ", j.size(), " elements");
    case json::value_t::object:
      return absl::StrCat("an object of ", j.size(), " members");
    default:
      return "a non-JSON value";
  }
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  if (shape.size() <= kMaxQuotedDims) return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
  return absl::StrCat("[", absl::StrJoin(shape.subspan(0, kMaxQuotedDims), ", "), ", ... (", shape.size(), " dims)]");
}

// A JSON integer >= 0 (nlohmann parses non-negative integers as unsigned, but "-0" as signed).
std::optional<uint64_t> AsNonNegativeInt(const json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v >= 0) return static_cast<uint64_t>(v);
  }
  return std::nullopt;
}

// Validates the header of `path` (already parsed as JSON) against a data section of `data_size`
// bytes, producing the tensors in file order and the metadata.
class HeaderParser {
 public:
  HeaderParser(const std::filesystem::path& path, uint64_t data_size) : path_(path), data_size_(data_size) {}

  absl::Status Parse(const json& header) {
    if (!header.is_object()) {
      return Corrupt(absl::StrCat("header is ", Describe(header), ", not a JSON object"));
    }
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == kMetadataKey) {
        RETURN_IF_ERROR(ParseMetadata(it.value()));
      } else {
        ASSIGN_OR_RETURN(TensorInfo info, ParseEntry(it.key(), it.value()));
        tensors_.push_back(std::move(info));
      }
    }
    std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return std::tie(a.data_begin, a.data_end, a.name) < std::tie(b.data_begin, b.data_end, b.name);
    });
    return CheckNoOverlap();
  }

  std::vector<TensorInfo> TakeTensors() { return std::move(tensors_); }
  std::map<std::string, std::string> TakeMetadata() { return std::move(metadata_); }

 private:
  absl::Status Corrupt(absl::string_view detail) const {
    return absl::DataLossError(absl::StrCat("corrupt safetensors file ", path_.string(), ": ", detail));
  }
  absl::Status CorruptTensor(absl::string_view name, absl::string_view detail) const {
    return Corrupt(absl::StrCat("tensor ", Quote(name), ": ", detail));
  }

  absl::Status ParseMetadata(const json& value) {
    // serde deserialises null into the Python library's Option<HashMap>, so null means "none".
    if (value.is_null()) return absl::OkStatus();
    if (!value.is_object()) {
      return Corrupt(absl::StrCat("\"__metadata__\" is ", Describe(value), ", not a string->string map"));
    }
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (!it.value().is_string()) {
        return Corrupt(absl::StrCat("\"__metadata__\" value for key ", Quote(it.key()), " is ", Describe(it.value()),
                                    ", not a string"));
      }
      metadata_.emplace(it.key(), it.value().get_ref<const std::string&>());
    }
    return absl::OkStatus();
  }

  absl::StatusOr<TensorInfo> ParseEntry(const std::string& name, const json& entry) const {
    if (!entry.is_object()) {
      return CorruptTensor(name, absl::StrCat("entry is ", Describe(entry), ", not an object"));
    }
    TensorInfo info;
    info.name = name;

    const auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end()) return CorruptTensor(name, "no \"dtype\"");
    if (!dtype_it->is_string()) {
      return CorruptTensor(name, absl::StrCat("dtype is ", Describe(*dtype_it), ", not a string"));
    }
    const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
    const std::optional<DType> dtype = ParseDType(dtype_name);
    if (!dtype.has_value()) {
      if (std::find(kUnsupportedDTypes.begin(), kUnsupportedDTypes.end(), dtype_name) != kUnsupportedDTypes.end()) {
        return absl::UnimplementedError(absl::StrCat("safetensors file ", path_.string(), ": tensor ", Quote(name),
                                                     " has dtype ", dtype_name, ", which lesion does not support"));
      }
      return CorruptTensor(name, absl::StrCat("unknown dtype ", Quote(dtype_name)));
    }
    info.dtype = *dtype;

    const auto shape_it = entry.find("shape");
    if (shape_it == entry.end()) return CorruptTensor(name, "no \"shape\"");
    if (!shape_it->is_array()) {
      return CorruptTensor(name, absl::StrCat("shape is ", Describe(*shape_it), ", not an array"));
    }
    info.shape.reserve(shape_it->size());
    for (size_t i = 0; i < shape_it->size(); ++i) {
      const json& dim = (*shape_it)[i];
      const std::optional<uint64_t> v = AsNonNegativeInt(dim);
      if (!v.has_value() || *v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return CorruptTensor(
            name, absl::StrCat("shape dimension ", i, " is ", Describe(dim), ", not a non-negative 64-bit integer"));
      }
      info.shape.push_back(static_cast<int64_t>(*v));
    }

    const auto offsets_it = entry.find("data_offsets");
    if (offsets_it == entry.end()) return CorruptTensor(name, "no \"data_offsets\"");
    if (!offsets_it->is_array() || offsets_it->size() != 2) {
      return CorruptTensor(name, absl::StrCat("data_offsets is ", Describe(*offsets_it), ", not [begin, end]"));
    }
    const std::optional<uint64_t> begin = AsNonNegativeInt((*offsets_it)[0]);
    const std::optional<uint64_t> end = AsNonNegativeInt((*offsets_it)[1]);
    const std::string offsets_string =
        absl::StrCat("[", Describe((*offsets_it)[0]), ", ", Describe((*offsets_it)[1]), "]");
    if (!begin.has_value() || !end.has_value()) {
      return CorruptTensor(name, absl::StrCat("data_offsets ", offsets_string, " are not two non-negative integers"));
    }
    if (*begin > *end) {
      return CorruptTensor(name, absl::StrCat("data_offsets ", offsets_string, " end before they begin"));
    }
    if (*end > data_size_) {
      return CorruptTensor(name, absl::StrCat("data_offsets ", offsets_string, " end beyond the data section of ",
                                              data_size_, " bytes (truncated file?)"));
    }
    info.data_begin = *begin;
    info.data_end = *end;

    // numel x size, refusing anything that overflows (a 0 dimension makes any shape empty).
    uint64_t numel = 1;
    bool overflow = false;
    if (std::find(info.shape.begin(), info.shape.end(), 0) != info.shape.end()) {
      numel = 0;
    } else {
      for (int64_t d : info.shape) {
        overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel);
      }
    }
    uint64_t expected_bytes = 0;
    overflow = overflow || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
               __builtin_mul_overflow(numel, DTypeSize(info.dtype), &expected_bytes);
    if (overflow) {
      return CorruptTensor(
          name, absl::StrCat("shape ", ShapeString(info.shape), " x dtype ", dtype_name, " overflows 64 bits"));
    }
    if (*end - *begin != expected_bytes) {
      return CorruptTensor(
          name, absl::StrCat("data_offsets ", offsets_string, " span ", *end - *begin, " bytes but dtype ", dtype_name,
                             " x shape ", ShapeString(info.shape), " needs ", expected_bytes));
    }
    return info;
  }

  // Requires tensors_ sorted by data_begin. Empty tensors occupy no bytes and overlap nothing (the
  // Python writer gives them the offset of their neighbour).
  absl::Status CheckNoOverlap() const {
    const TensorInfo* previous = nullptr;  // the non-empty tensor reaching furthest so far
    for (const TensorInfo& t : tensors_) {
      if (t.data_begin == t.data_end) continue;
      if (previous != nullptr && t.data_begin < previous->data_end) {
        return Corrupt(absl::StrCat("tensors ", Quote(previous->name), " [", previous->data_begin, ", ",
                                    previous->data_end, ") and ", Quote(t.name), " [", t.data_begin, ", ", t.data_end,
                                    ") overlap"));
      }
      if (previous == nullptr || t.data_end > previous->data_end) previous = &t;
    }
    return absl::OkStatus();
  }

  const std::filesystem::path& path_;
  const uint64_t data_size_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

absl::flat_hash_map<std::string, size_t> IndexByName(const std::vector<TensorInfo>& tensors) {
  absl::flat_hash_map<std::string, size_t> index;
  index.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) index.emplace(tensors[i].name, i);
  return index;
}

absl::Status WriteAll(int fd, const std::byte* data, size_t size, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, absl::StrCat("error writing ", path));
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status WithContext(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), absl::StrCat(status.message(), context));
}

}  // namespace

absl::string_view DTypeName(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "UNKNOWN";
}

std::optional<DType> ParseDType(absl::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.name == name) return e.dtype;
  }
  return std::nullopt;
}

size_t DTypeSize(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

int64_t TensorInfo::numel() const {
  // A 0 dimension makes the tensor empty whatever the others are (Open accepts
  // [2^32, 2^32, 0]), so multiplying in order could overflow before reaching it.
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(std::unique_ptr<const MappedFile> mapping, uint64_t data_start,
                                 std::vector<TensorInfo> tensors, std::map<std::string, std::string> metadata)
    : mapping_(std::move(mapping)),
      data_start_(data_start),
      tensors_(std::move(tensors)),
      index_(IndexByName(tensors_)),
      metadata_(std::move(metadata)) {}

SafetensorsFile::~SafetensorsFile() = default;

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, MappedFile::Open(path, "safetensors file"));
  const std::string path_string = path.string();
  const uint64_t file_size = mapping->bytes().size();
  if (file_size < 8) {
    return absl::DataLossError(absl::StrCat("corrupt safetensors file ", path_string, ": ", file_size,
                                            " bytes, too short for the 8-byte header length"));
  }

  const auto* bytes = reinterpret_cast<const unsigned char*>(mapping->bytes().data());
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];
  if (header_size > kMaxHeaderBytes) {
    return absl::DataLossError(absl::StrCat("corrupt safetensors file ", path_string, ": header length ", header_size,
                                            " exceeds the limit of ", kMaxHeaderBytes, " bytes"));
  }
  if (header_size > file_size - 8) {
    return absl::DataLossError(absl::StrCat("corrupt safetensors file ", path_string, ": header length ", header_size,
                                            " exceeds the ", file_size - 8,
                                            " bytes after the length prefix (truncated file?)"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  // nlohmann's lexer stops at a NUL byte as if the input ended there, which would accept
  // "{...}\0garbage"; raw NULs are never valid JSON, so reject them first.
  const bool has_nul = std::memchr(header_begin, '\0', header_size) != nullptr;
  const json header = has_nul ? json(json::value_t::discarded)
                              : json::parse(header_begin, header_begin + header_size,
                                            /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) {
    return absl::DataLossError(absl::StrCat("corrupt safetensors file ", path_string, ": the ", header_size,
                                            "-byte header is not valid UTF-8 JSON"));
  }
  const uint64_t data_start = 8 + header_size;
  HeaderParser parser(path, file_size - data_start);
  RETURN_IF_ERROR(parser.Parse(header));
  return std::unique_ptr<SafetensorsFile>(
      new SafetensorsFile(std::move(mapping), data_start, parser.TakeTensors(), parser.TakeMetadata()));
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Span<const std::byte> SafetensorsFile::Data(const TensorInfo& t) const {
  const absl::Span<const std::byte> bytes = mapping_->bytes();
  const uint64_t data_size = bytes.size() - data_start_;
  if (t.data_begin > t.data_end || t.data_end > data_size) return {};
  return bytes.subspan(data_start_ + t.data_begin, t.data_end - t.data_begin);
}

// ---------------------------------------------------------------------------------------------
// SafetensorsCheckpoint

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(const std::filesystem::path& dir) {
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(dir, ec);
  if (!std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat("checkpoint directory not found: ", dir.string()));
  }
  if (!std::filesystem::is_directory(status)) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint path ", dir.string(), " is not a directory"));
  }
  auto checkpoint = std::unique_ptr<SafetensorsCheckpoint>(new SafetensorsCheckpoint());

  const std::filesystem::path single = dir / kSingleFileName;
  const std::filesystem::path index_path = dir / kIndexFileName;
  if (std::filesystem::exists(single, ec)) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single));
    for (const TensorInfo& info : file->tensors()) {
      checkpoint->entries_.emplace(info.name, Entry{file.get(), &info});
    }
    checkpoint->files_.push_back(std::move(file));
    return checkpoint;
  }
  if (!std::filesystem::exists(index_path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint directory ", dir.string(), " has neither ", kSingleFileName, " nor ", kIndexFileName));
  }

  ASSIGN_OR_RETURN(const std::string index_text, ReadFile(index_path));
  const std::string index_name = index_path.string();
  const json index = json::parse(index_text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint index ", index_name, " is not valid JSON"));
  }
  if (!index.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint index ", index_name, " is ", Describe(index), ", not a JSON object"));
  }
  const auto weight_map = index.find("weight_map");
  if (weight_map == index.end() || !weight_map->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint index ", index_name, " has no \"weight_map\" object"));
  }

  // Shard path (normalised, so that "a" and "./a" are one file) -> tensors the index puts there.
  std::map<std::filesystem::path, std::vector<std::string>> shards;
  for (auto it = weight_map->begin(); it != weight_map->end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint index ", index_name, ": weight_map entry for tensor ",
                                                     Quote(it.key()), " is ", Describe(it.value()),
                                                     ", not a file name"));
    }
    const std::filesystem::path shard(it.value().get_ref<const std::string&>());
    const bool escapes =
        std::any_of(shard.begin(), shard.end(), [](const std::filesystem::path& part) { return part == ".."; });
    if (shard.empty() || shard.is_absolute() || escapes) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint index ", index_name, ": tensor ", Quote(it.key()),
                                                     " is mapped to shard ", Quote(shard.string()),
                                                     "; shards must be relative paths inside the directory"));
    }
    shards[(dir / shard).lexically_normal()].push_back(it.key());
  }

  for (const auto& [shard_path, names] : shards) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(shard_path);
    if (!file.ok()) {
      return WithContext(file.status(), absl::StrCat(" (a shard named by ", index_name, ")"));
    }
    for (const TensorInfo& info : (*file)->tensors()) {
      const auto [it, inserted] = checkpoint->entries_.emplace(info.name, Entry{file->get(), &info});
      if (!inserted) {
        return absl::DataLossError(absl::StrCat("checkpoint ", dir.string(), ": tensor ", Quote(info.name),
                                                " occurs in both ", it->second.file->path().string(), " and ",
                                                shard_path.string()));
      }
    }
    checkpoint->files_.push_back(*std::move(file));
  }
  for (const auto& [shard_path, names] : shards) {
    for (const std::string& name : names) {
      const auto it = checkpoint->entries_.find(name);
      if (it == checkpoint->entries_.end() || it->second.file->path() != shard_path) {
        return absl::DataLossError(absl::StrCat(
            "checkpoint index ", index_name, " maps tensor ", Quote(name), " to ", shard_path.string(),
            ", which has no such tensor",
            it == checkpoint->entries_.end() ? std::string()
                                             : absl::StrCat(" (it is in ", it->second.file->path().string(), ")")));
      }
    }
  }
  return checkpoint;
}

std::vector<std::string> SafetensorsCheckpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) names.push_back(name);
  return names;
}

std::optional<SafetensorsCheckpoint::Entry> SafetensorsCheckpoint::Find(absl::string_view name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::filesystem::path> SafetensorsCheckpoint::files() const {
  std::vector<std::filesystem::path> paths;
  paths.reserve(files_.size());
  for (const auto& file : files_) paths.push_back(file->path());
  return paths;
}

// ---------------------------------------------------------------------------------------------
// WriteSafetensors

absl::Status WriteSafetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  const std::string path_string = path.string();
  // ordered_json keeps the Python library's layout: __metadata__ first, tensors in offset order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) {
      if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
        return absl::InvalidArgumentError(
            absl::StrCat("cannot write ", path_string, ": metadata entry ", Quote(key), " is not valid UTF-8"));
      }
      meta[key] = value;
    }
    header[std::string(kMetadataKey)] = std::move(meta);
  }

  absl::flat_hash_set<absl::string_view> names;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    auto invalid = [&](absl::string_view detail) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write ", path_string, ": tensor ", Quote(t.name), ": ", detail));
    };
    if (t.name == kMetadataKey) return invalid("the name is reserved for metadata");
    if (!IsValidUtf8(t.name)) return invalid("the name is not valid UTF-8");
    if (!names.insert(t.name).second) return invalid("duplicate name");
    uint64_t numel = 1;
    bool overflow = false;
    for (int64_t d : t.shape) {
      if (d < 0) return invalid(absl::StrCat("negative dimension in shape ", ShapeString(t.shape)));
      overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel);
    }
    uint64_t nbytes = 0;
    if (overflow || __builtin_mul_overflow(numel, DTypeSize(t.dtype), &nbytes)) {
      return invalid(absl::StrCat("shape ", ShapeString(t.shape), " overflows 64 bits"));
    }
    if (nbytes != t.data.size()) {
      return invalid(absl::StrCat("dtype ", DTypeName(t.dtype), " x shape ", ShapeString(t.shape), " needs ", nbytes,
                                  " bytes but ", t.data.size(), " were given"));
    }
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = std::string(DTypeName(t.dtype));
    entry["shape"] = t.shape;
    entry["data_offsets"] = nlohmann::ordered_json::array({offset, offset + nbytes});
    header[t.name] = std::move(entry);
    offset += nbytes;
  }

  // All strings were validated above, so `replace` never fires; it only rules out a throw.
  std::string header_text =
      header.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::ordered_json::error_handler_t::replace);
  header_text.resize((header_text.size() + 7) / 8 * 8, ' ');
  if (header_text.size() > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write ", path_string, ": the header of ", header_text.size(),
                                                   " bytes exceeds the limit of ", kMaxHeaderBytes, " bytes"));
  }
  std::array<std::byte, 8> length_prefix;
  for (int i = 0; i < 8; ++i) {
    length_prefix[i] = static_cast<std::byte>((header_text.size() >> (8 * i)) & 0xFF);
  }

  std::filesystem::path tmp = path;
  tmp += ".tmp";
  const std::string tmp_string = tmp.string();
  ScopedFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) return ErrnoToStatus(errno, absl::StrCat("cannot create ", tmp_string));
  absl::Status status = WriteAll(fd.get(), length_prefix.data(), length_prefix.size(), tmp_string);
  if (status.ok()) {
    status = WriteAll(fd.get(), reinterpret_cast<const std::byte*>(header_text.data()), header_text.size(), tmp_string);
  }
  for (const TensorToWrite& t : tensors) {
    if (!status.ok()) break;
    status = WriteAll(fd.get(), t.data.data(), t.data.size(), tmp_string);
  }
  if (status.ok() && ::fsync(fd.get()) != 0) {
    status = ErrnoToStatus(errno, absl::StrCat("cannot flush ", tmp_string));
  }
  if (fd.Close() != 0 && status.ok()) {
    status = ErrnoToStatus(errno, absl::StrCat("cannot close ", tmp_string));
  }
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = ErrnoToStatus(errno, absl::StrCat("cannot rename ", tmp_string, " to ", path_string));
  }
  if (!status.ok()) ::unlink(tmp.c_str());
  return status;
}

}  // namespace lesion::model
