#include "client/cpp/local_commands.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/cpp/result_format.h"
#include "common/error_text.h"
#include "common/file_util.h"
#include "common/model_path.h"
#include "common/status_macros.h"
#include "experiments/generation.h"
#include "experiments/runner.h"
#include "experiments/sweep.h"
#include "model/generation.h"
#include "model/hook_sites.h"
#include "model/llama2c_converter.h"
#include "model/model.h"
#include "model/perplexity.h"
#include "model/tensor_io.h"
#include "model/torch_util.h"
#include "nlohmann/json.hpp"
#include "spec/spec.h"

namespace lesion::cli {
namespace {

namespace ex = ::lesion::experiments;
using Json = nlohmann::json;

absl::StatusOr<model::LoadOptions> ReadLoadOptions(Args& args) {
  model::LoadOptions options;
  if (auto dtype = args.Get("dtype"); dtype.has_value()) {
    ASSIGN_OR_RETURN(options.dtype, model::ParseDtype(*dtype));
  }
  if (auto device = args.Get("device"); device.has_value()) {
    ASSIGN_OR_RETURN(options.device, model::ParseDevice(*device));
  }
  return options;
}

// --model: a directory, a .gguf file, or org/name[@revision][/FILE] in the local Hugging Face
// cache (common/model_path.h), as the path to load.
absl::StatusOr<std::string> RequireModelPath(Args& args) {
  ASSIGN_OR_RETURN(std::string reference, args.Require("model"));
  ASSIGN_OR_RETURN(std::filesystem::path path, ResolveModelPath(reference));
  return path.string();
}

absl::StatusOr<std::unique_ptr<model::Model>> LoadModel(Args& args) {
  ASSIGN_OR_RETURN(std::string dir, RequireModelPath(args));
  ASSIGN_OR_RETURN(model::LoadOptions options, ReadLoadOptions(args));
  // --tf32: float32 matrix products on TF32 tensor cores, for this whole (one-command) process.
  if (args.Flag("tf32")) model::AllowTf32();
  return model::Model::Load(dir, options);
}

std::string ReadStdin() {
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

// A JSON list of ids, or a list of equal-length lists (a batch).
absl::StatusOr<std::vector<std::vector<int32_t>>> ParseIdsJson(absl::string_view text, absl::string_view source) {
  Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](absl::string_view why) { return absl::InvalidArgumentError(absl::StrCat(source, ": ", why)); };
  if (json.is_discarded()) return bad("not valid JSON");
  if (!json.is_array() || json.empty()) return bad("must be a non-empty list of token ids or of lists");
  std::vector<std::vector<int32_t>> batch;
  auto parse_row = [&](const Json& row) -> absl::StatusOr<std::vector<int32_t>> {
    std::vector<int32_t> ids;
    for (const Json& v : row) {
      if (!v.is_number_integer()) return bad(absl::StrCat("token ids must be integers, got ", v.dump()));
      const int64_t id = v.get<int64_t>();
      if (id < 0 || id > INT32_MAX) return bad(absl::StrCat("token id ", id, " out of range"));
      ids.push_back(static_cast<int32_t>(id));
    }
    if (ids.empty()) return bad("a sequence of token ids is empty");
    return ids;
  };
  if (json[0].is_array()) {
    for (const Json& row : json) {
      if (!row.is_array()) return bad("mixes lists and ids");
      ASSIGN_OR_RETURN(std::vector<int32_t> ids, parse_row(row));
      if (!batch.empty() && ids.size() != batch[0].size()) {
        return bad(absl::StrCat("batch rows must have equal length (", batch[0].size(), " vs ", ids.size(), ")"));
      }
      batch.push_back(std::move(ids));
    }
  } else {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, parse_row(json));
    batch.push_back(std::move(ids));
  }
  return batch;
}

// Token ids from --ids-json FILE, --text T or --text-file F (tokenized with the model's tokenizer),
// with BOS prepended to each sequence when `add_bos`.
absl::StatusOr<std::vector<std::vector<int32_t>>> ReadInputIds(Args& args, const model::Model& model, bool add_bos) {
  const auto ids_json = args.Get("ids-json");
  const auto text = args.Get("text");
  const auto text_file = args.Get("text-file");
  if (ids_json.has_value() + text.has_value() + text_file.has_value() != 1) {
    return absl::InvalidArgumentError("give exactly one of --ids-json FILE, --text T, --text-file F");
  }
  if (ids_json.has_value()) {
    ASSIGN_OR_RETURN(std::string json_text, ReadFile(*ids_json));
    ASSIGN_OR_RETURN(auto batch, ParseIdsJson(json_text, *ids_json));
    if (add_bos) {
      if (!model.bos_id().has_value()) return absl::FailedPreconditionError("the model has no BOS token");
      for (auto& row : batch) row.insert(row.begin(), *model.bos_id());
    }
    return batch;
  }
  std::string content;
  if (text.has_value()) {
    content = *text;
  } else {
    ASSIGN_OR_RETURN(content, ReadFile(*text_file));
  }
  ASSIGN_OR_RETURN(const model::Tokenizer* tokenizer, model.RequireTokenizer());
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(content));
  if (add_bos) {
    if (!model.bos_id().has_value()) return absl::FailedPreconditionError("the model has no BOS token");
    ids.insert(ids.begin(), *model.bos_id());
  }
  if (ids.empty()) return absl::InvalidArgumentError("the text encodes to no tokens");
  return std::vector<std::vector<int32_t>>{std::move(ids)};
}

