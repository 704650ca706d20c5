#include "common/model_path.h"

#include <dirent.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace lesion {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxRepoPartLength = 96;  // huggingface_hub's REPO_ID_REGEX
constexpr int kMaxSearchDepth = 8;         // .gguf files in a snapshot's subfolders
constexpr size_t kMaxListed = 12;          // names listed in an error message
constexpr char kNeverDownloads[] = "lesion never downloads; set HF_HUB_CACHE or HF_HOME, or pass a directory";

// A variable's value; nullopt when unset or empty.
std::optional<std::string> Env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

// Python's posixpath.expanduser: a leading "~" or "~user".
std::string ExpandUser(const std::string& path) {
  if (path.empty() || path[0] != '~') return path;
  size_t slash = path.find('/', 1);
  if (slash == std::string::npos) slash = path.size();
  std::string home;
  std::vector<char> buffer(16384);
  passwd entry;
  passwd* found = nullptr;
  if (slash == 1) {
    if (const char* env = std::getenv("HOME"); env != nullptr) {
      home = env;
    } else if (getpwuid_r(getuid(), &entry, buffer.data(), buffer.size(), &found) == 0 && found != nullptr) {
      home = found->pw_dir;
    } else {
      return path;
    }
  } else {
    const std::string user = path.substr(1, slash - 1);
    if (getpwnam_r(user.c_str(), &entry, buffer.data(), buffer.size(), &found) != 0 || found == nullptr) {
      return path;
    }
    home = found->pw_dir;
  }
  while (!home.empty() && home.back() == '/') home.pop_back();
  std::string expanded = home + path.substr(slash);
  return expanded.empty() ? "/" : expanded;
}

