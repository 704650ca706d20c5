#include "server/log.h"

#include <atomic>
#include <cmath>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace lesion::server {
namespace {

std::atomic<LogFormat> g_format{LogFormat::kText};
std::ostream* g_sink = &std::cerr;
std::mutex g_write_mu;

absl::string_view LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

// logfmt: bare when the value is plain, else a double-quoted string with \", \\, \n, \t escaped
// (so one event stays on one line whatever a user put in a name or an error).
std::string TextValue(absl::string_view s) {
  bool plain = !s.empty();
  for (char c : s) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      plain = false;
      break;
    }
  }
  if (plain) return std::string(s);
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          absl::StrAppendFormat(&out, "\\x%02x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

std::string NumberText(double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf");
  return absl::StrFormat("%.6g", v);
}

}  // namespace

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(absl::StrCat("--log-format: '", name, "' is not text or json"));
}

void SetLogFormat(LogFormat format) { g_format.store(format); }

void SetLogSink(std::ostream* sink) { g_sink = sink; }

std::string FormatLogLine(LogFormat format, absl::Time now, LogLevel level, absl::string_view event,
                          std::initializer_list<LogField> fields) {
  const std::string time = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", now, absl::UTCTimeZone());
  if (format == LogFormat::kJson) {
    nlohmann::ordered_json line;
    line["time"] = time;
    line["level"] = LevelName(level);
    line["event"] = event;
    for (const LogField& f : fields) {
      nlohmann::ordered_json& out = line[std::string(f.key())];
      std::visit(
          [&out](const auto& v) {
            using T = std::decay_t<decltype(v)>;
            if constexpr (std::is_same_v<T, double>) {
              if (std::isfinite(v)) {
                out = v;
              } else {
                out = NumberText(v);  // JSON has no NaN or infinity
              }
            } else {
              out = v;
            }
          },
          f.value());
    }
    // Invalid UTF-8 in a user's string is replaced, never an exception.
    return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  std::string line = absl::StrCat("time=", time, " level=", LevelName(level), " event=", TextValue(event));
  for (const LogField& f : fields) {
    absl::StrAppend(&line, " ", f.key(), "=");
    std::visit(
        [&line](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::string>) {
            absl::StrAppend(&line, TextValue(v));
          } else if constexpr (std::is_same_v<T, bool>) {
            absl::StrAppend(&line, v ? "true" : "false");
          } else if constexpr (std::is_same_v<T, double>) {
            absl::StrAppend(&line, NumberText(v));
          } else {
            absl::StrAppend(&line, v);
          }
        },
        f.value());
  }
  return line;
}

void Log(LogLevel level, absl::string_view event, std::initializer_list<LogField> fields) {
  std::string line = FormatLogLine(g_format.load(), absl::Now(), level, event, fields);
  line += '\n';
  std::lock_guard<std::mutex> lock(g_write_mu);
  g_sink->write(line.data(), static_cast<std::streamsize>(line.size()));
  g_sink->flush();
}

}  // namespace lesion::server
