#include "common/model_path.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/file_util.h"
#include "common/testing/status_matchers.h"

namespace lesion {
namespace {

namespace fs = std::filesystem;

constexpr char kMain[] = "0123456789abcdef0123456789abcdef01234567";
constexpr char kV1[] = "89abcdef0123456789abcdef0123456789abcdef";
constexpr char kDetached[] = "fedcba9876543210fedcba9876543210fedcba98";

// Sets (or, with nullopt, unsets) an environment variable for its lifetime.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = getenv(name); old != nullptr) old_ = old;
    if (value.has_value()) {
      setenv(name, value->c_str(), 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_.has_value()) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// A fake hub cache laid out as huggingface_hub writes it: blobs/ holds the content,
// snapshots/<commit>/ relative symlinks into blobs/, refs/<revision> the commit hash.
class ModelPathTest : public testing::Test {
 protected:
  void SetUp() override {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::temp_directory_path() / absl::StrCat("lesion_model_path_", info->name(), "_", getpid());
    ASSERT_OK(RemoveTree(root_));
    hub_ = root_ / "hub";
    fs::create_directories(hub_);
  }
  void TearDown() override { EXPECT_TRUE(RemoveTree(root_).ok()); }

  fs::path Repo(absl::string_view org, absl::string_view name) const {
    return hub_ / absl::StrCat("models--", org, "--", name);
  }

  // Adds `file` (may hold '/') to snapshot `commit` of org/name.
  void AddFile(absl::string_view org, absl::string_view name, absl::string_view commit, const std::string& file) {
    const fs::path repo = Repo(org, name);
    const std::string blob = absl::StrCat("blob", ++blobs_);
    fs::create_directories(repo / "blobs");
    std::ofstream(repo / "blobs" / blob) << "content of " << file;
    const fs::path link = repo / "snapshots" / std::string(commit) / file;
    fs::create_directories(link.parent_path());
    fs::path target = fs::path("..") / "..";
    for (char c : file) {
      if (c == '/') target /= "..";
    }
    fs::create_symlink(target / "blobs" / blob, link);
    ASSERT_TRUE(fs::is_regular_file(link)) << link;
  }

  void SetRef(absl::string_view org, absl::string_view name, const std::string& ref, const std::string& commit) {
    const fs::path file = Repo(org, name) / "refs" / ref;
    fs::create_directories(file.parent_path());
    std::ofstream(file) << commit;  // huggingface_hub writes no newline
  }

  // org/model: a safetensors checkpoint at main, v1, some/branch and a commit without a ref.
  void AddSafetensorsRepo() {
    for (const char* commit : {kMain, kV1, kDetached}) {
      AddFile("org", "model", commit, "config.json");
      AddFile("org", "model", commit, "model.safetensors");
    }
    SetRef("org", "model", "main", kMain);
    SetRef("org", "model", "v1", kV1);
    SetRef("org", "model", "some/branch", kV1);
  }

  fs::path root_, hub_;
  int blobs_ = 0;
};

TEST_F(ModelPathTest, MainResolvesThroughRefsToTheSnapshotDirectory) {
  AddSafetensorsRepo();
  absl::StatusOr<fs::path> path = ResolveModelPath("org/model", hub_);
  ASSERT_OK(path);
  EXPECT_EQ(*path, Repo("org", "model") / "snapshots" / kMain);
  absl::StatusOr<std::string> config = ReadFile(*path / "config.json");  // through the symlink
  ASSERT_OK(config);
  EXPECT_EQ(*config, "content of config.json");
}

TEST_F(ModelPathTest, RevisionsAreRefsIncludingSlashedBranchesOrCommitHashes) {
  AddSafetensorsRepo();
  const fs::path snapshots = Repo("org", "model") / "snapshots";
  EXPECT_EQ(ResolveModelPath("org/model@main", hub_).value_or(""), snapshots / kMain);
  EXPECT_EQ(ResolveModelPath("org/model@v1", hub_).value_or(""), snapshots / kV1);
  EXPECT_EQ(ResolveModelPath("org/model@some/branch", hub_).value_or(""), snapshots / kV1);
  EXPECT_EQ(ResolveModelPath(absl::StrCat("org/model@", kDetached), hub_).value_or(""), snapshots / kDetached);
  EXPECT_EQ(ResolveModelPath("org/model/", hub_).value_or(""), snapshots / kMain);
}

TEST_F(ModelPathTest, RefFileMayEndWithANewline) {
  AddFile("org", "model", kMain, "config.json");
  SetRef("org", "model", "main", absl::StrCat(kMain, "\n"));
  EXPECT_EQ(ResolveModelPath("org/model", hub_).value_or(""), Repo("org", "model") / "snapshots" / kMain);
}

TEST_F(ModelPathTest, GgufOnlySnapshotResolvesToItsFileNotTheBlob) {
  AddFile("org", "tiny-GGUF", kMain, "tiny.Q8_0.gguf");
  AddFile("org", "tiny-GGUF", kMain, "README.md");
  SetRef("org", "tiny-GGUF", "main", kMain);
  absl::StatusOr<fs::path> path = ResolveModelPath("org/tiny-GGUF", hub_);
  ASSERT_OK(path);
  EXPECT_EQ(*path, Repo("org", "tiny-GGUF") / "snapshots" / kMain / "tiny.Q8_0.gguf");
}

TEST_F(ModelPathTest, SeveralGgufFilesAreInvalidArgumentUntilOneIsNamed) {
  for (const char* file : {"q-Q4_K_M.gguf", "q-Q8_0.gguf", "f16/q-F16.gguf"}) AddFile("org", "q", kMain, file);
  SetRef("org", "q", "main", kMain);
  SetRef("org", "q", "some/branch", kMain);
  absl::StatusOr<fs::path> path = ResolveModelPath("org/q", hub_);
  ASSERT_EQ(path.status().code(), absl::StatusCode::kInvalidArgument) << path.status();
  for (const char* needle :
       {"q-Q4_K_M.gguf", "q-Q8_0.gguf", "f16/q-F16.gguf", "org/name[@revision]/FILE.gguf", "'org/q/f16/q-F16.gguf'"}) {
    EXPECT_NE(path.status().message().find(needle), std::string::npos) << needle << " in " << path.status();
  }
  const fs::path snapshot = Repo("org", "q") / "snapshots" / kMain;
  EXPECT_EQ(ResolveModelPath("org/q/q-Q8_0.gguf", hub_).value_or(""), snapshot / "q-Q8_0.gguf");
  EXPECT_EQ(ResolveModelPath("org/q@main/q-Q4_K_M.gguf", hub_).value_or(""), snapshot / "q-Q4_K_M.gguf");
  EXPECT_EQ(ResolveModelPath("org/q@some/branch/f16/q-F16.gguf", hub_).value_or(""), snapshot / "f16" / "q-F16.gguf");
  // A folder of the snapshot holding one .gguf file names it.
  EXPECT_EQ(ResolveModelPath("org/q@main/f16", hub_).value_or(""), snapshot / "f16" / "q-F16.gguf");
  EXPECT_EQ(ResolveModelPath("org/q@main", hub_).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelPathTest, SplitGgufSetIsOneCheckpointNamedByItsFirstSplit) {
  for (const char* file : {"big-00002-of-00003.gguf", "big-00001-of-00003.gguf", "big-00003-of-00003.gguf"}) {
    AddFile("org", "big", kMain, file);
  }
  SetRef("org", "big", "main", kMain);
  EXPECT_EQ(ResolveModelPath("org/big", hub_).value_or(""),
            Repo("org", "big") / "snapshots" / kMain / "big-00001-of-00003.gguf");

  // One split set per quantization, in folders: name the folder or a file.
  for (const char* file : {"Q4_K_M/big-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/big-Q4_K_M-00002-of-00002.gguf",
                           "Q8_0/big-Q8_0-00001-of-00002.gguf", "Q8_0/big-Q8_0-00002-of-00002.gguf"}) {
    AddFile("org", "quants", kMain, file);
  }
  SetRef("org", "quants", "main", kMain);
  absl::StatusOr<fs::path> path = ResolveModelPath("org/quants", hub_);
  ASSERT_EQ(path.status().code(), absl::StatusCode::kInvalidArgument) << path.status();
  for (const char* needle : {"2 GGUF checkpoints", "Q4_K_M/big-Q4_K_M-00001-of-00002.gguf (2 splits)",
                             "Q8_0/big-Q8_0-00001-of-00002.gguf (2 splits)"}) {
    EXPECT_NE(path.status().message().find(needle), std::string::npos) << needle << " in " << path.status();
  }
  const fs::path snapshot = Repo("org", "quants") / "snapshots" / kMain;
  EXPECT_EQ(ResolveModelPath("org/quants/Q8_0", hub_).value_or(""), snapshot / "Q8_0" / "big-Q8_0-00001-of-00002.gguf");
  EXPECT_EQ(ResolveModelPath("org/quants@main/Q4_K_M/big-Q4_K_M-00002-of-00002.gguf", hub_).value_or(""),
            snapshot / "Q4_K_M" / "big-Q4_K_M-00002-of-00002.gguf");
}

TEST_F(ModelPathTest, ConfigJsonWinsOverGgufFiles) {
  for (const char* file : {"config.json", "a.gguf", "b.gguf"}) AddFile("org", "both", kMain, file);
  SetRef("org", "both", "main", kMain);
  EXPECT_EQ(ResolveModelPath("org/both", hub_).value_or(""), Repo("org", "both") / "snapshots" / kMain);
}

TEST_F(ModelPathTest, MissingRepositoryIsNotFoundNamingTheCacheFolder) {
  absl::StatusOr<fs::path> path = ResolveModelPath("openai-community/gpt2", hub_);
  ASSERT_EQ(path.status().code(), absl::StatusCode::kNotFound) << path.status();
  const std::string message(path.status().message());
  for (const std::string& needle : {std::string("model 'openai-community/gpt2' is not in the Hugging Face cache"),
                                    (hub_ / "models--openai-community--gpt2").string() + " does not exist",
                                    std::string("never downloads"), std::string("HF_HUB_CACHE")}) {
    EXPECT_NE(message.find(needle), std::string::npos) << needle << " in " << message;
  }
  absl::StatusOr<fs::path> no_cache = ResolveModelPath("org/model", root_ / "no-such-cache");
  ASSERT_EQ(no_cache.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(no_cache.status().message().find((root_ / "no-such-cache").string() + " does not exist"), std::string::npos)
      << no_cache.status();
}

TEST_F(ModelPathTest, MissingRevisionSnapshotOrFileIsNotFound) {
  AddSafetensorsRepo();
  const fs::path repo = Repo("org", "model");
  absl::StatusOr<fs::path> path = ResolveModelPath("org/model@nope", hub_);
  ASSERT_EQ(path.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(path.status().message().find((repo / "refs" / "nope").string() + " does not exist"), std::string::npos)
      << path.status();
  EXPECT_NE(path.status().message().find("cached refs: main, some/branch, v1"), std::string::npos) << path.status();

  const std::string unknown_commit = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
  path = ResolveModelPath("org/model@" + unknown_commit, hub_);
  ASSERT_EQ(path.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(path.status().message().find((repo / "snapshots" / unknown_commit).string()), std::string::npos)
      << path.status();

  SetRef("org", "model", "gone", unknown_commit);  // a ref whose snapshot was deleted
  path = ResolveModelPath("org/model@gone", hub_);
  ASSERT_EQ(path.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(path.status().message().find(unknown_commit), std::string::npos) << path.status();

  path = ResolveModelPath("org/model@v1/missing.gguf", hub_);
  ASSERT_EQ(path.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(path.status().message().find((repo / "snapshots" / kV1 / "missing.gguf").string()), std::string::npos)
      << path.status();

  // A repository folder without refs/main (only commits were fetched).
  fs::remove(repo / "refs" / "main");
  EXPECT_EQ(ResolveModelPath("org/model", hub_).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ModelPathTest, SnapshotWithoutAModelIsNotFound) {
  AddFile("org", "partial", kMain, "README.md");
  SetRef("org", "partial", "main", kMain);
  absl::StatusOr<fs::path> path = ResolveModelPath("org/partial", hub_);
  ASSERT_EQ(path.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(path.status().message().find("neither config.json nor a .gguf file"), std::string::npos) << path.status();
}

TEST_F(ModelPathTest, DamagedRefIsFailedPrecondition) {
  AddFile("org", "model", kMain, "config.json");
  SetRef("org", "model", "main", "not a hash");
  EXPECT_EQ(ResolveModelPath("org/model", hub_).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ModelPathTest, InvalidRepoIdsAreInvalidArgument) {
  for (const char* reference : {"org/na me", "org/..", "org/a..b", "org/a--b", "org/-a", "org/a.", "org/a.git",
                                "or g/name", "user@host/x", "org//name", "org/name@", "org/name@a//b", "org/name@../x",
                                "org/name/../x", "org/name/./x", "org/name@v1/../x"}) {
    absl::StatusOr<fs::path> path = ResolveModelPath(reference, hub_);
    EXPECT_EQ(path.status().code(), absl::StatusCode::kInvalidArgument) << reference << ": " << path.status();
  }
  EXPECT_EQ(ResolveModelPath(std::string(97, 'a') + "/x", hub_).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveModelPath("", hub_).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveModelPath("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ModelPathTest, ExistingLocalPathWins) {
  AddSafetensorsRepo();
  const fs::path cwd = fs::current_path();
  fs::create_directories(root_ / "work" / "org" / "model");
  fs::current_path(root_ / "work");
  absl::StatusOr<fs::path> path = ResolveModelPath("org/model", hub_);
  fs::current_path(cwd);
  ASSERT_OK(path);
  EXPECT_EQ(*path, fs::path("org/model"));
  // A file too (a .gguf checkpoint), and absolute paths.
  std::ofstream(root_ / "work" / "m.gguf") << "GGUF";
  EXPECT_EQ(ResolveModelPath((root_ / "work" / "m.gguf").string(), hub_).value_or(""), root_ / "work" / "m.gguf");
}

TEST_F(ModelPathTest, ReferencesThatAreNotRepoIdsPassThroughUnchanged) {
  for (const char* reference : {"/no/such/dir", "./no/such", "../no/such", "~/no/such", "no-such-dir", "x.gguf"}) {
    EXPECT_EQ(ResolveModelPath(reference, hub_).value_or(""), fs::path(reference)) << reference;
    EXPECT_EQ(ResolveModelPath(reference).value_or(""), fs::path(reference)) << reference;
  }
}

TEST_F(ModelPathTest, HubCacheFollowsHuggingFaceHubPrecedence) {
  ScopedEnv home("HOME", "/home/u");
  ScopedEnv xdg("XDG_CACHE_HOME", "/xdg");
  ScopedEnv hf_home("HF_HOME", "/hf-home");
  ScopedEnv legacy("HUGGINGFACE_HUB_CACHE", "/legacy");
  {
    ScopedEnv hub("HF_HUB_CACHE", "/hub");
    EXPECT_EQ(HuggingFaceHubCache(), fs::path("/hub"));
  }
  {
    ScopedEnv hub("HF_HUB_CACHE", "");  // empty counts as unset
    EXPECT_EQ(HuggingFaceHubCache(), fs::path("/legacy"));
  }
  ScopedEnv hub("HF_HUB_CACHE", std::nullopt);
  EXPECT_EQ(HuggingFaceHubCache(), fs::path("/legacy"));
  unsetenv("HUGGINGFACE_HUB_CACHE");
  EXPECT_EQ(HuggingFaceHubCache(), fs::path("/hf-home/hub"));
  unsetenv("HF_HOME");
  EXPECT_EQ(HuggingFaceHubCache(), fs::path("/xdg/huggingface/hub"));
  unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(HuggingFaceHubCache(), fs::path("/home/u/.cache/huggingface/hub"));
}

TEST_F(ModelPathTest, HubCacheExpandsUserAndVariablesLikePython) {
  ScopedEnv home("HOME", "/home/u/");
  ScopedEnv vol("LESION_TEST_VOLUME", "/mnt/v");
  ScopedEnv unset("LESION_TEST_UNSET", std::nullopt);
  ScopedEnv legacy("HUGGINGFACE_HUB_CACHE", std::nullopt);
  {
    ScopedEnv hub("HF_HUB_CACHE", "~/hub");
    EXPECT_EQ(HuggingFaceHubCache(), fs::path("/home/u/hub"));
  }
  {
    ScopedEnv hub("HF_HUB_CACHE", "$LESION_TEST_VOLUME/hub");
    EXPECT_EQ(HuggingFaceHubCache(), fs::path("/mnt/v/hub"));
  }
  {
    ScopedEnv hub("HF_HUB_CACHE", "${LESION_TEST_VOLUME}x/$LESION_TEST_UNSET/$/${");
    EXPECT_EQ(HuggingFaceHubCache(), fs::path("/mnt/vx/$LESION_TEST_UNSET/$/${"));
  }
  ScopedEnv hub("HF_HUB_CACHE", std::nullopt);
  ScopedEnv hf_home("HF_HOME", "~/hf");
  EXPECT_EQ(HuggingFaceHubCache(), fs::path("/home/u/hf/hub"));
}

TEST_F(ModelPathTest, ResolveModelPathSearchesTheEnvironmentsCache) {
  AddSafetensorsRepo();
  ScopedEnv legacy("HUGGINGFACE_HUB_CACHE", std::nullopt);
  {
    ScopedEnv hub("HF_HUB_CACHE", hub_.string());
    EXPECT_EQ(ResolveModelPath("org/model@v1").value_or(""), Repo("org", "model") / "snapshots" / kV1);
  }
  ScopedEnv hub("HF_HUB_CACHE", std::nullopt);
  ScopedEnv hf_home("HF_HOME", root_.string());  // root_/hub is the cache
  EXPECT_EQ(ResolveModelPath("org/model").value_or(""), Repo("org", "model") / "snapshots" / kMain);
  ScopedEnv elsewhere("HF_HOME", (root_ / "elsewhere").string());
  absl::StatusOr<fs::path> path = ResolveModelPath("org/model");
  ASSERT_EQ(path.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(path.status().message().find((root_ / "elsewhere" / "hub").string()), std::string::npos) << path.status();
}

}  // namespace
}  // namespace lesion