bool IsWordChar(char c) { return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Python's posixpath.expandvars: $NAME and ${NAME}; variables that are not set stay as written.
std::string ExpandVars(const std::string& path) {
  std::string out;
  size_t i = 0;
  while (i < path.size()) {
    if (path[i] != '$') {
      out += path[i++];
      continue;
    }
    size_t name_begin = i + 1, name_end = i + 1, next = i + 1;
    if (name_begin < path.size() && path[name_begin] == '{') {
      const size_t close = path.find('}', name_begin + 1);
      if (close == std::string::npos) {
        out += path[i++];
        continue;
      }
      name_begin += 1;
      name_end = close;
      next = close + 1;
    } else {
      while (name_end < path.size() && IsWordChar(path[name_end])) ++name_end;
      if (name_end == name_begin) {
        out += path[i++];
        continue;
      }
      next = name_end;
    }
    const std::string name = path.substr(name_begin, name_end - name_begin);
    const char* value = name.empty() ? nullptr : std::getenv(name.c_str());
    out += value != nullptr ? std::string(value) : path.substr(i, next - i);
    i = next;
  }
  return out;
}

// os.path.join(base, leaf) for a relative leaf.
std::string Join(const std::string& base, absl::string_view leaf) {
  if (base.empty() || base.back() == '/') return absl::StrCat(base, leaf);
  return absl::StrCat(base, "/", leaf);
}

bool IsDirectory(const fs::path& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsRegularFile(const fs::path& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool Exists(const fs::path& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool IsCommitHash(absl::string_view s) {
  return s.size() == 40 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

enum class EntryKind { kFile, kDirectory };

// Names below `dir` (relative, '/'-separated, sorted) of the entries of `kind` that `keep` accepts,
// following symlinks (the cache's snapshot files are symlinks into blobs/). POSIX directory reads
// rather than std::filesystem iterators: see RemoveTree in file_util.h.
template <typename Keep>
void ListEntries(const fs::path& dir, const std::string& prefix, int depth, bool recursive, EntryKind kind,
                 const Keep& keep, std::vector<std::string>& out) {
  DIR* handle = ::opendir(dir.c_str());
  if (handle == nullptr) return;
  while (const dirent* entry = ::readdir(handle)) {
    const std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    const fs::path path = dir / name;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) continue;
    const std::string relative = prefix + name;
    if (S_ISDIR(st.st_mode)) {
      if (kind == EntryKind::kDirectory && keep(name)) out.push_back(relative);
      if (recursive && depth < kMaxSearchDepth) {
        ListEntries(path, relative + "/", depth + 1, recursive, kind, keep, out);
      }
    } else if (S_ISREG(st.st_mode) && kind == EntryKind::kFile && keep(name)) {
      out.push_back(relative);
    }
  }
  ::closedir(handle);
  std::sort(out.begin(), out.end());
}

std::string ListForMessage(const std::vector<std::string>& names) {
  if (names.empty()) return "none";
  if (names.size() <= kMaxListed) return absl::StrJoin(names, ", ");
  return absl::StrCat(absl::StrJoin(names.begin(), names.begin() + kMaxListed, ", "), ", ... (", names.size(),
                      " in all)");
}

// The cache's revisions of a repository folder, for "not found" messages.
std::string CachedRevisions(const fs::path& repo) {
  std::vector<std::string> refs, snapshots;
  ListEntries(
      repo / "refs", "", 0, /*recursive=*/true, EntryKind::kFile, [](const std::string&) { return true; }, refs);
  ListEntries(
      repo / "snapshots", "", 0, /*recursive=*/false, EntryKind::kDirectory, [](const std::string&) { return true; },
      snapshots);
  return absl::StrCat("cached refs: ", ListForMessage(refs), "; snapshots: ", ListForMessage(snapshots));
}

// `org/name[@revision][/PATH]`, split and checked.
struct HubReference {
  std::string org, name;
  bool has_revision = false;
  std::vector<std::string> after_at;  // with has_revision: the revision's parts, then PATH's
  std::vector<std::string> path;      // without: PATH's parts ({} = the snapshot)
};

// Whether `reference` (not an existing path) is meant as a hub reference rather than a path.
bool LooksLikeHubReference(absl::string_view reference) {
  return absl::StrContains(reference, '/') && reference[0] != '/' && reference[0] != '.' && reference[0] != '~';
}

absl::Status BadReference(absl::string_view reference, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("model '", reference,
                   "' is neither an existing path nor a Hugging Face model id org/name[@revision][/FILE]: ", why));
}

absl::Status CheckRepoPart(absl::string_view reference, absl::string_view what, absl::string_view part) {
  if (part.empty() || part.size() > kMaxRepoPartLength) {
    return BadReference(reference,
                        absl::StrCat("the ", what, " '", part, "' must have 1 to ", kMaxRepoPartLength, " characters"));
  }
  for (char c : part) {
    if (!IsWordChar(c) && c != '-' && c != '.') {
      return BadReference(reference,
                          absl::StrCat("the ", what, " '", part, "' may only hold letters, digits, '-', '_' and '.'"));
    }
  }
  if (!IsWordChar(part.front()) || !IsWordChar(part.back())) {
    return BadReference(reference, absl::StrCat("the ", what, " '", part, "' starts or ends with '-' or '.'"));
  }
  return absl::OkStatus();
}

// "a/b/c" -> {a, b, c}; trailing slashes are dropped. Empty, "." and ".." parts are refused.
absl::StatusOr<std::vector<std::string>> SplitParts(absl::string_view reference, absl::string_view what,
                                                    absl::string_view text) {
  while (!text.empty() && text.back() == '/') text.remove_suffix(1);
  if (text.empty()) return std::vector<std::string>{};
  std::vector<std::string> parts = absl::StrSplit(text, '/');
  for (const std::string& part : parts) {
    if (part.empty() || part == "." || part == "..") {
      return BadReference(reference, absl::StrCat("the ", what, " '", text, "' has an empty, '.' or '..' part"));
    }
  }
  return parts;
}

absl::StatusOr<HubReference> ParseHubReference(absl::string_view reference) {
  HubReference ref;
  const size_t slash = reference.find('/');
  ref.org = std::string(reference.substr(0, slash));
  absl::string_view rest = reference.substr(slash + 1);
  const size_t name_end = rest.find_first_of("@/");
  ref.name = std::string(rest.substr(0, name_end));
  RETURN_IF_ERROR(CheckRepoPart(reference, "organization", ref.org));
  RETURN_IF_ERROR(CheckRepoPart(reference, "name", ref.name));
  const std::string repo_id = absl::StrCat(ref.org, "/", ref.name);
  if (absl::StrContains(repo_id, "--") || absl::StrContains(repo_id, "..")) {
    return BadReference(reference, absl::StrCat("'", repo_id, "' contains '--' or '..'"));
  }
  if (absl::EndsWith(repo_id, ".git")) {
    return BadReference(reference, absl::StrCat("'", repo_id, "' ends with '.git'"));
  }
  if (name_end == absl::string_view::npos) return ref;
  absl::string_view tail = rest.substr(name_end + 1);
  if (rest[name_end] == '@') {
    ref.has_revision = true;
    ASSIGN_OR_RETURN(ref.after_at, SplitParts(reference, "revision", tail));
    if (ref.after_at.empty()) return BadReference(reference, "the revision after '@' is empty");
  } else {
    ASSIGN_OR_RETURN(ref.path, SplitParts(reference, "path", tail));
  }
  return ref;
}

// The commit `revision` names in `repo`: itself if it is a cached commit hash, else the content of
// refs/<revision>; nullopt if neither is in the cache.
absl::StatusOr<std::optional<std::string>> LookUpRevision(const fs::path& repo, const std::string& revision) {
  if (IsCommitHash(revision) && IsDirectory(repo / "snapshots" / revision)) return revision;
  const fs::path ref_file = repo / "refs" / revision;
  if (!IsRegularFile(ref_file)) return std::nullopt;
  ASSIGN_OR_RETURN(std::string content, ReadFile(ref_file));
  const std::string commit(absl::StripAsciiWhitespace(content));
  if (!IsCommitHash(commit)) {
    return absl::FailedPreconditionError(absl::StrCat(ref_file.string(), " holds '", commit.substr(0, 64),
                                                      "', not a 40-digit commit hash (a damaged cache?)"));
  }
  return commit;
}

// The checkpoint a .gguf file belongs to: for a split "NAME-00002-of-00003.gguf" (llama.cpp's
// gguf-split) the set "NAME-of-00003" and the split's number; for any other file itself and 1.
std::pair<std::string, int> GgufCheckpoint(const std::string& relative) {
  const absl::string_view stem = absl::string_view(relative).substr(0, relative.size() - 5);  // no .gguf
  auto digits = [&](size_t pos) {
    return std::all_of(stem.begin() + pos, stem.begin() + pos + 5, [](char c) { return c >= '0' && c <= '9'; });
  };
  const size_t n = stem.size();
  if (n >= 15 && stem[n - 15] == '-' && digits(n - 14) && stem.substr(n - 9, 4) == "-of-" && digits(n - 5)) {
    int index = 0;
    if (absl::SimpleAtoi(stem.substr(n - 14, 5), &index)) {
      return {absl::StrCat(stem.substr(0, n - 15), stem.substr(n - 9)), index};
    }
  }
  return {relative, 1};
}

// The model in `dir` (a snapshot or a folder of one): `dir` itself when it holds config.json, else
// its one GGUF checkpoint below it (a single file, or the first split of a split set). `reference`
// is for messages.
absl::StatusOr<fs::path> ModelInDirectory(absl::string_view reference, const fs::path& dir) {
  if (IsRegularFile(dir / "config.json")) return dir;
  std::vector<std::string> files;
  ListEntries(
      dir, "", 0, /*recursive=*/true, EntryKind::kFile,
      [](const std::string& name) { return absl::EndsWith(name, ".gguf"); }, files);
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat("model '", reference, "': ", dir.string(),
                                            " in the Hugging Face cache holds neither config.json nor a .gguf file "
                                            "(only part of the repository was downloaded?)"));
  }
  // checkpoint -> its lowest-numbered file and how many files it has, in name order.
  std::vector<std::string> order;
  std::map<std::string, std::pair<std::pair<int, std::string>, int>> checkpoints;
  for (const std::string& file : files) {
    auto [checkpoint, index] = GgufCheckpoint(file);
    auto [it, added] = checkpoints.try_emplace(checkpoint, std::make_pair(index, file), 0);
    if (added) order.push_back(checkpoint);
    it->second.first = std::min(it->second.first, std::make_pair(index, file));
    ++it->second.second;
  }
  if (checkpoints.size() == 1) return dir / checkpoints.begin()->second.first.second;
  std::vector<std::string> listed;
  for (const std::string& checkpoint : order) {
    const auto& [first, count] = checkpoints.at(checkpoint);
    listed.push_back(count == 1 ? first.second : absl::StrCat(first.second, " (", count, " splits)"));
  }
  absl::string_view base = reference;
  while (!base.empty() && base.back() == '/') base.remove_suffix(1);
  return absl::InvalidArgumentError(absl::StrCat("model '", reference, "': ", dir.string(), " holds ",
                                                 checkpoints.size(), " GGUF checkpoints (", ListForMessage(listed),
                                                 "); name one as org/name[@revision]/FILE.gguf, e.g. '", base, "/",
                                                 checkpoints.at(order.front()).first.second, "'"));
}

}  // namespace