absl::StatusOr<at::Tensor> ToTensor(const std::vector<std::vector<int32_t>>& batch) {
  return model::TorchCall("building the id tensor", [&] {
    at::Tensor t = at::empty({static_cast<int64_t>(batch.size()), static_cast<int64_t>(batch[0].size())},
                             at::kLong);  // [b, s]
    auto a = t.accessor<int64_t, 2>();
    for (size_t i = 0; i < batch.size(); ++i) {
      for (size_t j = 0; j < batch[i].size(); ++j) a[i][j] = batch[i][j];
    }
    return t;
  });
}

std::string RopeDescription(const model::ModelConfig& c) {
  if (!c.rope.has_value()) return "learned positions";
  auto describe = [](const model::RopeConfig& rope) {
    std::string s = absl::StrCat("theta ", rope.theta);
    if (rope.scaling == model::RopeScaling::kLinear) absl::StrAppend(&s, ", linear x", rope.factor);
    if (rope.scaling == model::RopeScaling::kLlama3) absl::StrAppend(&s, ", llama3 x", rope.factor);
    return s;
  };
  std::string s = absl::StrCat("rotary, ", describe(*c.rope));
  if (c.sliding_rope.has_value()) absl::StrAppend(&s, "; sliding layers ", describe(*c.sliding_rope));
  if (c.rotary_dim != 0 && c.rotary_dim != c.head_dim) {
    absl::StrAppend(&s, "; partial: ", c.rotary_dim, " of ", c.head_dim, " dims");
  }
  return s;
}

}  // namespace

