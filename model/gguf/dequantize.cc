// Each block function mirrors the numpy code of gguf-py 0.19.0's quants.py for that type (the
// comments name the class); the index arithmetic follows numpy's reshapes, so the element order
// is the one numpy produces. This file is compiled with -ffp-contract=off: `a * b + c` must round
// twice, as numpy's separate multiply and add do.
#include "model/gguf/dequantize.h"

#include <array>
#include <bit>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace lesion::model {
namespace {

using HalfTable = std::array<uint32_t, 65536>;

// float32 bits of binary16 `h`, exactly: every binary16 value is representable in binary32.
constexpr uint32_t HalfToFloatBits(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1F;
  uint32_t mantissa = h & 0x3FF;
  if (exponent == 0x1F) return sign | 0x7F800000u | (mantissa << 13);  // inf, NaN (payload kept)
  if (exponent != 0) return sign | ((exponent + 112) << 23) | (mantissa << 13);
  if (mantissa == 0) return sign;  // +-0
  // Subnormal: mantissa x 2^-24. Normalise so that bit 10 is the implicit one.
  uint32_t e = 113;
  while ((mantissa & 0x400) == 0) {
    mantissa <<= 1;
    --e;
  }
  return sign | (e << 23) | ((mantissa & 0x3FF) << 13);
}

const HalfTable& Halves() {
  static const HalfTable* const table = [] {
    auto* t = new HalfTable;
    for (uint32_t h = 0; h < 65536; ++h) (*t)[h] = HalfToFloatBits(static_cast<uint16_t>(h));
    return t;
  }();
  return *table;
}

// Reads the little-endian binary16 at `p` as float32.
inline float F16(const HalfTable& halves, const unsigned char* p) {
  return std::bit_cast<float>(halves[p[0] | (p[1] << 8)]);
}

inline uint32_t Le32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// Q4_0: d * (nibble - 8); the low nibbles of qs are elements 0-15, the high ones 16-31.
void BlockQ4_0(const HalfTable& halves, const unsigned char* b, float* y) {
  const float d = F16(halves, b);
  const unsigned char* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(static_cast<int>(qs[j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>(static_cast<int>(qs[j] >> 4) - 8);
  }
}

// Q4_1: (d * nibble) + m.
void BlockQ4_1(const HalfTable& halves, const unsigned char* b, float* y) {
  const float d = F16(halves, b);
  const float m = F16(halves, b + 2);
  const unsigned char* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

// Q5_0: d * ((nibble | bit j of qh << 4) - 16).
void BlockQ5_0(const HalfTable& halves, const unsigned char* b, float* y) {
  const float d = F16(halves, b);
  const uint32_t qh = Le32(b + 2);
  const unsigned char* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

// Q5_1: (d * (nibble | bit j of qh << 4)) + m.
void BlockQ5_1(const HalfTable& halves, const unsigned char* b, float* y) {
  const float d = F16(halves, b);
  const float m = F16(halves, b + 2);
  const uint32_t qh = Le32(b + 4);
  const unsigned char* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

// Q8_0: x * d.
void BlockQ8_0(const HalfTable& halves, const unsigned char* b, float* y) {
  const float d = F16(halves, b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

// Q2_K: scales[16] qs[64] d dmin. dl = d * (scale & 15) and ml = dmin * (scale >> 4), each
// rounded to float32 once; then dl * q - ml. Element h*128 + s*32 + l is bits 2s of qs[h*32 + l].
void BlockQ2_K(const HalfTable& halves, const unsigned char* b, float* y) {
  const unsigned char* scales = b;
  const unsigned char* qs = b + 16;
  const float d = F16(halves, b + 80);
  const float dmin = F16(halves, b + 82);
  float dl[16];
  float ml[16];
  for (int g = 0; g < 16; ++g) {
    dl[g] = d * static_cast<float>(scales[g] & 0x0F);
    ml[g] = dmin * static_cast<float>(scales[g] >> 4);
  }
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      for (int l = 0; l < 32; ++l) {
        const int i = h * 128 + s * 32 + l;
        const int q = (qs[h * 32 + l] >> (2 * s)) & 3;
        y[i] = dl[i / 16] * static_cast<float>(q) - ml[i / 16];
      }
    }
  }
}

// Q3_K: hmask[32] qs[64] scales[12] d. The 6-bit scales minus 32 (integer arithmetic) become
// float32 and dl = d * scale rounds once; the quant is (2 low bits) - 4 * (1 - high bit).
void BlockQ3_K(const HalfTable& halves, const unsigned char* b, float* y) {
  const unsigned char* hmask = b;
  const unsigned char* qs = b + 32;
  const unsigned char* scales = b + 96;
  const float d = F16(halves, b + 108);
  float dl[16];
  for (int k = 0; k < 16; ++k) {
    const int low = (k < 8 ? scales[k] : scales[k - 8] >> 4) & 0x0F;
    const int high = (scales[8 + k % 4] >> (2 * (k / 4))) & 0x03;
    dl[k] = d * static_cast<float>((low | (high << 4)) - 32);
  }
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      for (int l = 0; l < 32; ++l) {
        const int i = h * 128 + s * 32 + l;
        const int low = (qs[h * 32 + l] >> (2 * s)) & 3;
        const int high = ((hmask[i % 32] >> (i / 32)) & 1) ^ 1;  // offset 4 when the bit is 0
        y[i] = dl[i / 16] * static_cast<float>(low - (high << 2));
      }
    }
  }
}

// Q4_K / Q5_K's 12 bytes of 6-bit scales and mins (gguf-py's Q4_K.get_scale_min).
void ScaleMinK4(const unsigned char* s, int* sc, int* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 0x3F;
    mn[j] = s[j + 4] & 0x3F;
  }
  for (int j = 4; j < 8; ++j) {
    sc[j] = (s[j + 4] & 0x0F) | ((s[j - 4] >> 2) & 0x30);
    mn[j] = (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30);
  }
}

// Q4_K: d dmin scales[12] qs[128]. d * sc and dmin * min round once each; then ds * q - dm.
// Element c*64 + s*32 + l is nibble s of qs[c*32 + l].
void BlockQ4_K(const HalfTable& halves, const unsigned char* b, float* y) {
  const float d = F16(halves, b);
  const float dmin = F16(halves, b + 2);
  int sc[8];
  int mn[8];
  ScaleMinK4(b + 4, sc, mn);
  const unsigned char* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    const float ds = d * static_cast<float>(sc[j]);
    const float dm = dmin * static_cast<float>(mn[j]);
    const int c = j / 2;
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      const int q = (qs[c * 32 + l] >> shift) & 0x0F;
      y[j * 32 + l] = ds * static_cast<float>(q) - dm;
    }
  }
}

// Q5_K: d dmin scales[12] qh[32] qs[128]; Q4_K plus bit j of qh[l] as the fifth bit.
void BlockQ5_K(const HalfTable& halves, const unsigned char* b, float* y) {
  const float d = F16(halves, b);
  const float dmin = F16(halves, b + 2);
  int sc[8];
  int mn[8];
  ScaleMinK4(b + 4, sc, mn);
  const unsigned char* qh = b + 16;
  const unsigned char* qs = b + 48;
  for (int j = 0; j < 8; ++j) {
    const float ds = d * static_cast<float>(sc[j]);
    const float dm = dmin * static_cast<float>(mn[j]);
    const int c = j / 2;
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      const int q = ((qs[c * 32 + l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
      y[j * 32 + l] = ds * static_cast<float>(q) - dm;
    }
  }
}

// Q6_K: ql[128] qh[64] scales[16] (int8) d. d * scale rounds once; then that * (q - 32).
// Element h*128 + s*64 + l takes nibble s of ql[h*64 + l]; element h*128 + s*32 + l takes bits
// 2s of qh[h*32 + l].
void BlockQ6_K(const HalfTable& halves, const unsigned char* b, float* y) {
  const unsigned char* ql = b;
  const unsigned char* qh = b + 128;
  const unsigned char* scales = b + 192;
  const float d = F16(halves, b + 208);
  float ds[16];
  for (int g = 0; g < 16; ++g) ds[g] = d * static_cast<float>(static_cast<int8_t>(scales[g]));
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 128; ++i) {
      const int low = (ql[h * 64 + i % 64] >> (4 * (i / 64))) & 0x0F;
      const int high = (qh[h * 32 + i % 32] >> (2 * (i / 32))) & 0x03;
      const int q = (low | (high << 4)) - 32;
      y[h * 128 + i] = ds[(h * 128 + i) / 16] * static_cast<float>(q);
    }
  }
}

using BlockFn = void (*)(const HalfTable&, const unsigned char*, float*);

BlockFn BlockFunction(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kQ4_0:
      return BlockQ4_0;
    case GgmlType::kQ4_1:
      return BlockQ4_1;
    case GgmlType::kQ5_0:
      return BlockQ5_0;
    case GgmlType::kQ5_1:
      return BlockQ5_1;
    case GgmlType::kQ8_0:
      return BlockQ8_0;
    case GgmlType::kQ2_K:
      return BlockQ2_K;
    case GgmlType::kQ3_K:
      return BlockQ3_K;
    case GgmlType::kQ4_K:
      return BlockQ4_K;
    case GgmlType::kQ5_K:
      return BlockQ5_K;
    case GgmlType::kQ6_K:
      return BlockQ6_K;
    default:
      return nullptr;
  }
}

