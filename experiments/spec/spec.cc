#include "experiments/spec/spec.h"

#include <google/protobuf/util/json_util.h>
#include <openssl/sha.h>

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "proto/lesion/v1/experiment.pb.h"

namespace lesion::experiments::spec {
namespace {

template <typename T, typename R>
std::vector<T> ToVector(const R& repeated) {
  return std::vector<T>(repeated.begin(), repeated.end());
}

absl::Status Bad(absl::string_view where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
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

absl::StatusOr<Experiment> FromProto(const lesion::v1::ExperimentSpec& proto) {
  Experiment e;
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
    case lesion::v1::Dataset::SOURCE_NOT_SET:
      return Bad("dataset", "give one of text, token_ids or named");
  }
  const auto& eval = proto.eval();
  if (eval.seq_len() < 0 || eval.stride() < 0 || eval.max_windows() < 0 || eval.batch_size() < 0) {
    return Bad("eval", "seq_len, stride, max_windows and batch_size must not be negative");
  }
  e.seq_len = eval.seq_len();
  e.stride = eval.stride();
  e.max_windows = eval.max_windows();
  e.batch_size = eval.batch_size();
  e.add_bos = eval.add_bos();

  for (int i = 0; i < proto.interventions_size(); ++i) {
    const auto& in = proto.interventions(i);
    const std::string where = absl::StrCat("interventions[", i, "]");
    switch (in.kind_case()) {
      case lesion::v1::Intervention::kHeadAblation: {
        const auto& h = in.head_ablation();
        HeadAblation out{h.layer(), ToVector<int64_t>(h.heads()), static_cast<HeadAblation::Mode>(h.mode()),
                         h.factor()};
        if (out.heads.empty()) return Bad(where + ".head_ablation", "no heads");
        e.interventions.push_back(out);
        break;
      }
      case lesion::v1::Intervention::kWeightEdit: {
        const auto& w = in.weight_edit();
        e.interventions.push_back(WeightEdit{w.layer(), w.module(), w.row(), w.col(),
                                             static_cast<WeightEdit::Op>(w.op()), w.value()});
        break;
      }
      case lesion::v1::Intervention::kNormChannelReset: {
        const auto& n = in.norm_channel_reset();
        NormChannelReset out{n.layer(), n.norm(), ToVector<int64_t>(n.channels()),
                             static_cast<NormChannelReset::Mode>(n.mode()), n.value()};
        if (out.channels.empty()) return Bad(where + ".norm_channel_reset", "no channels");
        e.interventions.push_back(out);
        break;
      }
      case lesion::v1::Intervention::kAttentionBias: {
        const auto& a = in.attention_bias();
        e.interventions.push_back(AttentionBias{a.layer(), ToVector<float>(a.key()), ToVector<float>(a.value())});
        break;
      }
      case lesion::v1::Intervention::kActivationEdit: {
        const auto& a = in.activation_edit();
        e.interventions.push_back(ActivationEdit{a.site(), ToVector<int64_t>(a.positions()),
                                                 ToVector<int64_t>(a.dims()),
                                                 static_cast<ActivationEdit::Op>(a.op()), a.value()});
        break;
      }
      case lesion::v1::Intervention::KIND_NOT_SET:
        return Bad(where, "names no intervention kind");
    }
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
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(proto, &e.canonical_json, print);
  e.spec_sha256 = Sha256Hex(e.canonical_json);
  lesion::v1::ExperimentSpec baseline = proto;
  baseline.clear_name();
  baseline.clear_tags();
  baseline.clear_model();
  baseline.clear_interventions();
  std::string baseline_json;
  (void)google::protobuf::util::MessageToJsonString(baseline, &baseline_json, print);
  e.baseline_sha256 = Sha256Hex(baseline_json);
  return e;
}

}  // namespace

absl::StatusOr<Experiment> ParseExperimentJson(absl::string_view json) {
  lesion::v1::ExperimentSpec proto;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  options.case_insensitive_enum_parsing = true;
  auto parsed = google::protobuf::util::JsonStringToMessage(std::string(json), &proto, options);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("experiment spec is not valid: ", parsed.message().as_string()));
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

}  // namespace lesion::experiments::spec