absl::Status RunInspect(Args& args) {
  ASSIGN_OR_RETURN(std::string dir, RequireModelPath(args));
  const bool json = args.Flag("json");
  const bool list_tensors = args.Flag("tensors");
  RETURN_IF_ERROR(args.CheckAllUsed());
  ASSIGN_OR_RETURN(model::OpenedCheckpoint checkpoint, model::OpenCheckpoint(dir));
  const model::ModelConfig& c = checkpoint.config;
  const model::CheckpointSummary summary = model::SummarizeCheckpoint(*checkpoint.tensors);
  const absl::StatusOr<std::unique_ptr<model::Tokenizer>>& tokenizer = checkpoint.tokenizer;
  const std::string tokenizer_kind = tokenizer.ok() ? std::string((*tokenizer)->kind())
                                     : absl::IsNotFound(tokenizer.status())
                                         ? std::string("none")
                                         : absl::StrCat("unreadable: ", tokenizer.status().message());
  const int64_t n_params = c.n_params();
  if (json) {
    Json tensors = Json::array();
    for (const model::CheckpointSummary::Tensor& t : summary.tensors) {
      tensors.push_back({{"name", t.name}, {"type", t.storage_type}, {"shape", t.shape}});
    }
    Json metadata = Json::object();
    for (const auto& [key, value] : checkpoint.metadata) metadata[key] = value;
    Json out = {{"architecture", c.architecture},
                {"family", std::string(model::FamilyName(c.family))},
                {"n_layers", c.n_layers},
                {"n_heads", c.n_heads},
                {"n_kv_heads", c.n_kv_heads},
                {"d_model", c.d_model},
                {"head_dim", c.head_dim},
                {"d_ffn", c.d_ffn},
                {"vocab_size", c.vocab_size},
                {"max_position_embeddings", c.max_position_embeddings},
                {"n_params", n_params},
                {"n_params_in_files", summary.n_params},
                {"dtype", summary.dtype},
                {"format", summary.format},
                {"dequantized_from", summary.dequantized_from},
                {"tied_embeddings", c.tied_embeddings},
                {"positions", RopeDescription(c)},
                {"tokenizer", tokenizer_kind},
                {"files", summary.n_files},
                {"bytes", summary.n_bytes},
                {"path", checkpoint.path.string()},
                {"tensors", tensors}};
    if (!checkpoint.metadata.empty()) out["metadata"] = metadata;
    std::cout << out.dump(2) << "\n";
    return absl::OkStatus();
  }
  std::cout << absl::StrFormat(
      "model         %s\n"
      "architecture  %s (%s family)\n"
      "layers        %d\n"
      "heads         %d query, %d key/value, head_dim %d\n"
      "d_model       %d\n"
      "d_ffn         %d (%s)\n"
      "vocab         %d (%s tokenizer)\n"
      "positions     %s, up to %d\n"
      "parameters    %d (%.2f M)%s\n"
      "dtype         %s, %d %s file(s), %.1f MB\n",
      checkpoint.path.string(), c.architecture, model::FamilyName(c.family), c.n_layers, c.n_heads, c.n_kv_heads,
      c.head_dim, c.d_model, c.d_ffn, c.gated_mlp ? "gated" : "plain", c.vocab_size, tokenizer_kind, RopeDescription(c),
      c.max_position_embeddings, n_params, n_params / 1e6, c.tied_embeddings ? ", tied embeddings" : "", summary.dtype,
      summary.n_files, summary.format, summary.n_bytes / 1e6);
  if (!summary.dequantized_from.empty()) std::cout << "weights       " << summary.dequantized_from << "\n";
  if (list_tensors) {
    std::cout << "\ntensors (Hugging Face names, as stored)\n";
    for (const model::CheckpointSummary::Tensor& t : summary.tensors) {
      std::cout << absl::StrFormat("  %-50s %-5s [%s]\n", t.name, t.storage_type, absl::StrJoin(t.shape, ", "));
    }
  }
  return absl::OkStatus();
}

absl::Status RunTokenize(Args& args) {
  ASSIGN_OR_RETURN(std::string dir, RequireModelPath(args));
  std::optional<std::string> text = args.Get("text");
  std::optional<std::string> text_file = args.Get("text-file");
  const bool add_bos = args.Flag("add-bos");
  const bool decode = args.Flag("decode");
  RETURN_IF_ERROR(args.CheckAllUsed());
  ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tokenizer, model::LoadCheckpointTokenizer(dir));
  std::string input;
  if (text.has_value()) {
    input = *text;
  } else if (text_file.has_value()) {
    ASSIGN_OR_RETURN(input, ReadFile(*text_file));
  } else {
    input = ReadStdin();
  }
  if (decode) {  // ids JSON in, text out
    ASSIGN_OR_RETURN(auto batch, ParseIdsJson(input, "ids on input"));
    ASSIGN_OR_RETURN(std::string out, tokenizer->Decode(batch[0]));
    std::cout << out << "\n";
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(input));
  if (add_bos) {
    if (!tokenizer->bos_id().has_value()) {
      return absl::FailedPreconditionError("the tokenizer has no BOS token");
    }
    ids.insert(ids.begin(), *tokenizer->bos_id());
  }
  std::cout << Json(ids).dump() << "\n";
  return absl::OkStatus();
}

