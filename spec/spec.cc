#include "spec/spec.h"

#include <google/protobuf/util/json_util.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/error_text.h"
#include "common/status_macros.h"
#include "proto/lesion/v1/experiment.pb.h"

namespace lesion::spec {
namespace {

template <typename T, typename R>
std::vector<T> ToVector(const R& repeated) {
  return std::vector<T>(repeated.begin(), repeated.end());
}

absl::Status Bad(absl::string_view where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

// A number that enters the forward pass: finite, and small enough that the products and norms
// after it stay finite in float32.
absl::Status CheckMagnitude(absl::string_view where, absl::string_view field, double value) {
  if (!std::isfinite(value)) return Bad(where, absl::StrCat(field, " ", value, " is not a finite number"));
  if (std::fabs(value) > kMaxInterventionMagnitude) {
    return Bad(where, absl::StrCat(field, " ", value, " is larger in magnitude than the limit of ",
                                   kMaxInterventionMagnitude, " (it would overflow float32 in the forward pass)"));
  }
  return absl::OkStatus();
}

// An enum field's number: proto3 enums are open, so binary and JSON specs may hold any int32.
absl::Status CheckEnum(absl::string_view where, absl::string_view field, int value,
                       const google::protobuf::EnumDescriptor* d) {
  if (d->FindValueByNumber(value) != nullptr) return absl::OkStatus();
  std::vector<std::string> names;
  for (int i = 0; i < d->value_count(); ++i) names.push_back(d->value(i)->name());
  return Bad(where, absl::StrCat("unknown ", field, " ", value, " (known: ", absl::StrJoin(names, ", "), ")"));
}

absl::Status CheckThreshold(absl::string_view where, absl::string_view field, double value) {
  if (!std::isfinite(value) || value < 0) {
    return Bad(where, absl::StrCat(field, " must be a finite number >= 0, got ", value));
  }
  return absl::OkStatus();
}

absl::StatusOr<Measurement> FromProto(const lesion::v1::Measurement& m, absl::string_view where) {
  switch (m.kind_case()) {
    case lesion::v1::Measurement::kPerplexity:
      return Perplexity{};
    case lesion::v1::Measurement::kActivationStats: {
      ActivationStats s{ToVector<std::string>(m.activation_stats().sites()), m.activation_stats().top_k()};
      if (s.top_k == 0) s.top_k = 3;
      if (s.top_k < 0) return Bad(absl::StrCat(where, ".activation_stats"), "top_k must be positive");
      if (s.sites.empty()) return Bad(absl::StrCat(where, ".activation_stats"), "no sites");
      return s;
    }
    case lesion::v1::Measurement::kAttentionSink:
      return AttentionSink{ToVector<int64_t>(m.attention_sink().layers())};
    case lesion::v1::Measurement::kTokenProbabilities: {
      const auto& t = m.token_probabilities();
      TokenProbabilities out{ToVector<int32_t>(t.token_ids()), ToVector<std::string>(t.tokens())};
      if (out.token_ids.empty() && out.tokens.empty()) {
        return Bad(absl::StrCat(where, ".token_probabilities"), "give token_ids or tokens");
      }
      return out;
    }
    case lesion::v1::Measurement::kKlDivergence:
      return KlDivergence{};
    case lesion::v1::Measurement::kTokenOutputs: {
      const auto& t = m.token_outputs();
      const std::string at = absl::StrCat(where, ".token_outputs");
      TokenOutputs out;
      if (t.top_k() != 0) out.top_k = t.top_k();
      if (t.max_tokens() != 0) out.max_tokens = t.max_tokens();
      out.offset = t.offset();
      if (out.top_k < 0 || out.top_k > kMaxTokenOutputsTopK) {
        return Bad(at, absl::StrCat("top_k must be in 1..", kMaxTokenOutputsTopK, ", got ", out.top_k));
      }
      if (out.max_tokens < 0 || out.max_tokens > kMaxTokenOutputsTokens) {
        return Bad(at, absl::StrCat("max_tokens must be in 1..", kMaxTokenOutputsTokens, ", got ", out.max_tokens,
                                    " (page through more with offset)"));
      }
      if (out.offset < 0) return Bad(at, absl::StrCat("offset must be >= 0, got ", out.offset));
      return out;
    }
    case lesion::v1::Measurement::kCapture: {
      const auto& c = m.capture();
      Capture out{ToVector<std::string>(c.sites()), ToVector<int64_t>(c.positions()), c.max_windows()};
      const std::string at = absl::StrCat(where, ".capture");
      if (out.sites.empty()) return Bad(at, "no sites");
      if (out.max_windows == 0) out.max_windows = 1;
      if (out.max_windows < 0) return Bad(at, absl::StrCat("max_windows must be positive, got ", out.max_windows));
      for (int64_t p : out.positions) {
        if (p < 0) return Bad(at, absl::StrCat("position ", p, " is negative"));
      }
      return out;
    }
    case lesion::v1::Measurement::kMassiveActivations: {
      const auto& d = m.massive_activations();
      const std::string at = absl::StrCat(where, ".massive_activations");
      MassiveActivations out;
      if (d.sites_size() > 0) {
        out.sites = ToVector<std::string>(d.sites());
      } else {
        out.sites = {"blocks.*.resid_post"};
      }
      if (d.min_magnitude() != 0) out.min_magnitude = d.min_magnitude();
      if (d.min_ratio() != 0) out.min_ratio = d.min_ratio();
      if (d.max_reports() != 0) out.max_reports = d.max_reports();
      RETURN_IF_ERROR(CheckThreshold(at, "min_magnitude", out.min_magnitude));
      RETURN_IF_ERROR(CheckThreshold(at, "min_ratio", out.min_ratio));
      if (out.max_reports < 0) return Bad(at, "max_reports must be positive");
      return out;
    }
    case lesion::v1::Measurement::kSuperWeights: {
      const auto& d = m.super_weights();
      const std::string at = absl::StrCat(where, ".super_weights");
      SuperWeights out;
      if (d.min_ratio() != 0) out.min_ratio = d.min_ratio();
      out.min_magnitude = d.min_magnitude();
      RETURN_IF_ERROR(CheckThreshold(at, "min_ratio", out.min_ratio));
      RETURN_IF_ERROR(CheckThreshold(at, "min_magnitude", out.min_magnitude));
      return out;
    }
    case lesion::v1::Measurement::kNormOutliers: {
      const auto& d = m.norm_outliers();
      const std::string at = absl::StrCat(where, ".norm_outliers");
      NormOutliers out;
      if (d.min_z() != 0) out.min_z = d.min_z();
      if (d.max_reports() != 0) out.max_reports = d.max_reports();
      RETURN_IF_ERROR(CheckThreshold(at, "min_z", out.min_z));
      if (out.max_reports < 0) return Bad(at, "max_reports must be positive");
      return out;
    }
    case lesion::v1::Measurement::kAttentionOutliers: {
      const auto& d = m.attention_outliers();
      const std::string at = absl::StrCat(where, ".attention_outliers");
      AttentionOutliers out;
      out.layers = ToVector<int64_t>(d.layers());
      if (d.min_mass() != 0) out.min_mass = d.min_mass();
      if (d.max_reports() != 0) out.max_reports = d.max_reports();
      RETURN_IF_ERROR(CheckThreshold(at, "min_mass", out.min_mass));
      if (out.min_mass > 1) return Bad(at, absl::StrCat("min_mass is a probability, got ", out.min_mass));
      if (out.max_reports < 0) return Bad(at, "max_reports must be positive");
      return out;
    }
    case lesion::v1::Measurement::KIND_NOT_SET:
      break;
  }
  return Bad(where, "names no measurement kind");
}

absl::StatusOr<Intervention> FromProto(const lesion::v1::Intervention& in, const std::string& where) {
  namespace pb = lesion::v1;
  switch (in.kind_case()) {
    case pb::Intervention::kHeadAblation: {
      const auto& h = in.head_ablation();
      const std::string at = where + ".head_ablation";
      RETURN_IF_ERROR(CheckEnum(at, "mode", h.mode(), pb::HeadAblation::Mode_descriptor()));
      RETURN_IF_ERROR(CheckMagnitude(at, "factor", h.factor()));
      HeadAblation out{h.layer(), ToVector<int64_t>(h.heads()), static_cast<HeadAblation::Mode>(h.mode()), h.factor()};
      if (out.heads.empty()) return Bad(at, "no heads");
      return out;
    }
    case pb::Intervention::kWeightEdit: {
      const auto& w = in.weight_edit();
      const std::string at = where + ".weight_edit";
      RETURN_IF_ERROR(CheckEnum(at, "op", w.op(), pb::WeightEdit::Op_descriptor()));
      RETURN_IF_ERROR(CheckMagnitude(at, "value", w.value()));
      return WeightEdit{w.layer(), w.module(), w.row(), w.col(), static_cast<WeightEdit::Op>(w.op()), w.value()};
    }
    case pb::Intervention::kNormChannelReset: {
      const auto& n = in.norm_channel_reset();
      const std::string at = where + ".norm_channel_reset";
      RETURN_IF_ERROR(CheckEnum(at, "mode", n.mode(), pb::NormChannelReset::Mode_descriptor()));
      RETURN_IF_ERROR(CheckMagnitude(at, "value", n.value()));
      NormChannelReset out{n.layer(), n.norm(), ToVector<int64_t>(n.channels()),
                           static_cast<NormChannelReset::Mode>(n.mode()), n.value()};
      if (out.channels.empty()) return Bad(at, "no channels");
      return out;
    }
    case pb::Intervention::kAttentionBias: {
      const auto& a = in.attention_bias();
      const std::string at = where + ".attention_bias";
      for (int i = 0; i < a.key_size(); ++i) {
        RETURN_IF_ERROR(CheckMagnitude(at, absl::StrCat("key[", i, "]"), a.key(i)));
      }
      for (int i = 0; i < a.value_size(); ++i) {
        RETURN_IF_ERROR(CheckMagnitude(at, absl::StrCat("value[", i, "]"), a.value(i)));
      }
      return AttentionBias{a.layer(), ToVector<float>(a.key()), ToVector<float>(a.value())};
    }
    case pb::Intervention::kActivationEdit: {
      const auto& a = in.activation_edit();
      const std::string at = where + ".activation_edit";
      RETURN_IF_ERROR(CheckEnum(at, "op", a.op(), pb::ActivationEdit::Op_descriptor()));
      RETURN_IF_ERROR(CheckMagnitude(at, "value", a.value()));
      for (int i = 0; i < a.vector_size(); ++i) {
        RETURN_IF_ERROR(CheckMagnitude(at, absl::StrCat("vector[", i, "]"), a.vector(i)));
      }
      ActivationEdit out{a.site(),
                         ToVector<int64_t>(a.positions()),
                         ToVector<int64_t>(a.dims()),
                         static_cast<ActivationEdit::Op>(a.op()),
                         a.value(),
                         ToVector<float>(a.vector())};
      const bool takes_vector = out.op == ActivationEdit::Op::kAdd || out.op == ActivationEdit::Op::kProjectOut ||
                                out.op == ActivationEdit::Op::kSetVectors;
      if (takes_vector && out.vector.empty()) {
        return Bad(at, absl::StrCat("op ", pb::ActivationEdit::Op_Name(a.op()), " needs a vector"));
      }
      if (!takes_vector && !out.vector.empty()) {
        return Bad(at, absl::StrCat("op ", pb::ActivationEdit::Op_Name(a.op()),
                                    " takes no vector (only ADD, PROJECT_OUT and SET_VECTORS do)"));
      }
      return out;
    }
    case pb::Intervention::KIND_NOT_SET:
      break;
  }
  return Bad(where, "names no intervention kind");
}

// What of a sweep's axes can be checked without the model: enums, numbers, and the interventions
// of listed variants (ExpandSweep checks each variant again as the spec it becomes).
absl::Status CheckSweepAxis(const lesion::v1::SweepAxis& axis, const std::string& where) {
  namespace pb = lesion::v1;
  switch (axis.kind_case()) {
    case pb::SweepAxis::kVariants: {
      const auto& list = axis.variants().variants();
      for (int i = 0; i < list.size(); ++i) {
        for (int j = 0; j < list[i].interventions_size(); ++j) {
          RETURN_IF_ERROR(FromProto(list[i].interventions(j),
                                    absl::StrCat(where, ".variants.variants[", i, "].interventions[", j, "]"))
                              .status());
        }
      }
      return absl::OkStatus();
    }
    case pb::SweepAxis::kHeads: {
      const std::string at = where + ".heads";
      RETURN_IF_ERROR(CheckEnum(at, "mode", axis.heads().mode(), pb::HeadAblation::Mode_descriptor()));
      return CheckMagnitude(at, "factor", axis.heads().factor());
    }
    case pb::SweepAxis::kNormChannels: {
      const std::string at = where + ".norm_channels";
      RETURN_IF_ERROR(CheckEnum(at, "mode", axis.norm_channels().mode(), pb::NormChannelReset::Mode_descriptor()));
      return CheckMagnitude(at, "value", axis.norm_channels().value());
    }
    case pb::SweepAxis::kWeightValues: {
      const auto& w = axis.weight_values();
      const std::string at = where + ".weight_values";
      RETURN_IF_ERROR(CheckEnum(at, "op", w.op(), pb::WeightEdit::Op_descriptor()));
      for (int i = 0; i < w.values_size(); ++i) {
        RETURN_IF_ERROR(CheckMagnitude(at, absl::StrCat("values[", i, "]"), w.values(i)));
      }
      return absl::OkStatus();
    }
    case pb::SweepAxis::KIND_NOT_SET:
      break;
  }
  return Bad(where, "names no axis kind (variants, heads, norm_channels, weight_values)");
}

// Replaces every -0.0 (double or float, at any depth) by +0.0. The JSON printer writes -0.0 as
// "-0", which the JSON parser reads back as +0.0, so a spec holding one would have a canonical JSON
// that does not hash as itself once re-read (a sweep variant rerun alone, say). Zero's sign changes
// no result of the forward pass, so +0.0 is the canonical zero.
void CanonicalizeZeros(google::protobuf::Message& m) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Reflection& r = *m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r.ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const int n = f->is_repeated() ? r.FieldSize(m, f) : 1;
    for (int i = 0; i < n; ++i) {
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_DOUBLE:
          if (f->is_repeated() ? r.GetRepeatedDouble(m, f, i) == 0 : r.GetDouble(m, f) == 0) {
            f->is_repeated() ? r.SetRepeatedDouble(&m, f, i, 0.0) : r.SetDouble(&m, f, 0.0);
          }
          break;
        case FieldDescriptor::CPPTYPE_FLOAT:
          if (f->is_repeated() ? r.GetRepeatedFloat(m, f, i) == 0 : r.GetFloat(m, f) == 0) {
            f->is_repeated() ? r.SetRepeatedFloat(&m, f, i, 0.0f) : r.SetFloat(&m, f, 0.0f);
          }
          break;
        case FieldDescriptor::CPPTYPE_MESSAGE:
          CanonicalizeZeros(f->is_repeated() ? *r.MutableRepeatedMessage(&m, f, i) : *r.MutableMessage(&m, f));
          break;
        default:
          break;
      }
    }
  }
}

