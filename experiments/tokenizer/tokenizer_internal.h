// Internal glue between the tokenizer implementations and LoadTokenizer. Not part of the API.
#ifndef LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_INTERNAL_H_
#define LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_INTERNAL_H_

#include <cstdint>
#include <optional>

#include "experiments/tokenizer/tokenizer.h"

namespace lesion::experiments::tokenizer_internal {

// Byte-level BPE files carry no BOS/EOS; LoadTokenizer sets them from config.json. `tokenizer`
// must come from LoadByteLevelBpe or LoadTokenizerJson.
void SetByteLevelSpecialIds(Tokenizer& tokenizer, std::optional<int32_t> bos, std::optional<int32_t> eos);

}  // namespace lesion::experiments::tokenizer_internal

#endif  // LESION_EXPERIMENTS_TOKENIZER_TOKENIZER_INTERNAL_H_