namespace {

// Bundled datasets: $LESION_DATA_DIR, else where the build put them.
std::filesystem::path DataDir() {
  if (const char* env = std::getenv("LESION_DATA_DIR")) return env;
  return LESION_DEFAULT_DATA_DIR;
}

// `lesion dump --prompts-json FILE`: a prompt set's activations, each site [prompts, positions,
// ...] zero-padded past each prompt's length, with the lengths as a tensor "lengths". Runs as an
// observational experiment capturing every prompt, so that it is what lesiond's Client.cache gives.
absl::Status DumpPromptSet(Args& args, const std::string& prompts_path, const std::string& sites_text,
                           const std::string& out_path, bool add_bos) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(prompts_path));
  Json prompts = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (prompts.is_discarded() || !prompts.is_array() || prompts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prompts_path, ": must be a non-empty JSON list of prompts (texts, or lists of token ids)"));
  }
  Json items = Json::array();
  for (const Json& p : prompts) {
    items.push_back(p.is_string() ? Json{{"text", p}} : Json{{"token_ids", {{"ids", p}}}});
  }
  Json sites = Json::array();
  for (absl::string_view site : absl::StrSplit(sites_text, ',', absl::SkipEmpty())) sites.push_back(site);
  const Json spec = {
      {"dataset", {{"prompts", {{"prompts", items}}}}},
      {"eval", {{"add_bos", add_bos}}},
      {"measurements", Json::array({{{"capture", {{"sites", sites}, {"max_windows", prompts.size()}}}}})}};
  absl::StatusOr<spec::Experiment> e = spec::ParseExperimentJson(spec.dump());
  if (!e.ok()) return absl::InvalidArgumentError(absl::StrCat(prompts_path, ": ", e.status().message()));
  ASSIGN_OR_RETURN(std::unique_ptr<model::Model> model, LoadModel(args));
  RETURN_IF_ERROR(args.CheckAllUsed());
  ASSIGN_OR_RETURN(result::Experiment result, experiments::RunExperiment(*model, *e, DataDir()));
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  RETURN_IF_ERROR(model::TorchCall("decoding captures", [&] {
    for (const result::Tensor& t : result.baseline.captures) {
      at::Tensor data = at::empty(t.shape, at::kFloat);
      std::memcpy(data.data_ptr(), t.data.data(), t.data.size());
      tensors.emplace_back(t.name, data);
    }
    std::vector<int64_t> lengths;
    for (const result::PromptResult& row : result.baseline.prompts) lengths.push_back(row.length);
    tensors.emplace_back("lengths", at::tensor(lengths, at::kLong).to(at::kFloat));
  }));
  RETURN_IF_ERROR(model::SaveTensorsAsFloat32(out_path, tensors));
  std::cerr << "wrote " << tensors.size() - 1 << " tensor(s) and the lengths of " << prompts.size() << " prompts to "
            << out_path << "\n";
  return absl::OkStatus();
}

}  // namespace