fs::path HuggingFaceHubCache() {
  std::string hf_home;
  if (std::optional<std::string> env = Env("HF_HOME"); env.has_value()) {
    hf_home = *env;
  } else {
    const std::string xdg = Env("XDG_CACHE_HOME").value_or(Join(ExpandUser("~"), ".cache"));
    hf_home = Join(xdg, "huggingface");
  }
  hf_home = ExpandVars(ExpandUser(hf_home));
  std::string cache;
  if (std::optional<std::string> env = Env("HF_HUB_CACHE"); env.has_value()) {
    cache = *env;
  } else if (std::optional<std::string> legacy = Env("HUGGINGFACE_HUB_CACHE"); legacy.has_value()) {
    cache = *legacy;
  } else {
    cache = Join(hf_home, "hub");
  }
  return fs::path(ExpandVars(ExpandUser(cache)));
}

absl::StatusOr<fs::path> ResolveModelPath(absl::string_view reference) {
  if (!reference.empty() && (Exists(fs::path(std::string(reference))) || !LooksLikeHubReference(reference))) {
    return fs::path(std::string(reference));
  }
  return ResolveModelPath(reference, HuggingFaceHubCache());
}

absl::StatusOr<fs::path> ResolveModelPath(absl::string_view reference, const fs::path& hub_cache) {
  if (reference.empty()) {
    return absl::InvalidArgumentError(
        "the model reference is empty: give a directory, a .gguf file or org/name[@revision]");
  }
  const fs::path as_path{std::string(reference)};
  if (Exists(as_path) || !LooksLikeHubReference(reference)) return as_path;
  ASSIGN_OR_RETURN(HubReference ref, ParseHubReference(reference));

  auto not_cached = [&](absl::string_view what) {
    return absl::NotFoundError(
        absl::StrCat("model '", reference, "' is not in the Hugging Face cache: ", what, " (", kNeverDownloads, ")"));
  };
  const fs::path repo = hub_cache / absl::StrCat("models--", ref.org, "--", ref.name);
  if (!IsDirectory(hub_cache)) {
    return not_cached(absl::StrCat("the cache directory ", hub_cache.string(), " does not exist, and no local path '",
                                   reference, "' either"));
  }
  if (!IsDirectory(repo)) {
    return not_cached(absl::StrCat(repo.string(), " does not exist, and no local path '", reference, "' either"));
  }

  std::string revision = "main";
  std::optional<std::string> commit;
  std::vector<std::string> inner = ref.path;
  if (!ref.has_revision) {
    ASSIGN_OR_RETURN(commit, LookUpRevision(repo, revision));
  } else {
    // The longest leading part that is a revision: branch names may hold '/', and PATH follows.
    for (size_t k = ref.after_at.size(); k >= 1 && !commit.has_value(); --k) {
      revision = absl::StrJoin(ref.after_at.begin(), ref.after_at.begin() + k, "/");
      ASSIGN_OR_RETURN(commit, LookUpRevision(repo, revision));
      if (commit.has_value()) inner.assign(ref.after_at.begin() + k, ref.after_at.end());
    }
    if (!commit.has_value()) revision = absl::StrJoin(ref.after_at, "/");
  }
  if (!commit.has_value()) {
    const std::string missing =
        ref.after_at.size() > 1
            ? absl::StrCat("neither '", revision, "' nor a leading part of it is a revision in ", repo.string())
        : IsCommitHash(revision) ? absl::StrCat((repo / "snapshots" / revision).string(), " does not exist")
                                 : absl::StrCat((repo / "refs" / revision).string(), " does not exist");
    return not_cached(absl::StrCat(missing, " (", CachedRevisions(repo), ")"));
  }
  const fs::path snapshot = repo / "snapshots" / *commit;
  if (!IsDirectory(snapshot)) {
    return not_cached(
        absl::StrCat("revision '", revision, "' is commit ", *commit, ", but ", snapshot.string(), " does not exist"));
  }
  fs::path target = snapshot;
  for (const std::string& part : inner) target /= part;
  if (IsRegularFile(target)) return target;
  if (!IsDirectory(target)) return not_cached(absl::StrCat(target.string(), " does not exist"));
  return ModelInDirectory(reference, target);
}

}  // namespace lesion
