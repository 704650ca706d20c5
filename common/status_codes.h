// Status codes by name ("RESOURCE_EXHAUSTED"), as absl::StatusCodeToString writes them: how a
// failure's code travels in records and text (an experiment's error_code). Thread-safe, stateless.
#ifndef LESION_COMMON_STATUS_CODES_H_
#define LESION_COMMON_STATUS_CODES_H_

#include <optional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace lesion {

// The code named `name` (absl::StatusCodeToString's spelling), or nullopt for any other text.
std::optional<absl::StatusCode> StatusCodeFromName(absl::string_view name);

}  // namespace lesion

#endif  // LESION_COMMON_STATUS_CODES_H_