absl::Status RunDump(Args& args) {
  ASSIGN_OR_RETURN(std::string sites_text, args.Require("sites"));
  ASSIGN_OR_RETURN(std::string out_path, args.Require("out"));
  const bool add_bos = args.Flag("add-bos");
  if (const std::optional<std::string> prompts = args.Get("prompts-json"); prompts.has_value()) {
    if (args.Get("text") || args.Get("text-file") || args.Get("ids-json")) {
      return absl::InvalidArgumentError("give --prompts-json or one of --text, --text-file, --ids-json, not both");
    }
    return DumpPromptSet(args, *prompts, sites_text, out_path, add_bos);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<model::Model> model, LoadModel(args));
  ASSIGN_OR_RETURN(auto batch, ReadInputIds(args, *model, add_bos));
  RETURN_IF_ERROR(args.CheckAllUsed());
  const model::ModelConfig& c = model->config();
  ASSIGN_OR_RETURN(std::vector<model::SiteId> sites, model::ParseSiteList(sites_text, c.n_layers));
  ASSIGN_OR_RETURN(at::Tensor ids, ToTensor(batch));

  std::vector<std::pair<std::string, at::Tensor>> captured;
  model::RunPlan plan(c.n_layers);
  for (const model::SiteId& site : sites) {
    plan.AddHook(site, [&captured](const model::SiteId& s, at::Tensor& value) {
      captured.emplace_back(s.Name(), value.detach().to(at::kCPU, at::kFloat).clone());
    });
  }
  ASSIGN_OR_RETURN(at::Tensor logits, model->transformer().Forward(ids, plan));
  // Keep the order the user asked for.
  std::vector<std::pair<std::string, at::Tensor>> ordered;
  for (const model::SiteId& site : sites) {
    for (auto& [name, t] : captured) {
      if (name == site.Name()) ordered.emplace_back(name, t);
    }
  }
  RETURN_IF_ERROR(model::SaveTensorsAsFloat32(out_path, ordered));
  std::cerr << "wrote " << ordered.size() << " tensor(s) for " << batch.size() << " x " << batch[0].size()
            << " tokens to " << out_path << "\n";
  return absl::OkStatus();
}

absl::Status RunPerplexity(Args& args) {
  model::PerplexityOptions options;
  ASSIGN_OR_RETURN(std::optional<int64_t> seq_len, args.GetInt("seq-len"));
  ASSIGN_OR_RETURN(options.stride, args.GetInt("stride"));
  ASSIGN_OR_RETURN(std::optional<int64_t> batch_size, args.GetInt("batch-size"));
  ASSIGN_OR_RETURN(options.max_windows, args.GetInt("max-windows"));
  options.add_bos = args.Flag("add-bos");  // BOS per window, not once for the text
  const bool json = args.Flag("json");
  ASSIGN_OR_RETURN(std::unique_ptr<model::Model> model, LoadModel(args));
  ASSIGN_OR_RETURN(auto batch, ReadInputIds(args, *model, /*add_bos=*/false));
  RETURN_IF_ERROR(args.CheckAllUsed());
  options.seq_len = seq_len.value_or(std::min<int64_t>(model->config().max_position_embeddings, 1024));
  if (batch_size.has_value()) options.batch_size = *batch_size;
  std::vector<int32_t> ids;
  for (const auto& row : batch) ids.insert(ids.end(), row.begin(), row.end());
  ASSIGN_OR_RETURN(model::PerplexityResult r,
                   model::EvaluatePerplexity(model->transformer(), ids, options, model->bos_id(),
                                             model::RunPlan(model->config().n_layers)));
  if (json) {
    std::cout << Json({{"ppl", r.ppl},
                       {"mean_nll", r.mean_nll},
                       {"n_tokens", r.n_tokens},
                       {"n_windows", r.n_windows},
                       {"protocol", r.protocol}})
                     .dump()
              << "\n";
  } else {
    std::cout << absl::StrFormat("perplexity %.4f  (mean NLL %.5f nats over %d predicted tokens, %d windows; %s)\n",
                                 r.ppl, r.mean_nll, r.n_tokens, r.n_windows, r.protocol);
  }
  return absl::OkStatus();
}

namespace {

// The interventions of a spec file for `lesion generate`: its "interventions" list, checked by the
// spec parser (the rest of the file, dataset and measurements, does not apply to generation).
absl::StatusOr<std::vector<spec::Intervention>> ReadInterventions(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  Json wrapped = {{"dataset", {{"token_ids", {{"ids", {0, 0}}}}}},
                  {"interventions", json.value("interventions", Json::array())},
                  {"measurements", Json::array({{{"perplexity", Json::object()}}})}};
  absl::StatusOr<spec::Experiment> e = spec::ParseExperimentJson(wrapped.dump());
  if (!e.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.status().message()));
  return e->interventions;
}

