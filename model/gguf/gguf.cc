#include "model/gguf/gguf.h"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/mapped_file.h"
#include "common/status_macros.h"
#include "common/utf8.h"

namespace lesion::model {
namespace {

static_assert(std::endian::native == std::endian::little,
              "GGUF data is little-endian; a big-endian host would need byte swaps");

constexpr uint64_t kDefaultAlignment = 32;
constexpr uint64_t kMaxAlignment = uint64_t{1} << 31;  // general.alignment is a uint32
constexpr uint32_t kMaxDims = 4;                       // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 4;
// Absolute caps, so that memory stays bounded even for a huge file made of tiny entries. Real
// models have tens of keys and at most a few thousand tensors.
constexpr uint64_t kMaxKeyValues = uint64_t{1} << 20;
constexpr uint64_t kMaxTensors = uint64_t{1} << 20;
constexpr uint64_t kMaxNestedArrays = uint64_t{1} << 20;
// Error messages quote names from the file, which may be long or binary.
constexpr size_t kMaxQuotedChars = 120;
constexpr absl::string_view kAlignmentKey = "general.alignment";
constexpr uint32_t kMaxSplits = 65535;  // split.count is a uint16

struct TypeTraits {
  uint32_t type;
  absl::string_view name;
  int64_t block_elements;
  int64_t block_bytes;
  bool dequantizable;
};

// gguf-py 0.19.0's GGML_QUANT_SIZES (checked against it by gguf_test through a fixture).
constexpr std::array<TypeTraits, 34> kTypes = {{
    {0, "F32", 1, 4, true},          {1, "F16", 1, 2, true},          {2, "Q4_0", 32, 18, true},
    {3, "Q4_1", 32, 20, true},       {6, "Q5_0", 32, 22, true},       {7, "Q5_1", 32, 24, true},
    {8, "Q8_0", 32, 34, true},       {9, "Q8_1", 32, 40, false},      {10, "Q2_K", 256, 84, true},
    {11, "Q3_K", 256, 110, true},    {12, "Q4_K", 256, 144, true},    {13, "Q5_K", 256, 176, true},
    {14, "Q6_K", 256, 210, true},    {15, "Q8_K", 256, 292, false},   {16, "IQ2_XXS", 256, 66, false},
    {17, "IQ2_XS", 256, 74, false},  {18, "IQ3_XXS", 256, 98, false}, {19, "IQ1_S", 256, 50, false},
    {20, "IQ4_NL", 32, 18, false},   {21, "IQ3_S", 256, 110, false},  {22, "IQ2_S", 256, 82, false},
    {23, "IQ4_XS", 256, 136, false}, {24, "I8", 1, 1, false},         {25, "I16", 1, 2, false},
    {26, "I32", 1, 4, false},        {27, "I64", 1, 8, false},        {28, "F64", 1, 8, false},
    {29, "IQ1_M", 256, 56, false},   {30, "BF16", 1, 2, true},        {34, "TQ1_0", 256, 54, false},
    {35, "TQ2_0", 256, 66, false},   {39, "MXFP4", 32, 17, false},    {40, "NVFP4", 64, 36, false},
    {41, "Q1_0", 128, 18, false},
}};

const TypeTraits* FindType(uint32_t type) {
  for (const TypeTraits& t : kTypes) {
    if (t.type == type) return &t;
  }
  return nullptr;
}

constexpr uint32_t kNumValueTypes = 13;
constexpr std::array<absl::string_view, kNumValueTypes> kValueTypeNames = {
    "uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
    "bool",  "string", "array",  "uint64", "int64",  "float64"};

// Bytes of a numeric or bool value; 0 for string and array.
size_t ScalarSize(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

bool IsIntegerType(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
      return true;
    default:
      return false;
  }
}

// The integer that raw little-endian `bits` of integer type `type` hold, or nullopt for a uint64
// above INT64_MAX.
std::optional<int64_t> BitsToInt(GgufValueType type, uint64_t bits) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kUint16:
    case GgufValueType::kUint32:
      return static_cast<int64_t>(bits);
    case GgufValueType::kInt8:
      return static_cast<int8_t>(bits);
    case GgufValueType::kInt16:
      return static_cast<int16_t>(bits);
    case GgufValueType::kInt32:
      return static_cast<int32_t>(bits);
    case GgufValueType::kInt64:
      return static_cast<int64_t>(bits);
    case GgufValueType::kUint64:
      if (bits > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
      return static_cast<int64_t>(bits);
    default:
      return std::nullopt;
  }
}

uint64_t LoadLe(const unsigned char* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = n; i-- > 0;) v = (v << 8) | p[i];
  return v;
}