std::string SupportedList() {
  std::vector<std::string> names;
  for (GgmlType t : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0,
                     GgmlType::kQ5_1, GgmlType::kQ8_0, GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K,
                     GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    names.push_back(GgmlTypeName(static_cast<uint32_t>(t)));
  }
  return absl::StrJoin(names, ", ");
}

}  // namespace

float HalfToFloat(uint16_t h) { return std::bit_cast<float>(Halves()[h]); }

absl::Status DequantizeToFloat(uint32_t type, absl::Span<const std::byte> src, absl::Span<float> out) {
  if (!CanDequantize(type)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "type ", GgmlTypeName(type), " cannot be dequantized by lesion (supported: ", SupportedList(), ")"));
  }
  const absl::StatusOr<uint64_t> expected = GgmlRowBytes(type, static_cast<int64_t>(out.size()));
  if (!expected.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot dequantize into ", out.size(), " floats: ", expected.status().message()));
  }
  if (*expected != src.size()) {
    return absl::InvalidArgumentError(absl::StrCat(out.size(), " elements of type ", GgmlTypeName(type), " take ",
                                                   *expected, " bytes, but ", src.size(), " were given"));
  }
  const auto* p = reinterpret_cast<const unsigned char*>(src.data());
  float* y = out.data();
  const size_t n = out.size();
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
      if (n > 0) std::memcpy(y, p, n * sizeof(float));
      return absl::OkStatus();
    case GgmlType::kF16: {
      // Copy bits, not floats: signalling NaNs must come out as they went in.
      const HalfTable& halves = Halves();
      for (size_t i = 0; i < n; ++i) {
        const uint32_t bits = halves[p[2 * i] | (p[2 * i + 1] << 8)];
        std::memcpy(y + i, &bits, sizeof(bits));
      }
      return absl::OkStatus();
    }
    case GgmlType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        const uint32_t bits = (static_cast<uint32_t>(p[2 * i]) << 16) | (static_cast<uint32_t>(p[2 * i + 1]) << 24);
        std::memcpy(y + i, &bits, sizeof(bits));
      }
      return absl::OkStatus();
    default:
      break;
  }
  const BlockFn block = BlockFunction(type);
  const auto [block_elements, block_bytes] = *GgmlBlockSize(type);
  const HalfTable& halves = Halves();
  for (size_t b = 0; b < n / static_cast<size_t>(block_elements); ++b) {
    block(halves, p + b * block_bytes, y + b * block_elements);
  }
  return absl::OkStatus();
}

absl::Status DequantizeTensor(const GgufFile& file, const GgufTensorInfo& info, absl::Span<float> out) {
  const std::string where = absl::StrCat(file.path().string(), ": tensor ", gguf_internal::Quote(info.name));
  if (!CanDequantize(info.type)) {
    return absl::InvalidArgumentError(absl::StrCat(where, " has type ", GgmlTypeName(info.type),
                                                   ", which lesion cannot dequantize (supported: ", SupportedList(),
                                                   ")"));
  }
  if (out.size() != static_cast<uint64_t>(info.numel())) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " has ", info.numel(), " elements, but the output holds ", out.size()));
  }
  const absl::Status status = DequantizeToFloat(info.type, file.Data(info), out);
  if (!status.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", status.message()));
  return absl::OkStatus();
}

}  // namespace lesion::model