absl::StatusOr<double> GetDouble(Args& args, const std::string& name, double fallback) {
  const std::optional<std::string> text = args.Get(name);
  if (!text.has_value()) return fallback;
  double value = 0;
  if (!absl::SimpleAtod(*text, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " takes a number, got ", QuoteForError(*text)));
  }
  return value;
}

}  // namespace

absl::Status RunGenerate(Args& args) {
  const std::optional<std::string> prompt = args.Get("prompt");
  const std::optional<std::string> ids_json = args.Get("ids-json");
  const std::optional<std::string> spec_path = args.Get("spec");
  ASSIGN_OR_RETURN(std::optional<int64_t> max_tokens, args.GetInt("max-tokens"));
  ASSIGN_OR_RETURN(std::optional<int64_t> top_k, args.GetInt("top-k"));
  ASSIGN_OR_RETURN(std::optional<int64_t> seed, args.GetInt("seed"));
  ASSIGN_OR_RETURN(double temperature, GetDouble(args, "temperature", 0));
  const bool json = args.Flag("json");
  const bool no_baseline = args.Flag("no-baseline");
  if (prompt.has_value() && ids_json.has_value()) {
    return absl::InvalidArgumentError("give --prompt T or --ids-json FILE, not both");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<model::Model> model, LoadModel(args));
  RETURN_IF_ERROR(args.CheckAllUsed());
  std::vector<spec::Intervention> interventions;
  if (spec_path.has_value()) {
    ASSIGN_OR_RETURN(interventions, ReadInterventions(*spec_path));
  }
  if (no_baseline && interventions.empty()) {
    return absl::InvalidArgumentError("--no-baseline needs interventions (--spec FILE): there would be nothing to run");
  }
  std::vector<int32_t> ids;
  if (ids_json.has_value()) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(*ids_json));
    ASSIGN_OR_RETURN(auto batch, ParseIdsJson(text, *ids_json));
    if (batch.size() != 1) return absl::InvalidArgumentError(absl::StrCat(*ids_json, ": give one sequence"));
    ids = batch[0];
  } else {
    ASSIGN_OR_RETURN(const model::Tokenizer* tokenizer, model->RequireTokenizer());
    if (model->bos_id().has_value()) ids.push_back(*model->bos_id());
    ASSIGN_OR_RETURN(std::vector<int32_t> prompt_ids, tokenizer->Encode(prompt.value_or("")));
    ids.insert(ids.end(), prompt_ids.begin(), prompt_ids.end());
  }
  if (ids.empty()) return absl::InvalidArgumentError("empty prompt and the model has no BOS token");
  model::GenerationOptions options;
  options.max_new_tokens = max_tokens.value_or(64);
  options.temperature = temperature;
  options.top_k = top_k.value_or(0);
  options.seed = static_cast<uint64_t>(seed.value_or(0));
  options.stop_id = model->config().eos_token_id;
  ex::GenerationControls controls;
  controls.baseline = !no_baseline;
  ASSIGN_OR_RETURN(ex::GenerationRun run, ex::GenerateSideBySide(*model, interventions, ids, options, controls));

  const model::Tokenizer* tokenizer = model->tokenizer();
  auto text_of = [&](const std::vector<int32_t>& tokens) -> std::string {
    if (tokenizer == nullptr) return "";
    absl::StatusOr<std::string> text = tokenizer->Decode(tokens);
    return text.ok() ? *text : "";
  };
  // The prompt's text without the BOS the tokenizer would not print.
  std::vector<int32_t> prompt_text_ids = ids;
  if (!ids_json.has_value() && model->bos_id().has_value()) prompt_text_ids.erase(prompt_text_ids.begin());
  if (json) {
    Json out = {{"prompt_ids", ids}};
    if (tokenizer != nullptr) out["prompt"] = text_of(prompt_text_ids);
    auto put = [&](const char* name, const model::Generated& g) {
      Json part = {{"ids", g.tokens}, {"logprobs", g.logprobs}};
      if (tokenizer != nullptr) part["text"] = text_of(g.tokens);
      out[name] = part;
    };
    if (run.has_baseline) {
      put("baseline", run.baseline);
      // The form of a plain generation since the first release: the new ids, and the prompt's
      // text with its continuation.
      out["generated_ids"] = run.baseline.tokens;
      if (tokenizer != nullptr) {
        std::vector<int32_t> all = prompt_text_ids;
        all.insert(all.end(), run.baseline.tokens.begin(), run.baseline.tokens.end());
        out["text"] = text_of(all);
      }
    }
    if (run.has_intervened) put("intervened", run.intervened);
    std::cout << out.dump() << "\n";
    return absl::OkStatus();
  }
  auto shown = [&](const model::Generated& g) {
    return tokenizer != nullptr ? text_of(g.tokens) : absl::StrJoin(g.tokens, " ");
  };
  if (!run.has_intervened) {  // as before: the prompt and its continuation
    std::vector<int32_t> all = prompt_text_ids;
    all.insert(all.end(), run.baseline.tokens.begin(), run.baseline.tokens.end());
    std::cout << (tokenizer != nullptr ? text_of(all) : absl::StrJoin(all, " ")) << "\n";
    return absl::OkStatus();
  }
  std::cout << "prompt:     " << (tokenizer != nullptr ? text_of(prompt_text_ids) : absl::StrJoin(ids, " ")) << "\n";
  if (run.has_baseline) std::cout << "baseline:   " << shown(run.baseline) << "\n";
  std::cout << "intervened: " << shown(run.intervened) << "\n";
  return absl::OkStatus();
}