template <typename T>
std::string ShortestRoundTrip(T v) {
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  return ec == std::errc() ? std::string(buf, end) : std::string("?");
}

// Renders numeric/bool raw bits of `type` as text.
std::string ScalarBitsToString(GgufValueType type, uint64_t bits) {
  switch (type) {
    case GgufValueType::kBool:
      return bits != 0 ? "true" : "false";
    case GgufValueType::kFloat32:
      return ShortestRoundTrip(std::bit_cast<float>(static_cast<uint32_t>(bits)));
    case GgufValueType::kFloat64:
      return ShortestRoundTrip(std::bit_cast<double>(bits));
    case GgufValueType::kUint64:
      return absl::StrCat(bits);
    default: {
      const std::optional<int64_t> v = BitsToInt(type, bits);
      return v.has_value() ? absl::StrCat(*v) : "?";
    }
  }
}

// `s` in double quotes, with quotes, backslashes, control characters and bytes that are not valid
// UTF-8 escaped; cut after about `max_chars` characters with "..." and the length in bytes.
std::string QuoteString(absl::string_view s, size_t max_chars) {
  std::string out = "\"";
  size_t i = 0;
  while (i < s.size()) {
    if (out.size() >= max_chars + 1) {
      absl::StrAppend(&out, "...\" (", s.size(), " bytes)");
      return out;
    }
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = ValidUtf8Length(s, i);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (n == 0 || c < 0x20 || c == 0x7F) {
      absl::StrAppend(&out, absl::StrFormat("\\x%02x", c));
    } else {
      out.append(s.data() + i, n);
      i += n;
      continue;
    }
    ++i;
  }
  out.push_back('"');
  return out;
}

absl::Status WithSuffix(const absl::Status& status, absl::string_view suffix) {
  return absl::Status(status.code(), absl::StrCat(status.message(), suffix));
}

// "NAME-00002-of-00003.gguf" -> {"NAME", 2, 3}.
struct SplitName {
  std::string prefix;
  uint64_t index;
  uint64_t count;
};
std::optional<SplitName> ParseSplitName(absl::string_view file_name) {
  constexpr absl::string_view kSuffix = ".gguf";
  if (file_name.size() <= kSuffix.size() || file_name.substr(file_name.size() - kSuffix.size()) != kSuffix) {
    return std::nullopt;
  }
  const absl::string_view stem = file_name.substr(0, file_name.size() - kSuffix.size());
  const size_t of = stem.rfind("-of-");
  if (of == absl::string_view::npos) return std::nullopt;
  const absl::string_view count_digits = stem.substr(of + 4);
  const absl::string_view before = stem.substr(0, of);
  const size_t dash = before.rfind('-');
  if (dash == absl::string_view::npos) return std::nullopt;
  const absl::string_view index_digits = before.substr(dash + 1);
  auto parse = [](absl::string_view digits) -> std::optional<uint64_t> {
    if (digits.size() < 5 || digits.size() > 9) return std::nullopt;
    uint64_t v = 0;
    for (char c : digits) {
      if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return std::nullopt;
      v = v * 10 + static_cast<uint64_t>(c - '0');
    }
    return v;
  };
  const std::optional<uint64_t> index = parse(index_digits);
  const std::optional<uint64_t> count = parse(count_digits);
  if (!index.has_value() || !count.has_value()) return std::nullopt;
  return SplitName{std::string(before.substr(0, dash)), *index, *count};
}

}  // namespace

namespace gguf_internal {

std::string Quote(absl::string_view s) { return QuoteString(s, kMaxQuotedChars); }

}  // namespace gguf_internal

using gguf_internal::Quote;

// ---------------------------------------------------------------------------------------------
// Types

std::string GgmlTypeName(uint32_t type) {
  const TypeTraits* t = FindType(type);
  return t != nullptr ? std::string(t->name) : absl::StrCat("unknown type ", type);
}

bool IsKnownGgmlType(uint32_t type) { return FindType(type) != nullptr; }

bool CanDequantize(uint32_t type) {
  const TypeTraits* t = FindType(type);
  return t != nullptr && t->dequantizable;
}

absl::StatusOr<std::pair<int64_t, int64_t>> GgmlBlockSize(uint32_t type) {
  const TypeTraits* t = FindType(type);
  if (t == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("ggml type ", type, " is unknown (not a type that ggml defines)"));
  }
  return std::make_pair(t->block_elements, t->block_bytes);
}

