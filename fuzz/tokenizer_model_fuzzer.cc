// Fuzzes the SentencePiece loader (tokenizer.model, a serialized ModelProto;
// model/tokenizer/tokenizer.h): the input is the file; a tokenizer that loads encodes and
// decodes a few texts (fuzz/tokenizer_fuzz.h).
#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "fuzz/fuzz_file.h"
#include "fuzz/quiet_protobuf.h"
#include "fuzz/tokenizer_fuzz.h"
#include "model/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  lesion::fuzz::QuietProtobuf();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static lesion::fuzz::MemoryFile file;
  absl::StatusOr<std::unique_ptr<lesion::model::Tokenizer>> tok =
      lesion::model::LoadSentencePieceModel(file.Write(data, size));
  if (tok.ok()) lesion::fuzz::ExerciseTokenizer(**tok);
  return 0;
}
