#include "common/status_codes.h"

namespace lesion {

std::optional<absl::StatusCode> StatusCodeFromName(absl::string_view name) {
  for (int c = 1; c <= 16; ++c) {  // OK (0) is never a failure's code
    const auto code = static_cast<absl::StatusCode>(c);
    if (absl::StatusCodeToString(code) == name) return code;
  }
  return std::nullopt;
}

}  // namespace lesion