absl::StatusOr<uint64_t> GgmlRowBytes(uint32_t type, int64_t n_elements) {
  const TypeTraits* t = FindType(type);
  if (t == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot size ", n_elements, " elements of ggml type ", type, ", which ggml does not define"));
  }
  if (n_elements < 0) {
    return absl::InvalidArgumentError(absl::StrCat("negative element count ", n_elements, " of type ", t->name));
  }
  if (n_elements % t->block_elements != 0) {
    return absl::InvalidArgumentError(absl::StrCat(n_elements, " elements of type ", t->name,
                                                   " are not a whole number of its ", t->block_elements,
                                                   "-element blocks"));
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(n_elements / t->block_elements),
                             static_cast<uint64_t>(t->block_bytes), &bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat(n_elements, " elements of type ", t->name, " overflow a 64-bit byte count"));
  }
  return bytes;
}

absl::string_view GgufValueTypeName(GgufValueType type) {
  const auto i = static_cast<uint32_t>(type);
  return i < kNumValueTypes ? kValueTypeNames[i] : "unknown value type";
}

// ---------------------------------------------------------------------------------------------
// GgufValue

std::optional<int64_t> GgufValue::AsInt() const { return BitsToInt(type_, bits_); }

std::optional<double> GgufValue::AsFloat() const {
  switch (type_) {
    case GgufValueType::kFloat32:
      return static_cast<double>(std::bit_cast<float>(static_cast<uint32_t>(bits_)));
    case GgufValueType::kFloat64:
      return std::bit_cast<double>(bits_);
    case GgufValueType::kUint64:
      return static_cast<double>(bits_);
    default: {
      if (!IsIntegerType(type_)) return std::nullopt;
      return static_cast<double>(*BitsToInt(type_, bits_));
    }
  }
}

std::optional<bool> GgufValue::AsBool() const {
  if (type_ != GgufValueType::kBool) return std::nullopt;
  return bits_ != 0;
}

std::optional<absl::string_view> GgufValue::AsString() const {
  if (type_ != GgufValueType::kString) return std::nullopt;
  return absl::string_view(bytes_);
}

std::optional<absl::string_view> GgufValue::StringAt(size_t i) const {
  if (!is_array() || element_type_ != GgufValueType::kString || i >= size_) return std::nullopt;
  const uint64_t begin = i == 0 ? 0 : string_ends_[i - 1];
  return absl::string_view(bytes_).substr(begin, string_ends_[i] - begin);
}

std::optional<std::vector<std::string>> GgufValue::AsStringArray() const {
  if (!is_array() || element_type_ != GgufValueType::kString) return std::nullopt;
  std::vector<std::string> out;
  out.reserve(size_);
  for (size_t i = 0; i < size_; ++i) out.emplace_back(*StringAt(i));
  return out;
}

uint64_t GgufValue::ElementBits(size_t i) const {
  const size_t n = ScalarSize(element_type_);
  return LoadLe(reinterpret_cast<const unsigned char*>(bytes_.data()) + i * n, n);
}

std::optional<std::vector<int64_t>> GgufValue::AsIntArray() const {
  if (!is_array() || !IsIntegerType(element_type_)) return std::nullopt;
  std::vector<int64_t> out;
  out.reserve(size_);
  for (size_t i = 0; i < size_; ++i) {
    const std::optional<int64_t> v = BitsToInt(element_type_, ElementBits(i));
    if (!v.has_value()) return std::nullopt;
    out.push_back(*v);
  }
  return out;
}

std::optional<std::vector<bool>> GgufValue::AsBoolArray() const {
  if (!is_array() || element_type_ != GgufValueType::kBool) return std::nullopt;
  std::vector<bool> out(size_);
  for (size_t i = 0; i < size_; ++i) out[i] = ElementBits(i) != 0;
  return out;
}

std::optional<std::vector<float>> GgufValue::AsFloat32Array() const {
  if (!is_array() || element_type_ != GgufValueType::kFloat32) return std::nullopt;
  std::vector<float> out(size_);
  if (size_ > 0) std::memcpy(out.data(), bytes_.data(), size_ * sizeof(float));
  return out;
}

std::string GgufValue::ElementToString(size_t i, size_t max_chars) const {
  switch (element_type_) {
    case GgufValueType::kString:
      return QuoteString(*StringAt(i), max_chars);
    case GgufValueType::kArray:
      return elements_[i].ToString(max_chars);
    default:
      return ScalarBitsToString(element_type_, ElementBits(i));
  }
}

