// What the tokenizer fuzzers do with a tokenizer that loaded: encode a few short texts chosen to
// reach the special-token matching, the pre-tokenizer's regexes, byte fallback and the merges, and
// decode what came out plus every id near the ends of the vocabulary. Encode and Decode must never
// crash, and Decode of ids Encode produced must succeed.
#ifndef LESION_FUZZ_TOKENIZER_FUZZ_H_
#define LESION_FUZZ_TOKENIZER_FUZZ_H_

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer/tokenizer.h"

namespace lesion::fuzz {

inline void ExerciseTokenizer(const model::Tokenizer& tok) {
  static constexpr std::string_view kTexts[] = {
      "Once upon a time, there was a little girl named Lily.",
      "  Hello\tworld!\n\n It's 12345 o'clock; they're \"here\"...",
      "<s>hi</s><unk><|endoftext|><|eot_id|><|im_start|>user",
      "caf\xc3\xa9 \xe2\x96\x81 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80\xf0\x9f\x98\x80 \x01\x7f",
      "",
  };
  for (std::string_view text : kTexts) {
    absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(text);
    if (!ids.ok()) continue;
    for (int32_t id : *ids) {
      if (id < 0 || id >= tok.vocab_size()) {
        std::fprintf(stderr, "Encode gave id %d outside [0, %d)\n", id, tok.vocab_size());
        std::abort();
      }
    }
    absl::StatusOr<std::string> decoded = tok.Decode(*ids);
    if (!decoded.ok()) {
      std::fprintf(stderr, "Decode of Encode's ids failed: %s\n", decoded.status().ToString().c_str());
      std::abort();
    }
  }
  std::vector<int32_t> edges;
  for (int32_t id = 0; id < tok.vocab_size() && id < 8; ++id) edges.push_back(id);
  for (int32_t id = tok.vocab_size() - 1; id >= 8 && id >= tok.vocab_size() - 8; --id) edges.push_back(id);
  (void)tok.Decode(edges);
  (void)tok.Decode(std::vector<int32_t>{-1});
  (void)tok.Decode(std::vector<int32_t>{tok.vocab_size()});
}

}  // namespace lesion::fuzz

#endif  // LESION_FUZZ_TOKENIZER_FUZZ_H_
