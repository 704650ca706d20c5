#include "server/log.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

namespace lesion::server {
namespace {

const absl::Time kNoon = absl::FromUnixMillis(1748779200123);  // 2025-06-01T12:00:00.123Z

TEST(LogFormat, ParsesTextAndJsonOnly) {
  EXPECT_EQ(*ParseLogFormat("text"), LogFormat::kText);
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_EQ(ParseLogFormat("xml").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LogLine, TextIsOneLogfmtLine) {
  const std::string line =
      FormatLogLine(LogFormat::kText, kNoon, LogLevel::kInfo, "experiment_finished",
                    {{"id", "exp-1"}, {"user", "ada"}, {"passes", int64_t{12}}, {"duration_s", 2.5}, {"ok", true}});
  EXPECT_EQ(line,
            "time=2025-06-01T12:00:00.123Z level=info event=experiment_finished id=exp-1 user=ada passes=12 "
            "duration_s=2.5 ok=true");
}

TEST(LogLine, TextQuotesWhatWouldBreakTheLine) {
  const std::string line = FormatLogLine(LogFormat::kText, kNoon, LogLevel::kError, "store_write_failed",
                                         {{"error", "disk \"full\"\nnext=line"}, {"empty", ""}});
  EXPECT_EQ(line,
            "time=2025-06-01T12:00:00.123Z level=error event=store_write_failed "
            "error=\"disk \\\"full\\\"\\nnext=line\" empty=\"\"");
  EXPECT_EQ(line.find('\n'), std::string::npos);
}

TEST(LogLine, JsonIsOneObjectWithTypedFields) {
  const std::string line = FormatLogLine(
      LogFormat::kJson, kNoon, LogLevel::kWarning, "model_load_failed",
      {{"model", "gpt2"}, {"weight_bytes", int64_t{1} << 40}, {"nan", 0.0 / 0.0}, {"error", "line one\nline two"}});
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_EQ(j["time"], "2025-06-01T12:00:00.123Z");
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["event"], "model_load_failed");
  EXPECT_EQ(j["model"], "gpt2");
  EXPECT_EQ(j["weight_bytes"], int64_t{1} << 40);
  EXPECT_EQ(j["nan"], "NaN");  // JSON has no NaN
  EXPECT_EQ(j["error"], "line one\nline two");
}

TEST(LogLine, JsonSurvivesInvalidUtf8) {
  const std::string line =
      FormatLogLine(LogFormat::kJson, kNoon, LogLevel::kInfo, "experiment_submitted", {{"user", "bad\xff\xfe"}});
  nlohmann::json parsed;
  EXPECT_NO_THROW(parsed = nlohmann::json::parse(line));
  EXPECT_TRUE(parsed["user"].is_string()) << line;
}

TEST(Log, WritesWholeLinesInTheFormatSet) {
  std::ostringstream sink;
  SetLogSink(&sink);
  SetLogFormat(LogFormat::kJson);
  Log(LogLevel::kInfo, "listening", {{"address", "127.0.0.1:1"}});
  SetLogFormat(LogFormat::kText);
  Log(LogLevel::kInfo, "shutdown");
  SetLogSink(&std::cerr);
  const std::string out = sink.str();
  const size_t first_end = out.find('\n');
  ASSERT_NE(first_end, std::string::npos);
  EXPECT_EQ(nlohmann::json::parse(out.substr(0, first_end))["address"], "127.0.0.1:1");
  EXPECT_NE(out.find("level=info event=shutdown\n", first_end), std::string::npos) << out;
}

}  // namespace
}  // namespace lesion::server