std::string GgufValue::ToString(size_t max_chars) const {
  if (type_ == GgufValueType::kString) return QuoteString(bytes_, max_chars);
  if (!is_array()) return ScalarBitsToString(type_, bits_);
  std::string out = "[";
  for (size_t i = 0; i < size_; ++i) {
    if (i > 0) out += ", ";
    // Stop as soon as the full form cannot fit: a 150k-token vocabulary is never rendered.
    if (out.size() > max_chars) break;
    out += ElementToString(i, max_chars);
  }
  out += "]";
  if (out.size() <= max_chars) return out;
  switch (element_type_) {
    case GgufValueType::kString:
      return absl::StrCat("[", size_, " strings]");
    case GgufValueType::kArray:
      return absl::StrCat("[", size_, " arrays]");
    case GgufValueType::kBool:
      return absl::StrCat("[", size_, " bools]");
    default:
      return absl::StrCat("[", size_, " ", GgufValueTypeName(element_type_), " values]");
  }
}

// ---------------------------------------------------------------------------------------------
// Parsing

namespace gguf_internal {

// Reads one GGUF image. Every read is bounds-checked against the bytes left; every error message
// starts with the file's path.
class Parser {
 public:
  Parser(std::string path, const unsigned char* data, uint64_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  absl::Status Parse() {
    RETURN_IF_ERROR(ParseHeader());
    RETURN_IF_ERROR(ParseMetadata());
    RETURN_IF_ERROR(ParseAlignment());
    RETURN_IF_ERROR(ParseTensorInfos());
    return CheckTensorExtents();
  }

  uint32_t version = 0;
  uint64_t alignment = kDefaultAlignment;
  uint64_t data_offset = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata;
  absl::flat_hash_map<std::string, size_t> metadata_index;
  std::vector<GgufTensorInfo> tensors;
  absl::flat_hash_map<std::string, size_t> tensor_index;

 private:
  uint64_t remaining() const { return size_ - pos_; }

  absl::Status Invalid(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", message));
  }
  absl::Status Truncated(absl::string_view what) const {
    return absl::DataLossError(absl::StrCat(path_, ": the file ends (at byte ", size_, ") inside ", what,
                                            ", which starts at byte ", pos_, " (truncated file?)"));
  }
  absl::Status TooLong(absl::string_view what, uint64_t count, absl::string_view unit, uint64_t min_unit_bytes) const {
    return absl::DataLossError(absl::StrCat(path_, ": ", what, " announces ", count, " ", unit, " (at least ",
                                            min_unit_bytes, " bytes each), but only ", remaining(),
                                            " bytes are left in the file (truncated or "
                                            "corrupt file)"));
  }

  absl::Status ReadU32(absl::string_view what, uint32_t* out) {
    if (remaining() < 4) return Truncated(what);
    *out = static_cast<uint32_t>(LoadLe(data_ + pos_, 4));
    pos_ += 4;
    return absl::OkStatus();
  }
  absl::Status ReadU64(absl::string_view what, uint64_t* out) {
    if (remaining() < 8) return Truncated(what);
    *out = LoadLe(data_ + pos_, 8);
    pos_ += 8;
    return absl::OkStatus();
  }
  absl::Status ReadString(absl::string_view what, absl::string_view* out) {
    uint64_t length = 0;
    RETURN_IF_ERROR(ReadU64(what, &length));
    if (length > remaining()) {
      return absl::DataLossError(absl::StrCat(path_, ": ", what, " is ", length, " bytes long, but only ", remaining(),
                                              " bytes are left in the file (truncated or "
                                              "corrupt file)"));
    }
    *out = absl::string_view(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length;
    return absl::OkStatus();
  }
  absl::Status ReadValueType(absl::string_view what, GgufValueType* out) {
    uint32_t type = 0;
    RETURN_IF_ERROR(ReadU32(what, &type));
    if (type >= kNumValueTypes) {
      pos_ -= 4;
      return Invalid(absl::StrCat(what, " is ", type, " at byte ", pos_, ", which is not a GGUF value type (0-12)"));
    }
    *out = static_cast<GgufValueType>(type);
    return absl::OkStatus();
  }

  absl::Status ParseHeader() {
    static constexpr unsigned char kMagic[4] = {'G', 'G', 'U', 'F'};
    const size_t have = static_cast<size_t>(std::min<uint64_t>(size_, 4));
    if (std::memcmp(data_, kMagic, have) != 0) {
      std::string shown;
      for (size_t i = 0; i < have; ++i) absl::StrAppend(&shown, absl::StrFormat("%02x", data_[i]));
      return Invalid(absl::StrCat("not a GGUF file: it starts with the bytes 0x", shown, ", not \"GGUF\""));
    }
    if (size_ < 4) return Truncated("the magic \"GGUF\"");
    pos_ = 4;
    RETURN_IF_ERROR(ReadU32("the version", &version));
    if (version == 1) {
      return Invalid("GGUF version 1 is not supported (lesion reads versions 2 and 3)");
    }
    if (version != 0 && (version & 0xFFFF) == 0) {
      return Invalid(absl::StrFormat(
          "the version field reads 0x%08x: a big-endian GGUF file, which lesion does not read", version));
    }
    if (version != 2 && version != 3) {
      return Invalid(absl::StrCat("GGUF version ", version, " is not supported (lesion reads versions 2 and 3)"));
    }
    RETURN_IF_ERROR(ReadU64("the tensor count", &n_tensors_));
    RETURN_IF_ERROR(ReadU64("the key-value count", &n_kv_));
    return absl::OkStatus();
  }

  absl::Status ParseMetadata() {
    // Smallest key-value pair: an empty key (8), a value type (4) and a one-byte value.
    constexpr uint64_t kMinBytes = 8 + 4 + 1;
    if (n_kv_ > remaining() / kMinBytes) {
      return TooLong("the header", n_kv_, "key-value pairs", kMinBytes);
    }
    if (n_kv_ > kMaxKeyValues) {
      return Invalid(absl::StrCat("the header announces ", n_kv_, " key-value pairs, more than the ", kMaxKeyValues,
                                  " lesion accepts"));
    }
    metadata.reserve(std::min<uint64_t>(n_kv_, 1024));
    for (uint64_t i = 0; i < n_kv_; ++i) {
      absl::string_view key;
      RETURN_IF_ERROR(ReadString(absl::StrCat("the key of key-value pair #", i), &key));
      const std::string where = absl::StrCat("key ", Quote(key));
      if (metadata_index.contains(key)) return Invalid(absl::StrCat("duplicate ", where));
      GgufValueType type;
      RETURN_IF_ERROR(ReadValueType(absl::StrCat("the value type of ", where), &type));
      GgufValue value;
      const absl::Status status = ReadValue(type, /*depth=*/0, &value);
      if (!status.ok()) return WithSuffix(status, absl::StrCat(" (in the value of ", where, ")"));
      metadata_index.emplace(key, metadata.size());
      metadata.emplace_back(std::string(key), std::move(value));
    }
    return absl::OkStatus();
  }

  // Reads a value of `type`; `depth` is the number of arrays it is inside.
  absl::Status ReadValue(GgufValueType type, int depth, GgufValue* out) {
    out->type_ = type;
    if (type == GgufValueType::kArray) return ReadArray(depth + 1, out);
    if (type == GgufValueType::kString) {
      absl::string_view s;
      RETURN_IF_ERROR(ReadString("a string", &s));
      out->bytes_.assign(s.data(), s.size());
      return absl::OkStatus();
    }
    const size_t n = ScalarSize(type);
    if (remaining() < n) return Truncated(absl::StrCat("a ", GgufValueTypeName(type), " value"));
    out->bits_ = LoadLe(data_ + pos_, n);
    pos_ += n;
    return absl::OkStatus();
  }

  // Reads the element type, length and elements of an array that is the `depth`-th level of
  // nesting (1 for an array that is a key's value).
  absl::Status ReadArray(int depth, GgufValue* out) {
    out->type_ = GgufValueType::kArray;
    RETURN_IF_ERROR(ReadValueType("an array's element type", &out->element_type_));
    const GgufValueType element = out->element_type_;
    uint64_t count = 0;
    RETURN_IF_ERROR(ReadU64("an array's length", &count));
    const uint64_t min_bytes = element == GgufValueType::kString  ? 8
                               : element == GgufValueType::kArray ? 12
                                                                  : ScalarSize(element);
    if (count > remaining() / min_bytes) {
      return TooLong(absl::StrCat("an array of ", GgufValueTypeName(element)), count, "elements", min_bytes);
    }
    out->size_ = static_cast<size_t>(count);
    switch (element) {
      case GgufValueType::kString: {
        out->string_ends_.reserve(out->size_);
        for (uint64_t i = 0; i < count; ++i) {
          absl::string_view s;
          const absl::Status status = ReadString("a string", &s);
          if (!status.ok()) {
            return WithSuffix(status, absl::StrCat(" (element ", i, " of ", count, ")"));
          }
          out->bytes_.append(s.data(), s.size());
          out->string_ends_.push_back(out->bytes_.size());
        }
        return absl::OkStatus();
      }
      case GgufValueType::kArray: {
        if (depth >= kMaxArrayDepth) {
          return Invalid(absl::StrCat("arrays nested more than ", kMaxArrayDepth, " deep at byte ", pos_));
        }
        nested_arrays_ += count;
        if (nested_arrays_ > kMaxNestedArrays) {
          return Invalid(absl::StrCat("more than ", kMaxNestedArrays, " arrays inside arrays in the file"));
        }
        out->elements_.resize(out->size_);
        for (uint64_t i = 0; i < count; ++i) {
          const absl::Status status = ReadArray(depth + 1, &out->elements_[i]);
          if (!status.ok()) {
            return WithSuffix(status, absl::StrCat(" (element ", i, " of ", count, ")"));
          }
        }
        return absl::OkStatus();
      }
      default:
        out->bytes_.assign(reinterpret_cast<const char*>(data_ + pos_), count * min_bytes);
        pos_ += count * min_bytes;
        return absl::OkStatus();
    }
  }

  absl::Status ParseAlignment() {
    const auto it = metadata_index.find(kAlignmentKey);
    if (it == metadata_index.end()) return absl::OkStatus();
    const GgufValue& value = metadata[it->second].second;
    const std::optional<int64_t> a = value.AsInt();
    if (!a.has_value() || *a <= 0 || *a > static_cast<int64_t>(kMaxAlignment) ||
        !std::has_single_bit(static_cast<uint64_t>(*a))) {
      return Invalid(absl::StrCat(kAlignmentKey, " is ", value.ToString(), " (", GgufValueTypeName(value.type()),
                                  "); it must be an integer power of two up to 2^31"));
    }
    alignment = static_cast<uint64_t>(*a);
    return absl::OkStatus();
  }

  absl::Status ParseTensorInfos() {
    // Smallest tensor info: an empty name (8), n_dims (4), type (4), offset (8).
    constexpr uint64_t kMinBytes = 8 + 4 + 4 + 8;
    if (n_tensors_ > remaining() / kMinBytes) {
      return TooLong("the header", n_tensors_, "tensors", kMinBytes);
    }
    if (n_tensors_ > kMaxTensors) {
      return Invalid(absl::StrCat("the header announces ", n_tensors_, " tensors, more than the ", kMaxTensors,
                                  " lesion accepts"));
    }
    tensors.reserve(static_cast<size_t>(n_tensors_));
    for (uint64_t i = 0; i < n_tensors_; ++i) {
      absl::string_view name;
      RETURN_IF_ERROR(ReadString(absl::StrCat("the name of tensor #", i), &name));
      const std::string where = absl::StrCat("tensor ", Quote(name));
      if (tensor_index.contains(name)) return Invalid(absl::StrCat("duplicate ", where));
      GgufTensorInfo info;
      info.name = std::string(name);
      uint32_t n_dims = 0;
      RETURN_IF_ERROR(ReadU32(absl::StrCat("the dimension count of ", where), &n_dims));
      if (n_dims > kMaxDims) {
        return Invalid(absl::StrCat(where, " has ", n_dims, " dimensions; ggml allows at most ", kMaxDims));
      }
      uint64_t numel = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        uint64_t dim = 0;
        RETURN_IF_ERROR(ReadU64(absl::StrCat("the dimensions of ", where), &dim));
        if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          return Invalid(absl::StrCat(where, " has dimension ", d, " = ", dim, ", which is negative as an int64"));
        }
        info.dims.push_back(static_cast<int64_t>(dim));
        if (__builtin_mul_overflow(numel, dim, &numel)) numel = ~uint64_t{0};
      }
      if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Invalid(absl::StrCat(where, " has dims [", absl::StrJoin(info.dims, ", "),
                                    "], whose element count overflows int64"));
      }
      RETURN_IF_ERROR(ReadU32(absl::StrCat("the type of ", where), &info.type));
      RETURN_IF_ERROR(ReadU64(absl::StrCat("the offset of ", where), &info.offset));
      info.n_bytes = 0;
      if (const TypeTraits* t = FindType(info.type); t != nullptr) {
        const int64_t row = info.dims.empty() ? 1 : info.dims[0];
        if (row % t->block_elements != 0) {
          return Invalid(absl::StrCat(where, " has type ", t->name, " and rows of ", row,
                                      " elements, not a multiple of the type's block size ", t->block_elements));
        }
        absl::StatusOr<uint64_t> bytes = GgmlRowBytes(info.type, static_cast<int64_t>(numel));
        if (!bytes.ok()) {
          return Invalid(
              absl::StrCat(where, " (dims [", absl::StrJoin(info.dims, ", "), "]): ", bytes.status().message()));
        }
        info.n_bytes = *bytes;
      }
      if (info.offset % alignment != 0) {
        return Invalid(
            absl::StrCat(where, " has offset ", info.offset, ", which is not a multiple of the alignment ", alignment));
      }
      tensor_index.emplace(info.name, tensors.size());
      tensors.push_back(std::move(info));
    }
    return absl::OkStatus();
  }

