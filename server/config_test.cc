#include "server/config.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace lesion::server {
namespace {

namespace fs = std::filesystem;

fs::path TempDir() {
  const auto* info = testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir = fs::temp_directory_path() /
                 (std::string("lesion_config_") + info->name() + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void Write(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

TEST(ServerConfig, NoArgumentsServeTheBundledModel) {
  absl::StatusOr<ServerConfig> config = ParseServerConfig({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "127.0.0.1:50051");
  EXPECT_EQ(config->database, "lesion.db");
  ASSERT_EQ(config->models.size(), 1u);
  EXPECT_EQ(config->models[0].name, "stories260K");
  EXPECT_TRUE(fs::exists(fs::path(config->models[0].dir) / "config.json")) << config->models[0].dir;
  EXPECT_EQ(config->default_device, "cpu");
  EXPECT_TRUE(config->allow_anonymous_admin);
  EXPECT_FALSE(config->data_dir.empty());
}

TEST(ServerConfig, FlagsWithDtypeAndDeviceAfterTheirModel) {
  absl::StatusOr<ServerConfig> config =
      ParseServerConfig({"--listen", "unix:/tmp/l.sock", "--db=/tmp/x.db", "--dtype", "bfloat16", "--model",
                         "a=/m/a", "--device", "cuda:1", "--model", "b=/m/b", "--dtype", "float32",
                         "--model-root", "/m", "--max-queue-per-device", "3", "--allow-anonymous-admin=false",
                         "--data-dir", "/d"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "unix:/tmp/l.sock");
  EXPECT_EQ(config->database, "/tmp/x.db");
  ASSERT_EQ(config->models.size(), 2u);
  EXPECT_EQ(config->models[0].name, "a");
  EXPECT_EQ(config->models[0].dir, "/m/a");
  EXPECT_EQ(config->models[0].dtype, "bfloat16");  // the default given before any --model
  EXPECT_EQ(config->models[0].device, "cuda:1");
  EXPECT_EQ(config->models[1].dtype, "float32");
  EXPECT_EQ(config->models[1].device, "");
  EXPECT_EQ(config->model_roots, std::vector<std::string>{"/m"});
  EXPECT_EQ(config->max_queue_per_device, 3);
  EXPECT_FALSE(config->allow_anonymous_admin);
  EXPECT_EQ(config->data_dir, "/d");
}

TEST(ServerConfig, BadFlagsAreInvalidArgumentNamingTheFlag) {
  auto code_and_message = [](std::vector<std::string> args) { return ParseServerConfig(args).status(); };
  absl::Status unknown = code_and_message({"--lisen", "x"});
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.message().find("--lisen"), absl::string_view::npos) << unknown;
  absl::Status number = code_and_message({"--max-tokens", "abc"});
  EXPECT_EQ(number.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(number.message().find("abc"), absl::string_view::npos) << number;
  EXPECT_EQ(code_and_message({"--max-tokens", "0"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code_and_message({"--model", "nodir"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code_and_message({"--model", "a=/x", "--model", "a=/y"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code_and_message({"--db"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code_and_message({"--tls-cert", "c.pem"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code_and_message({"stray"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code_and_message({"--allow-anonymous-admin=maybe"}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ServerConfig, SweepLimitsAndTf32FromFlagsAndFile) {
  absl::StatusOr<ServerConfig> config =
      ParseServerConfig({"--max-sweep-variants", "100", "--max-pass-tokens=4096", "--tf32", "--device", "cuda:0,cuda:1"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_sweep_variants, 100);
  EXPECT_EQ(config->max_pass_tokens, 4096);
  EXPECT_TRUE(config->tf32);
  EXPECT_EQ(config->default_device, "cuda:0,cuda:1");
  EXPECT_FALSE(ParseServerConfig({"--tf32=false"})->tf32);
  EXPECT_EQ(ParseServerConfig({"--max-pass-tokens", "0"}).status().code(), absl::StatusCode::kInvalidArgument);
  const fs::path file = TempDir() / "lesiond.json";
  Write(file, R"({"max_sweep_variants": 7, "tf32": true, "max_pass_tokens": 99})");
  config = ParseServerConfig({"--config", file.string()});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_sweep_variants, 7);
  EXPECT_EQ(config->max_pass_tokens, 99);
  EXPECT_TRUE(config->tf32);
  Write(file, R"({"tf32": "yes"})");
  EXPECT_EQ(ParseServerConfig({"--config", file.string()}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(Usage().find("--max-sweep-variants"), std::string::npos);
  EXPECT_NE(Usage().find("--tf32"), std::string::npos);
}

TEST(ServerConfig, HelpAndNoDefaultModel) {
  EXPECT_TRUE(ParseServerConfig({"--help"})->help);
  EXPECT_TRUE(ParseServerConfig({"--no-default-model"})->models.empty());
}

TEST(ServerConfig, JsonFileWithFlagsOverriding) {
  fs::path dir = TempDir();
  Write(dir / "lesiond.json", R"({
    "listen": "0.0.0.0:6000", "database": "/var/lesion.db",
    "models": [{"name": "gpt2", "dir": "/models/gpt2", "dtype": "bfloat16", "device": "cuda:0"}],
    "model_roots": ["/models"], "tokens_file": "/etc/tokens", "max_capture_bytes": 1024,
    "allow_anonymous_admin": false
  })");
  absl::StatusOr<ServerConfig> config =
      ParseServerConfig({"--listen", "127.0.0.1:7000", "--config", (dir / "lesiond.json").string()});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "127.0.0.1:7000");  // the flag wins wherever --config is
  EXPECT_EQ(config->database, "/var/lesion.db");
  ASSERT_EQ(config->models.size(), 1u);
  EXPECT_EQ(config->models[0].device, "cuda:0");
  EXPECT_EQ(config->models[0].dtype, "bfloat16");
  EXPECT_EQ(config->model_roots, std::vector<std::string>{"/models"});
  EXPECT_EQ(config->tokens_file, "/etc/tokens");
  EXPECT_EQ(config->max_capture_bytes, 1024);
  EXPECT_FALSE(config->allow_anonymous_admin);
}

TEST(ServerConfig, BadJsonFiles) {
  fs::path dir = TempDir();
  Write(dir / "a.json", R"({"listen": 5})");
  Write(dir / "b.json", R"({"lisen": "x"})");
  Write(dir / "c.json", R"({"models": [{"name": "x"}]})");
  Write(dir / "d.json", "{not json");
  for (const char* name : {"a.json", "b.json", "c.json", "d.json"}) {
    absl::Status st = ParseServerConfig({"--config", (dir / name).string()}).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << name << ": " << st;
  }
  EXPECT_EQ(ParseServerConfig({"--config", (dir / "missing.json").string()}).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ServerConfig, DataDirFromEnvironment) {
  setenv("LESION_DATA_DIR", "/env/data", 1);
  EXPECT_EQ(ParseServerConfig({})->data_dir, "/env/data");
  EXPECT_EQ(ParseServerConfig({"--data-dir", "/flag"})->data_dir, "/flag");
  unsetenv("LESION_DATA_DIR");
}

TEST(ModelDirs, AllowedUnderARootAfterResolvingSymlinksAndDots) {
  fs::path dir = TempDir();
  fs::create_directories(dir / "root" / "gpt2");
  fs::create_directories(dir / "outside" / "secret");
  fs::create_directories(dir / "preloaded");
  fs::create_directory_symlink(dir / "outside" / "secret", dir / "root" / "link");
  absl::StatusOr<ServerConfig> config = ParseServerConfig(
      {"--model-root", (dir / "root").string(), "--model", "p=" + (dir / "preloaded").string()});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(CheckModelDirAllowed(*config, (dir / "root" / "gpt2").string()).ok());
  EXPECT_TRUE(CheckModelDirAllowed(*config, (dir / "preloaded").string()).ok());
  EXPECT_EQ(CheckModelDirAllowed(*config, (dir / "root" / "link").string()).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckModelDirAllowed(*config, (dir / "root" / ".." / "outside" / "secret").string()).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckModelDirAllowed(*config, (dir / "root" / "nope").string()).code(), absl::StatusCode::kNotFound);
  // A sibling whose name merely starts with the root's is not under it.
  fs::create_directories(dir / "rootx");
  EXPECT_EQ(CheckModelDirAllowed(*config, (dir / "rootx").string()).code(), absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace lesion::server

namespace lesion::server {
namespace {

TEST(ServerConfig, TheDeployExampleParses) {
  absl::StatusOr<ServerConfig> config =
      ParseServerConfig({"--config", std::string(LESION_SOURCE_DIR) + "/deploy/lesiond.example.json"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->models.size(), 2u);
  EXPECT_EQ(config->tokens_file, "/etc/lesion/tokens");
}

}  // namespace
}  // namespace lesion::server

namespace lesion::server {
namespace {

TEST(ServerConfig, UnknownFlagIsNamedEvenWithoutAValue) {
  absl::Status st = ParseServerConfig({"--bogus"}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "unknown flag '--bogus' (see --help)");
}

}  // namespace
}  // namespace lesion::server