absl::StatusOr<Experiment> FromProto(lesion::v1::ExperimentSpec proto) {
  CanonicalizeZeros(proto);
  Experiment e;
  if (proto.name().size() > kMaxNameBytes) {
    return Bad("name",
               absl::StrCat(QuoteForError(proto.name()), " is longer than the limit of ", kMaxNameBytes, " bytes"));
  }
  if (proto.tags_size() > kMaxTags) {
    return Bad("tags", absl::StrCat(proto.tags_size(), " tags, more than the limit of ", kMaxTags));
  }
  for (int i = 0; i < proto.tags_size(); ++i) {
    if (proto.tags(i).size() > kMaxTagBytes) {
      return Bad(absl::StrCat("tags[", i, "]"),
                 absl::StrCat(QuoteForError(proto.tags(i)), " is longer than the limit of ", kMaxTagBytes, " bytes"));
    }
  }
  e.name = proto.name();
  e.tags = ToVector<std::string>(proto.tags());
  e.model = proto.model();
  switch (proto.dataset().source_case()) {
    case lesion::v1::Dataset::kText:
      e.text = proto.dataset().text();
      if (e.text.empty()) return Bad("dataset.text", "is empty");
      break;
    case lesion::v1::Dataset::kTokenIds:
      e.token_ids = ToVector<int32_t>(proto.dataset().token_ids().ids());
      if (e.token_ids.size() < 2) return Bad("dataset.token_ids", "needs at least 2 ids");
      break;
    case lesion::v1::Dataset::kNamed:
      e.named_dataset = proto.dataset().named();
      break;
    case lesion::v1::Dataset::kPrompts: {
      const auto& prompts = proto.dataset().prompts().prompts();
      if (prompts.empty()) return Bad("dataset.prompts", "give at least one prompt");
      if (prompts.size() > kMaxPrompts) {
        return Bad("dataset.prompts", absl::StrCat(prompts.size(), " prompts, more than the limit of ", kMaxPrompts));
      }
      for (int i = 0; i < prompts.size(); ++i) {
        const std::string where = absl::StrCat("dataset.prompts.prompts[", i, "]");
        Prompt prompt;
        switch (prompts[i].source_case()) {
          case lesion::v1::Dataset::Prompt::kText:
            if (prompts[i].text().empty()) return Bad(where, "text is empty");
            prompt.text = prompts[i].text();
            break;
          case lesion::v1::Dataset::Prompt::kTokenIds:
            if (prompts[i].token_ids().ids().empty()) return Bad(where, "token_ids is empty");
            prompt.token_ids = ToVector<int32_t>(prompts[i].token_ids().ids());
            break;
          case lesion::v1::Dataset::Prompt::SOURCE_NOT_SET:
            return Bad(where, "give text or token_ids");
        }
        e.prompts.push_back(std::move(prompt));
      }
      break;
    }
    case lesion::v1::Dataset::SOURCE_NOT_SET:
      return Bad("dataset", "give one of text, token_ids, named or prompts");
  }
  const auto& eval = proto.eval();
  if (eval.seq_len() < 0 || eval.stride() < 0 || eval.max_windows() < 0 || eval.batch_size() < 0) {
    return Bad("eval", "seq_len, stride, max_windows and batch_size must not be negative");
  }
  if (!e.prompts.empty() && eval.stride() != 0) {
    return Bad("eval.stride", "a prompt set is one window per prompt: leave stride 0");
  }
  e.seq_len = eval.seq_len();
  e.stride = eval.stride();
  e.max_windows = eval.max_windows();
  e.batch_size = eval.batch_size();
  e.add_bos = eval.add_bos();

  for (int i = 0; i < proto.interventions_size(); ++i) {
    ASSIGN_OR_RETURN(Intervention in, FromProto(proto.interventions(i), absl::StrCat("interventions[", i, "]")));
    e.interventions.push_back(std::move(in));
  }
  for (int i = 0; i < proto.measurements_size(); ++i) {
    ASSIGN_OR_RETURN(Measurement m, FromProto(proto.measurements(i), absl::StrCat("measurements[", i, "]")));
    // Measurements that are one table per experiment cannot be asked for twice.
    for (const Measurement& earlier : e.measurements) {
      if (earlier.index() == m.index() && !std::holds_alternative<ActivationStats>(m) &&
          !std::holds_alternative<Capture>(m) && !std::holds_alternative<MassiveActivations>(m)) {
        return Bad(absl::StrCat("measurements[", i, "]"), "this measurement is asked for twice");
      }
    }
    e.measurements.push_back(std::move(m));
  }
  if (e.measurements.empty()) return Bad("measurements", "ask for at least one measurement");
  if (proto.has_sweep()) {
    if (proto.sweep().axes_size() == 0) return Bad("sweep", "give at least one axis");
    if (proto.sweep().variants_per_pass() < 0) return Bad("sweep.variants_per_pass", "must not be negative");
    for (int i = 0; i < proto.sweep().axes_size(); ++i) {
      RETURN_IF_ERROR(CheckSweepAxis(proto.sweep().axes(i), absl::StrCat("sweep.axes[", i, "]")));
    }
    e.has_sweep = true;
    e.variants_per_pass = proto.sweep().variants_per_pass();
  }
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(proto, &e.canonical_json, print);
  e.spec_sha256 = Sha256Hex(e.canonical_json);
  lesion::v1::ExperimentSpec baseline = proto;
  baseline.clear_name();
  baseline.clear_tags();
  baseline.clear_model();
  baseline.clear_interventions();
  baseline.clear_sweep();
  std::string baseline_json;
  (void)google::protobuf::util::MessageToJsonString(baseline, &baseline_json, print);
  e.baseline_sha256 = Sha256Hex(baseline_json);
  return e;
}

