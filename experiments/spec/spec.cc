#include "experiments/spec/spec.h"

#include <google/protobuf/util/json_util.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
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
    const auto& m = proto.measurements(i);
    switch (m.kind_case()) {
      case lesion::v1::Measurement::kPerplexity:
        e.measurements.push_back(Perplexity{});
        break;
      case lesion::v1::Measurement::kActivationStats: {
        ActivationStats s{ToVector<std::string>(m.activation_stats().sites()), m.activation_stats().top_k()};
        if (s.top_k == 0) s.top_k = 3;
        if (s.sites.empty()) return Bad(absl::StrCat("measurements[", i, "].activation_stats"), "no sites");
        e.measurements.push_back(s);
        break;
      }
      case lesion::v1::Measurement::kAttentionSink:
        e.measurements.push_back(AttentionSink{ToVector<int64_t>(m.attention_sink().layers())});
        break;
      case lesion::v1::Measurement::KIND_NOT_SET:
        return Bad(absl::StrCat("measurements[", i, "]"), "names no measurement kind");
    }
  }
  if (e.measurements.empty()) return Bad("measurements", "ask for at least one measurement");
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(proto, &e.canonical_json, print);
  return e;
}

}  // namespace lesion::experiments::spec
