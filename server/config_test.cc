#include "server/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/testing/status_matchers.h"

namespace lesion::server {
namespace {

using ::lesion::matchers::StatusIs;

namespace fs = std::filesystem;

fs::path TempDir() {
  const auto* info = testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir =
      fs::temp_directory_path() / (std::string("lesion_config_") + info->name() + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void Write(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

TEST(ServerConfig, NoArgumentsServeTheBundledModel) {
  absl::StatusOr<ServerConfig> config = ParseServerConfig({});
  ASSERT_OK(config);
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
  absl::StatusOr<ServerConfig> config = ParseServerConfig({"--listen",
                                                           "unix:/tmp/l.sock",
                                                           "--db=/tmp/x.db",
                                                           "--dtype",
                                                           "bfloat16",
                                                           "--model",
                                                           "a=/m/a",
                                                           "--device",
                                                           "cuda:1",
                                                           "--model",
                                                           "b=/m/b",
                                                           "--dtype",
                                                           "float32",
                                                           "--model-root",
                                                           "/m",
                                                           "--max-queue-per-device",
                                                           "3",
                                                           "--allow-anonymous-admin=false",
                                                           "--data-dir",
                                                           "/d"});
  ASSERT_OK(config);
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
  EXPECT_THAT(unknown, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(unknown.message().find("--lisen"), absl::string_view::npos) << unknown;
  absl::Status number = code_and_message({"--max-tokens", "abc"});
  EXPECT_THAT(number, StatusIs(absl::StatusCode::kInvalidArgument));
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
  absl::StatusOr<ServerConfig> config = ParseServerConfig(
      {"--max-sweep-variants", "100", "--max-pass-tokens=4096", "--tf32", "--device", "cuda:0,cuda:1"});
  ASSERT_OK(config);
  EXPECT_EQ(config->max_sweep_variants, 100);
  EXPECT_EQ(config->max_pass_tokens, 4096);
  EXPECT_TRUE(config->tf32);
  EXPECT_EQ(config->default_device, "cuda:0,cuda:1");
  EXPECT_FALSE(ParseServerConfig({"--tf32=false"})->tf32);
  EXPECT_EQ(ParseServerConfig({"--max-pass-tokens", "0"}).status().code(), absl::StatusCode::kInvalidArgument);
  const fs::path file = TempDir() / "lesiond.json";
  Write(file, R"({"max_sweep_variants": 7, "tf32": true, "max_pass_tokens": 99})");
  config = ParseServerConfig({"--config", file.string()});
  ASSERT_OK(config);
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
  ASSERT_OK(config);
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
  absl::StatusOr<ServerConfig> config =
      ParseServerConfig({"--model-root", (dir / "root").string(), "--model", "p=" + (dir / "preloaded").string()});
  ASSERT_OK(config);
  EXPECT_OK(CheckModelDirAllowed(*config, (dir / "root" / "gpt2").string()));
  EXPECT_OK(CheckModelDirAllowed(*config, (dir / "preloaded").string()));
  EXPECT_EQ(CheckModelDirAllowed(*config, (dir / "root" / "link").string()).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckModelDirAllowed(*config, (dir / "root" / ".." / "outside" / "secret").string()).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckModelDirAllowed(*config, (dir / "root" / "nope").string()).code(), absl::StatusCode::kNotFound);
  // A sibling whose name merely starts with the root's is not under it.
  fs::create_directories(dir / "rootx");
  EXPECT_EQ(CheckModelDirAllowed(*config, (dir / "rootx").string()).code(), absl::StatusCode::kPermissionDenied);
  // A link inside the root that stays inside is fine.
  fs::create_directory_symlink(dir / "root" / "gpt2", dir / "root" / "alias");
  EXPECT_OK(CheckModelDirAllowed(*config, (dir / "root" / "alias").string()));
}

// Whether a path outside the roots exists, and where a link leads, is not for the caller to learn:
// the answer is one PERMISSION_DENIED naming the path as given.
TEST(ModelDirs, OneAnswerForEveryPathOutsideTheRoots) {
  fs::path dir = TempDir();
  fs::create_directories(dir / "root");
  fs::create_directories(dir / "outside" / "exists");
  fs::create_directory_symlink(dir / "outside", dir / "root" / "out");
  fs::create_directory_symlink(dir / "outside" / "missing", dir / "root" / "dangling");
  absl::StatusOr<ServerConfig> config = ParseServerConfig({"--model-root", (dir / "root").string()});
  ASSERT_OK(config);
  for (const auto& [existing, missing] :
       std::vector<std::pair<fs::path, fs::path>>{{dir / "outside" / "exists", dir / "outside" / "missing"},
                                                  {dir / "root" / "out" / "exists", dir / "root" / "out" / "missing"},
                                                  {dir / "root" / "out", dir / "root" / "dangling"},
                                                  {dir / "root" / ".." / "outside", dir / "root" / ".." / "nothing"},
                                                  {"/etc", "/no/such/dir"}}) {
    absl::Status a = CheckModelDirAllowed(*config, existing.string());
    absl::Status b = CheckModelDirAllowed(*config, missing.string());
    EXPECT_EQ(a.code(), absl::StatusCode::kPermissionDenied) << a;
    EXPECT_EQ(b.code(), absl::StatusCode::kPermissionDenied) << b;
    // The messages differ only in the path named, which is the one given.
    std::string a_text(a.message()), b_text(b.message());
    a_text.replace(a_text.find(existing.string()), existing.string().size(), "PATH");
    b_text.replace(b_text.find(missing.string()), missing.string().size(), "PATH");
    EXPECT_EQ(a_text, b_text);
    EXPECT_EQ(a_text.find(dir / "outside" / "missing"), std::string::npos) << a_text;  // no link target
  }
  // Without roots, likewise.
  absl::StatusOr<ServerConfig> no_roots = ParseServerConfig({});
  ASSERT_OK(no_roots);
  EXPECT_EQ(CheckModelDirAllowed(*no_roots, "/etc").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CheckModelDirAllowed(*no_roots, "/no/such/dir").code(), absl::StatusCode::kPermissionDenied);
}

// No file the loader opens may lead out of the roots through a link inside an allowed directory.
TEST(ModelDirs, FilesLinkedOutOfTheRootsAreRefusedNamingTheFile) {
  fs::path dir = TempDir();
  const fs::path root = dir / "root", model = root / "model";
  fs::create_directories(model / "shards");
  fs::create_directories(dir / "outside");
  Write(dir / "outside" / "secret", "secret");
  Write(root / "shared_tokenizer.json", "{}");
  Write(model / "config.json", "{}");
  absl::StatusOr<ServerConfig> config = ParseServerConfig({"--model-root", root.string()});
  ASSERT_OK(config);
  EXPECT_OK(CheckModelDirAllowed(*config, model.string()));

  // A link that stays inside the roots is allowed.
  fs::create_symlink(root / "shared_tokenizer.json", model / "tokenizer.json");
  EXPECT_OK(CheckModelDirAllowed(*config, model.string()));

  auto expect_refused = [&](const fs::path& file) {
    absl::Status st = CheckModelDirAllowed(*config, model.string());
    EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << file << ": " << st;
    EXPECT_NE(st.message().find(file.string()), absl::string_view::npos) << st;
    EXPECT_EQ(st.message().find("secret"), absl::string_view::npos) << st;  // not where it leads
    fs::remove(file);
    EXPECT_OK(CheckModelDirAllowed(*config, model.string())) << "after removing " << file;
  };
  for (const char* name : {"config.json", "tokenizer.model", "model.safetensors", "model.gguf", "vocab.json"}) {
    fs::path file = model / name;
    fs::path saved = dir / "saved";
    if (fs::exists(file)) fs::rename(file, saved);
    fs::create_symlink(dir / "outside" / "secret", file);
    expect_refused(file);
    if (fs::exists(saved)) fs::rename(saved, file);
  }
  // A dangling link out is refused too (whether its target exists is not revealed).
  fs::create_symlink(dir / "outside" / "missing", model / "tokenizer.model");
  expect_refused(model / "tokenizer.model");
  // A subdirectory linked out.
  fs::create_directory_symlink(dir / "outside", model / "more");
  expect_refused(model / "more");
  // A shard the safetensors index names below a subdirectory.
  Write(model / "model.safetensors.index.json", R"({"weight_map": {"a": "shards/model-00001-of-00001.safetensors"}})");
  EXPECT_OK(CheckModelDirAllowed(*config, model.string()));
  fs::create_symlink(dir / "outside" / "secret", model / "shards" / "model-00001-of-00001.safetensors");
  expect_refused(model / "shards" / "model-00001-of-00001.safetensors");
}

TEST(ModelDirs, GgufSplitsLinkedOutOfTheRootsAreRefused) {
  fs::path dir = TempDir();
  const fs::path root = dir / "root";
  fs::create_directories(root);
  fs::create_directories(dir / "outside");
  Write(dir / "outside" / "secret.gguf", "GGUF");
  Write(root / "m-00001-of-00002.gguf", "GGUF");
  Write(root / "other.gguf", "GGUF");
  absl::StatusOr<ServerConfig> config = ParseServerConfig({"--model-root", root.string()});
  ASSERT_OK(config);
  const std::string first = (root / "m-00001-of-00002.gguf").string();
  fs::create_symlink(dir / "outside" / "secret.gguf", root / "m-00002-of-00002.gguf");
  absl::Status st = CheckModelDirAllowed(*config, first);
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << st;
  EXPECT_NE(st.message().find("m-00002-of-00002.gguf"), absl::string_view::npos) << st;
  // A link out beside it that is not one of its splits is not the loader's business.
  fs::remove(root / "m-00002-of-00002.gguf");
  Write(root / "m-00002-of-00002.gguf", "GGUF");
  fs::create_symlink(dir / "outside" / "secret.gguf", root / "unrelated.gguf");
  EXPECT_OK(CheckModelDirAllowed(*config, first));
  EXPECT_OK(CheckModelDirAllowed(*config, (root / "other.gguf").string()));
  // The file itself linked out.
  EXPECT_EQ(CheckModelDirAllowed(*config, (root / "unrelated.gguf").string()).code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(ServerConfig, AnonymousAdminsOnlyOnLoopbackUnlessForced) {
  for (const char* local : {"127.0.0.1:50051", "127.1.2.3:0", "localhost:50051", "[::1]:50051", "unix:/tmp/lesion.sock",
                            "[::ffff:127.0.0.1]:1"}) {
    EXPECT_TRUE(IsLoopbackListenAddress(local)) << local;
    EXPECT_OK(ParseServerConfig({"--listen", local}));
  }
  for (const char* remote : {"0.0.0.0:50051", "[::]:50051", "10.0.0.5:50051", "lab-server:50051", ":50051"}) {
    EXPECT_FALSE(IsLoopbackListenAddress(remote)) << remote;
    absl::Status st = ParseServerConfig({"--listen", remote}).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << remote;
    for (const char* advice : {"--tokens-file", "--allow-anonymous-admin=false", "--allow-anonymous-remote"}) {
      EXPECT_NE(st.message().find(advice), absl::string_view::npos) << st;
    }
    // Fine with tokens, with anonymous plain users, or when forced (flag or JSON key).
    EXPECT_OK(ParseServerConfig({"--listen", remote, "--tokens-file", "/etc/tokens"}));
    EXPECT_OK(ParseServerConfig({"--listen", remote, "--allow-anonymous-admin=false"}));
    absl::StatusOr<ServerConfig> forced = ParseServerConfig({"--listen", remote, "--allow-anonymous-remote"});
    ASSERT_OK(forced);
    EXPECT_TRUE(forced->allow_anonymous_remote);
    EXPECT_FALSE(ParseServerConfig({"--listen", remote, "--allow-anonymous-remote=false"}).ok()) << remote;
  }
  fs::path dir = TempDir();
  Write(dir / "forced.json", R"({"listen": "0.0.0.0:6000", "allow_anonymous_remote": true})");
  Write(dir / "bad.json", R"({"allow_anonymous_remote": "yes"})");
  EXPECT_OK(ParseServerConfig({"--config", (dir / "forced.json").string()}));
  EXPECT_EQ(ParseServerConfig({"--config", (dir / "bad.json").string()}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lesion::server

namespace lesion::server {
namespace {

TEST(ServerConfig, TheDeployExampleParses) {
  absl::StatusOr<ServerConfig> config =
      ParseServerConfig({"--config", std::string(LESION_SOURCE_DIR) + "/deploy/lesiond.example.json"});
  ASSERT_OK(config);
  EXPECT_EQ(config->models.size(), 2u);
  EXPECT_EQ(config->tokens_file, "/etc/lesion/tokens");
}

}  // namespace
}  // namespace lesion::server

namespace lesion::server {
namespace {

TEST(ServerConfig, UnknownFlagIsNamedEvenWithoutAValue) {
  absl::Status st = ParseServerConfig({"--bogus"}).status();
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(st.message(), "unknown flag '--bogus' (see --help)");
}

}  // namespace
}  // namespace lesion::server

namespace lesion::server {
namespace {

TEST(ServerConfig, MetricsAddressAndLogFormat) {
  absl::StatusOr<ServerConfig> config = ParseServerConfig({"--no-default-model"});
  ASSERT_OK(config);
  EXPECT_EQ(config->metrics_address, "");  // no /metrics unless asked for
  EXPECT_EQ(config->log_format, "text");

  config = ParseServerConfig({"--no-default-model", "--metrics-address", "127.0.0.1:9464", "--log-format=json"});
  ASSERT_OK(config);
  EXPECT_EQ(config->metrics_address, "127.0.0.1:9464");
  EXPECT_EQ(config->log_format, "json");

  const fs::path dir = TempDir();
  Write(dir / "c.json", R"({"metrics_address": "0.0.0.0:0", "log_format": "json"})");
  config = ParseServerConfig({"--no-default-model", "--config", (dir / "c.json").string()});
  ASSERT_OK(config);
  EXPECT_EQ(config->metrics_address, "0.0.0.0:0");
  EXPECT_EQ(config->log_format, "json");

  absl::Status st = ParseServerConfig({"--no-default-model", "--metrics-address", "9464"}).status();
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(st.message(), "--metrics-address: '9464' is not HOST:PORT (e.g. 127.0.0.1:9464)");
  EXPECT_EQ(ParseServerConfig({"--no-default-model", "--metrics-address", "localhost:70000"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  st = ParseServerConfig({"--no-default-model", "--log-format", "xml"}).status();
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(st.message(), "--log-format: 'xml' is not text or json");
}

}  // namespace
}  // namespace lesion::server