  absl::Status CheckTensorExtents() {
    // pos_ <= size_ < 2^63 and alignment <= 2^31, so this cannot overflow.
    data_offset = (pos_ + alignment - 1) / alignment * alignment;
    const uint64_t data_size = size_ > data_offset ? size_ - data_offset : 0;
    std::vector<size_t> order;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const GgufTensorInfo& t = tensors[i];
      if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
        return absl::DataLossError(absl::StrCat(path_, ": tensor ", Quote(t.name), " (", GgmlTypeName(t.type), ", ",
                                                t.n_bytes, " bytes at offset ", t.offset,
                                                " of the data section) extends past the end of the "
                                                "file; the data section has ",
                                                data_size, " bytes (truncated file?)"));
      }
      if (t.n_bytes > 0) order.push_back(i);
    }
    std::sort(order.begin(), order.end(), [this](size_t a, size_t b) { return tensors[a].offset < tensors[b].offset; });
    for (size_t k = 1; k < order.size(); ++k) {
      const GgufTensorInfo& prev = tensors[order[k - 1]];
      const GgufTensorInfo& next = tensors[order[k]];
      if (next.offset < prev.offset + prev.n_bytes) {
        return Invalid(absl::StrCat("the bytes of tensors ", Quote(prev.name), " [", prev.offset, ", ",
                                    prev.offset + prev.n_bytes, ") and ", Quote(next.name), " [", next.offset, ", ",
                                    next.offset + next.n_bytes, ") overlap"));
      }
    }
    return absl::OkStatus();
  }

  const std::string path_;
  const unsigned char* const data_;
  const uint64_t size_;
  uint64_t pos_ = 0;
  uint64_t n_tensors_ = 0;
  uint64_t n_kv_ = 0;
  uint64_t nested_arrays_ = 0;
};

}  // namespace gguf_internal

