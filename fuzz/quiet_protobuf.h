// Silences protobuf's log (its parser logs an ERROR line for every string field that is not UTF-8),
// which would otherwise flood a fuzz run's output and slow it down. Call from
// LLVMFuzzerInitialize.
#ifndef LESION_FUZZ_QUIET_PROTOBUF_H_
#define LESION_FUZZ_QUIET_PROTOBUF_H_

#include <string>

#include "google/protobuf/stubs/logging.h"

namespace lesion::fuzz {

inline void QuietProtobuf() {
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel, const char*, int, const std::string&) {});
}

}  // namespace lesion::fuzz

#endif  // LESION_FUZZ_QUIET_PROTOBUF_H_