// One choice on a sweep axis: its name and the interventions it adds.
struct Choice {
  std::string name;
  std::vector<lesion::v1::Intervention> interventions;
};

// Indices given, or 0 .. limit - 1; each checked against the limit.
absl::StatusOr<std::vector<int64_t>> IndicesOrAll(const google::protobuf::RepeatedField<int32_t>& given, int64_t limit,
                                                  absl::string_view where, absl::string_view what,
                                                  absl::string_view model_has) {
  std::vector<int64_t> out;
  if (given.empty()) {
    for (int64_t i = 0; i < limit; ++i) out.push_back(i);
  }
  for (int32_t i : given) {
    if (i < 0 || i >= limit) {
      return Bad(where, absl::StrCat(what, " ", i, " out of range: the model has ", limit, " ", model_has));
    }
    out.push_back(i);
  }
  return out;
}

absl::StatusOr<std::vector<Choice>> AxisChoices(const lesion::v1::SweepAxis& axis, const ModelShape& shape,
                                                const std::string& where) {
  std::vector<Choice> out;
  switch (axis.kind_case()) {
    case lesion::v1::SweepAxis::kVariants: {
      const auto& list = axis.variants().variants();
      for (int i = 0; i < list.size(); ++i) {
        Choice c{list[i].name().empty() ? absl::StrCat("v", i) : list[i].name(), {}};
        c.interventions.assign(list[i].interventions().begin(), list[i].interventions().end());
        out.push_back(std::move(c));
      }
      break;
    }
    case lesion::v1::SweepAxis::kHeads: {
      const auto& h = axis.heads();
      ASSIGN_OR_RETURN(auto layers, IndicesOrAll(h.layers(), shape.n_layers, where + ".heads", "layer", "layers"));
      ASSIGN_OR_RETURN(auto heads, IndicesOrAll(h.heads(), shape.n_heads, where + ".heads", "head", "heads per layer"));
      for (int64_t l : layers) {
        for (int64_t head : heads) {
          Choice c{absl::StrCat("L", l, ".H", head), {lesion::v1::Intervention()}};
          auto* a = c.interventions[0].mutable_head_ablation();
          a->set_layer(static_cast<int32_t>(l));
          a->add_heads(static_cast<int32_t>(head));
          a->set_mode(h.mode());
          a->set_factor(h.factor());
          out.push_back(std::move(c));
        }
      }
      break;
    }
    case lesion::v1::SweepAxis::kNormChannels: {
      const auto& n = axis.norm_channels();
      const std::string at = where + ".norm_channels";
      // Which of the norms a model has is checked when the spec is bound to it.
      static constexpr absl::string_view kNormNames[] = {
#define LESION_NORM(enumerator, name) name,
#include "common/model_names.def"
      };
      if (std::find(std::begin(kNormNames), std::end(kNormNames), n.norm()) == std::end(kNormNames)) {
        return Bad(at, absl::StrCat("unknown norm ", QuoteForError(n.norm()),
                                    " (known: ", absl::StrJoin(kNormNames, ", "), ")"));
      }
      std::vector<int64_t> layers = {0};
      if (n.norm() == "final" && n.layers_size() > 0) {
        return Bad(at, "the final norm has no layers: leave layers empty");
      }
      if (n.norm() != "final") {
        ASSIGN_OR_RETURN(layers, IndicesOrAll(n.layers(), shape.n_layers, at, "layer", "layers"));
      }
      ASSIGN_OR_RETURN(auto channels, IndicesOrAll(n.channels(), shape.d_model, at, "channel", "channels"));
      for (int64_t l : layers) {
        for (int64_t ch : channels) {
          Choice c{n.norm() == "final" ? absl::StrCat("final.C", ch) : absl::StrCat(n.norm(), ".L", l, ".C", ch),
                   {lesion::v1::Intervention()}};
          auto* r = c.interventions[0].mutable_norm_channel_reset();
          r->set_layer(static_cast<int32_t>(l));
          r->set_norm(n.norm());
          r->add_channels(static_cast<int32_t>(ch));
          r->set_mode(n.mode());
          r->set_value(n.value());
          out.push_back(std::move(c));
        }
      }
      break;
    }
    case lesion::v1::SweepAxis::kWeightValues: {
      const auto& w = axis.weight_values();
      const std::string at = where + ".weight_values";
      std::vector<double> values(w.values().begin(), w.values().end());
      if (w.op() == lesion::v1::WeightEdit::ZERO) {
        if (!values.empty()) return Bad(at, "op ZERO takes no values");
        values = {0.0};
      }
      if (values.empty()) return Bad(at, "give the values to sweep");
      for (double v : values) {
        if (!std::isfinite(v)) return Bad(at, absl::StrCat("value ", v, " is not finite"));
        std::string name = w.op() == lesion::v1::WeightEdit::ZERO    ? "zero"
                           : w.op() == lesion::v1::WeightEdit::SCALE ? absl::StrCat("x", v)
                                                                     : absl::StrCat("=", v);
        Choice c{std::move(name), {lesion::v1::Intervention()}};
        auto* e = c.interventions[0].mutable_weight_edit();
        e->set_layer(w.layer());
        e->set_module(w.module());
        e->set_row(w.row());
        e->set_col(w.col());
        e->set_op(w.op());
        e->set_value(v);
        out.push_back(std::move(c));
      }
      break;
    }
    case lesion::v1::SweepAxis::KIND_NOT_SET:
      return Bad(where, "names no axis kind (variants, heads, norm_channels, weight_values)");
  }
  if (out.empty()) return Bad(where, "has no variants");
  std::set<std::string> names;
  for (const Choice& c : out) {
    if (!names.insert(c.name).second) {
      return Bad(where, absl::StrCat("two variants are named ", QuoteForError(c.name), ": names must be unique"));
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<Experiment>> ExpandSweep(const Experiment& parent, const ModelShape& shape,
                                                    int64_t max_variants, int64_t max_spec_bytes) {
  if (!parent.has_sweep) return absl::FailedPreconditionError("the spec has no sweep");
  lesion::v1::ExperimentSpec proto;
  google::protobuf::util::JsonParseOptions options;
  if (auto parsed = google::protobuf::util::JsonStringToMessage(parent.canonical_json, &proto, options); !parsed.ok()) {
    return absl::InternalError(absl::StrCat("re-reading a canonical spec: ", parsed.message().as_string()));
  }
  std::vector<std::vector<Choice>> axes;
  std::vector<std::string> sizes;
  int64_t total = 1;
  for (int i = 0; i < proto.sweep().axes_size(); ++i) {
    ASSIGN_OR_RETURN(auto choices, AxisChoices(proto.sweep().axes(i), shape, absl::StrCat("sweep.axes[", i, "]")));
    sizes.push_back(absl::StrCat(choices.size()));
    total = std::min<int64_t>(total * static_cast<int64_t>(choices.size()), int64_t{1} << 40);  // no overflow
    axes.push_back(std::move(choices));
  }
  if (total > max_variants) {
    return Bad("sweep",
               absl::StrCat("the axes make ", absl::StrJoin(sizes, " x "), " = ", total,
                            " variants, more than the limit of ", max_variants, " (lesiond --max-sweep-variants)"));
  }
  lesion::v1::ExperimentSpec base = proto;
  base.clear_sweep();
  // Every variant carries the parent's spec without its sweep (dataset included) and its own
  // interventions (a patching vector can be large): refuse before building them. A choice of axis
  // a is in total / |a| variants.
  if (max_spec_bytes > 0) {
    google::protobuf::util::JsonPrintOptions print;
    print.preserve_proto_field_names = true;
    std::string base_json;
    (void)google::protobuf::util::MessageToJsonString(base, &base_json, print);
    const int64_t base_bytes = static_cast<int64_t>(base_json.size());
    int64_t bytes = total * base_bytes;
    for (const std::vector<Choice>& axis : axes) {
      int64_t axis_bytes = 0;
      for (const Choice& c : axis) {
        for (const lesion::v1::Intervention& in : c.interventions) {
          std::string json;
          (void)google::protobuf::util::MessageToJsonString(in, &json, print);
          axis_bytes += static_cast<int64_t>(json.size());
        }
      }
      bytes += axis_bytes * (total / static_cast<int64_t>(axis.size()));
    }
    if (bytes > max_spec_bytes) {
      return Bad("sweep",
                 absl::StrCat(total, " variants of a ", base_bytes, "-byte spec with their interventions take ",
                              bytes >> 20, " MiB, more than ", max_spec_bytes >> 20,
                              " MiB: every variant carries the dataset (use a named dataset) and its own "
                              "interventions; split the sweep"));
    }
  }
  std::vector<Experiment> out;
  out.reserve(static_cast<size_t>(total));
  std::vector<size_t> pick(axes.size(), 0);
  for (int64_t n = 0; n < total; ++n) {
    lesion::v1::ExperimentSpec child = base;
    std::string name;
    for (size_t a = 0; a < axes.size(); ++a) {
      const Choice& c = axes[a][pick[a]];
      absl::StrAppend(&name, a == 0 ? "" : "+", c.name);
      for (const auto& in : c.interventions) *child.add_interventions() = in;
    }
    child.set_name(parent.name.empty() ? name : absl::StrCat(parent.name, "/", name));
    absl::StatusOr<Experiment> e = FromProto(child);
    if (!e.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sweep variant ", n, " (", ClipForError(name), "): ", e.status().message()));
    }
    e->variant_name = name;
    out.push_back(*std::move(e));
    for (size_t a = axes.size(); a-- > 0;) {  // the last axis varies fastest
      if (++pick[a] < axes[a].size()) break;
      pick[a] = 0;
    }
  }
  return out;
}

absl::StatusOr<Experiment> ParseExperimentJson(absl::string_view json) {
  lesion::v1::ExperimentSpec proto;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  options.case_insensitive_enum_parsing = true;
  auto parsed = google::protobuf::util::JsonStringToMessage(std::string(json), &proto, options);
  if (!parsed.ok()) {
    // The parser's message may quote the input (an unknown field's name, a bad value).
    return absl::InvalidArgumentError(
        absl::StrCat("experiment spec is not valid: ", ClipForError(parsed.message().as_string(), 1024)));
  }
  return FromProto(proto);
}

std::string Sha256Hex(absl::string_view bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  std::string hex;
  for (unsigned char c : digest) absl::StrAppendFormat(&hex, "%02x", c);
  return hex;
}

absl::StatusOr<Experiment> ParseExperimentProto(absl::string_view serialized) {
  lesion::v1::ExperimentSpec proto;
  if (!proto.ParseFromArray(serialized.data(), static_cast<int>(serialized.size()))) {
    return absl::InvalidArgumentError("experiment spec is not a valid serialized lesion.v1.ExperimentSpec");
  }
  return FromProto(proto);
}

}  // namespace lesion::spec
