// Dequantization of ggml tensor data to float32, bit-identical to gguf-py.
//
// The reference is gguf.quants.dequantize of the `gguf` Python package 0.19.0 (numpy): each type's
// float32 arithmetic is reproduced in the same order, the float16 scales converted exactly
// (subnormals, infinities and NaN payloads included, with no use of F16C), every multiply and add
// rounded separately (dequantize.cc is compiled with -ffp-contract=off, so nothing is fused). For
// finite inputs the output bytes equal numpy's; gguf_test checks this against fixtures made by
// make_testdata.py. The K-quants' sub-block scales are formed the way numpy forms them: the 4- or
// 6-bit integer scale (Q3_K: minus 32 in integer arithmetic; Q6_K: an int8) is converted to float32
// and multiplied by the float32 super-block scale, rounding once, before it meets the quant.
//
//   std::vector<float> w(info.numel());
//   RETURN_IF_ERROR(DequantizeTensor(file, info, absl::MakeSpan(w)));
//
// Thread-safety: pure functions of their arguments; thread-safe.
#ifndef LESION_MODEL_GGUF_DEQUANTIZE_H_
#define LESION_MODEL_GGUF_DEQUANTIZE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "model/gguf/gguf.h"

namespace lesion::model {

// Dequantizes `out.size()` elements of ggml type `type` from `src` (the raw blocks, in order) into
// `out`. Supported types: those CanDequantize names (F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K
// Q3_K Q4_K Q5_K Q6_K). `src` may be unaligned.
// Errors: InvalidArgument naming the type if it is unsupported (with the supported list), or if
// src.size() != GgmlRowBytes(type, out.size()) (which includes out.size() not being a multiple of
// the block size).
absl::Status DequantizeToFloat(uint32_t type, absl::Span<const std::byte> src, absl::Span<float> out);

// DequantizeToFloat of tensor `info` of `file` (an element of file.tensors()) into `out`, which
// must hold info.numel() floats. Errors (InvalidArgument), naming the file, the tensor and its
// type: a type lesion cannot dequantize, e.g.
//   model.gguf: tensor "blk.0.attn_q.weight" has type IQ2_XXS, which lesion cannot dequantize
//   (supported: F32, F16, Q4_0, ...)
// or out.size() != info.numel().
absl::Status DequantizeTensor(const GgufFile& file, const GgufTensorInfo& info, absl::Span<float> out);

// The exact float32 value of IEEE binary16 bits `h` (what numpy's float16 -> float32 cast gives,
// NaN payloads and signalling NaNs preserved).
float HalfToFloat(uint16_t h);

}  // namespace lesion::model

#endif  // LESION_MODEL_GGUF_DEQUANTIZE_H_
