// Structured log lines of lesiond: one line per event on stderr, with the time, a level, an event
// name and fields, as logfmt (the default) or JSON.
//
//   text: time=2025-06-01T12:00:00.123Z level=info event=experiment_finished id=exp-1a2b user=ada
//         model=gpt2 status=done duration_s=12.5
//   json: {"time":"2025-06-01T12:00:00.123Z","level":"info","event":"experiment_finished",...}
//
//   Log(LogLevel::kInfo, "model_loaded", {{"model", name}, {"dir", dir}});
//
// Field values are strings, integers, floating-point numbers or booleans; text values are quoted
// when they hold spaces, quotes, '=' or control characters. Thread-safe: each line is written
// whole (lines of concurrent callers never interleave). SetLogFormat once, in main(), before any
// thread logs.
#ifndef LESION_SERVER_LOG_H_
#define LESION_SERVER_LOG_H_

#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>
#include <variant>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace lesion::server {

enum class LogFormat { kText, kJson };
enum class LogLevel { kInfo, kWarning, kError };

// "text" or "json"; InvalidArgument otherwise.
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);
void SetLogFormat(LogFormat format);
// Where lines go (default std::cerr); tests. Not thread-safe against Log.
void SetLogSink(std::ostream* sink);

class LogField {
 public:
  using Value = std::variant<std::string, int64_t, double, bool>;
  LogField(absl::string_view key, absl::string_view value) : key_(key), value_(std::string(value)) {}
  LogField(absl::string_view key, const char* value) : key_(key), value_(std::string(value)) {}
  LogField(absl::string_view key, const std::string& value) : key_(key), value_(value) {}
  LogField(absl::string_view key, int64_t value) : key_(key), value_(value) {}
  LogField(absl::string_view key, int value) : key_(key), value_(int64_t{value}) {}
  LogField(absl::string_view key, double value) : key_(key), value_(value) {}
  LogField(absl::string_view key, bool value) : key_(key), value_(value) {}

  absl::string_view key() const { return key_; }
  const Value& value() const { return value_; }

 private:
  std::string key_;
  Value value_;
};

// One line for `event` at `now`. Keys should be snake_case literals.
std::string FormatLogLine(LogFormat format, absl::Time now, LogLevel level, absl::string_view event,
                          std::initializer_list<LogField> fields);
// Writes FormatLogLine(the format set, now, ...) to the sink.
void Log(LogLevel level, absl::string_view event, std::initializer_list<LogField> fields = {});

}  // namespace lesion::server

#endif  // LESION_SERVER_LOG_H_