// ---------------------------------------------------------------------------------------------
// GgufTensorInfo

int64_t GgufTensorInfo::numel() const {
  // A 0 dim makes the tensor empty whatever the others are (Open accepts [2^62, 2^62, 0]), so
  // multiplying in order could overflow before reaching it.
  if (std::find(dims.begin(), dims.end(), 0) != dims.end()) return 0;
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::vector<int64_t> GgufTensorInfo::shape() const { return std::vector<int64_t>(dims.rbegin(), dims.rend()); }

// ---------------------------------------------------------------------------------------------
// GgufFile

GgufFile::~GgufFile() = default;

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, MappedFile::Open(path, "GGUF file"));
  const absl::Span<const std::byte> bytes = mapping->bytes();
  const std::string path_string = path.string();
  if (bytes.empty()) {
    return absl::DataLossError(absl::StrCat(path_string, ": the file is empty (truncated GGUF file?)"));
  }

  gguf_internal::Parser parser(path_string, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  RETURN_IF_ERROR(parser.Parse());

  auto file = std::unique_ptr<GgufFile>(new GgufFile());
  file->mapping_ = std::move(mapping);
  file->version_ = parser.version;
  file->alignment_ = parser.alignment;
  file->data_offset_ = parser.data_offset;
  file->metadata_ = std::move(parser.metadata);
  file->metadata_index_ = std::move(parser.metadata_index);
  file->tensors_ = std::move(parser.tensors);
  file->tensor_index_ = std::move(parser.tensor_index);
  return file;
}