absl::Status RunConvertLlama2c(Args& args) {
  ASSIGN_OR_RETURN(std::string checkpoint, args.Require("checkpoint"));
  ASSIGN_OR_RETURN(std::string tokenizer, args.Require("tokenizer"));
  ASSIGN_OR_RETURN(std::string out, args.Require("out"));
  RETURN_IF_ERROR(args.CheckAllUsed());
  RETURN_IF_ERROR(model::ConvertLlama2cCheckpoint(checkpoint, tokenizer, out));
  std::cerr << "wrote a Hugging Face LLaMA directory to " << out << "\n";
  return absl::OkStatus();
}

absl::Status RunLocalExperiment(Args& args) {
  if (!args.Flag("local")) {
    return absl::InvalidArgumentError(
        "this runs a spec in-process: use `lesion run --local --model DIR --spec FILE`, or drop --local "
        "to run it on a server (--server ADDRESS)");
  }
  ASSIGN_OR_RETURN(std::string spec_path, args.Require("spec"));
  const bool json = args.Flag("json");
  ASSIGN_OR_RETURN(std::unique_ptr<model::Model> model, LoadModel(args));
  RETURN_IF_ERROR(args.CheckAllUsed());
  ASSIGN_OR_RETURN(std::string spec_text, ReadFile(spec_path));
  absl::StatusOr<spec::Experiment> experiment = spec::ParseExperimentJson(spec_text);
  if (!experiment.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(spec_path, ": ", experiment.status().message()));
  }
  if (experiment->has_sweep) {
    const model::ModelConfig& c = model->config();
    ex::RunLimits limits;
    ASSIGN_OR_RETURN(std::vector<spec::Experiment> variants,
                     spec::ExpandSweep(*experiment, {c.n_layers, c.n_heads, c.d_model}, limits.max_sweep_variants));
    std::vector<result::Experiment> results(variants.size());
    ex::SweepControls controls;
    controls.on_variant = [&](int64_t i, result::Experiment r) { results[i] = std::move(r); };
    if (!json && isatty(fileno(stderr))) {
      controls.progress = [](int64_t done, int64_t planned) {
        std::cerr << "\r" << done << " / " << planned << " forward passes" << (done == planned ? "\n" : "")
                  << std::flush;
      };
    }
    ASSIGN_OR_RETURN(result::Experiment parent,
                     ex::RunSweep(*model, *experiment, variants, DataDir(), controls, limits));
    std::cout << RenderSweep(parent, results, *experiment, json);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(result::Experiment result, ex::RunExperiment(*model, *experiment, DataDir()));
  std::cout << RenderResult(result, *experiment, json);
  return absl::OkStatus();
}

}  // namespace lesion::cli