const GgufValue* GgufFile::Find(absl::string_view key) const {
  const auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufTensorInfo* GgufFile::FindTensor(absl::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::Span<const std::byte> GgufFile::Data(const GgufTensorInfo& info) const {
  const absl::Span<const std::byte> bytes = mapping_->bytes();
  const uint64_t data_size = bytes.size() > data_offset_ ? bytes.size() - data_offset_ : 0;
  if (info.n_bytes == 0 || info.offset > data_size || info.n_bytes > data_size - info.offset) {
    return {};
  }
  return bytes.subspan(data_offset_ + info.offset, info.n_bytes);
}

// ---------------------------------------------------------------------------------------------
// GgufCheckpoint

namespace {

// The value of integer key `key` of `file`: nullopt if absent, InvalidArgument if not an integer.
absl::StatusOr<std::optional<int64_t>> IntKey(const GgufFile& file, absl::string_view key) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) return std::optional<int64_t>();
  const std::optional<int64_t> i = v->AsInt();
  if (!i.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(file.path().string(), ": ", key, " is ", v->ToString(), " (",
                                                   GgufValueTypeName(v->type()), "), not an integer"));
  }
  return i;
}

}  // namespace

absl::StatusOr<std::unique_ptr<GgufCheckpoint>> GgufCheckpoint::Open(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> opened, GgufFile::Open(path));
  const std::string path_string = path.string();
  auto checkpoint = std::unique_ptr<GgufCheckpoint>(new GgufCheckpoint());

  ASSIGN_OR_RETURN(const std::optional<int64_t> count, IntKey(*opened, "split.count"));
  ASSIGN_OR_RETURN(const std::optional<int64_t> no, IntKey(*opened, "split.no"));
  if (count.has_value() && (*count < 1 || *count > kMaxSplits)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_string, ": split.count is ", *count, "; it must be between 1 and ", kMaxSplits));
  }
  const int64_t n_splits = count.value_or(1);
  if (no.has_value() && (*no < 0 || *no >= n_splits)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_string, ": split.no is ", *no, " but split.count is ", n_splits));
  }

  if (n_splits == 1) {
    checkpoint->files_.push_back(std::move(opened));
  } else {
    const std::string file_name = path.filename().string();
    const std::optional<SplitName> name = ParseSplitName(file_name);
    const int64_t this_no = no.value_or(0);
    if (!name.has_value() || name->count != static_cast<uint64_t>(n_splits) ||
        name->index != static_cast<uint64_t>(this_no + 1)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: split.no %d and split.count %d say this is split %d of %d, but the file name "
                          "does not end in -%05d-of-%05d.gguf, so the other splits cannot be found",
                          path_string, this_no, n_splits, this_no + 1, n_splits, this_no + 1, n_splits));
    }
    const std::filesystem::path dir = path.parent_path();
    for (int64_t i = 0; i < n_splits; ++i) {
      if (i == this_no) {
        checkpoint->files_.push_back(std::move(opened));
        continue;
      }
      const std::filesystem::path split_path =
          dir / absl::StrFormat("%s-%05d-of-%05d.gguf", name->prefix, i + 1, n_splits);
      absl::StatusOr<std::unique_ptr<GgufFile>> split = GgufFile::Open(split_path);
      if (!split.ok()) {
        return WithSuffix(split.status(), absl::StrCat(" (split ", i + 1, " of ", n_splits,
                                                       " of the checkpoint opened from ", path_string, ")"));
      }
      ASSIGN_OR_RETURN(const std::optional<int64_t> split_no, IntKey(**split, "split.no"));
      ASSIGN_OR_RETURN(const std::optional<int64_t> split_count, IntKey(**split, "split.count"));
      if (split_no != i || split_count != n_splits) {
        auto show = [](const std::optional<int64_t>& v) {
          return v.has_value() ? absl::StrCat(*v) : std::string("absent");
        };
        return absl::InvalidArgumentError(absl::StrCat(split_path.string(), ": split.no is ", show(split_no),
                                                       " and split.count is ", show(split_count), ", but as split ",
                                                       i + 1, " of the checkpoint opened from ", path_string,
                                                       " they should be ", i, " and ", n_splits));
      }
      checkpoint->files_.push_back(*std::move(split));
    }
  }

  size_t total = 0;
  for (const std::unique_ptr<GgufFile>& file : checkpoint->files_) {
    for (const GgufTensorInfo& info : file->tensors()) {
      const auto [it, inserted] = checkpoint->entries_.emplace(info.name, Entry{file.get(), &info});
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat("checkpoint opened from ", path_string, ": tensor ", Quote(info.name), " occurs in both ",
                         it->second.file->path().string(), " and ", file->path().string()));
      }
      ++total;
    }
  }
  if (n_splits > 1) {
    ASSIGN_OR_RETURN(const std::optional<int64_t> expected, IntKey(checkpoint->first(), "split.tensors.count"));
    if (expected.has_value() && *expected != static_cast<int64_t>(total)) {
      return absl::InvalidArgumentError(absl::StrCat(checkpoint->first().path().string(), ": split.tensors.count is ",
                                                     *expected, " but the ", n_splits, " splits hold ", total,
                                                     " tensors"));
    }
  }
  return checkpoint;
}

std::optional<GgufCheckpoint::Entry> GgufCheckpoint::FindTensor(absl::string_view name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) return std::nullopt;
  return it->second;
}

std::vector<GgufCheckpoint::Entry> GgufCheckpoint::Tensors() const {
  std::vector<Entry> out;
  out.reserve(entries_.size());
  for (const std::unique_ptr<GgufFile>& file : files_) {
    for (const GgufTensorInfo& info : file->tensors()) out.push_back(Entry{file.get(), &info});
  }
  return out;
}

}  // namespace lesion::model
