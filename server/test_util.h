// Helpers shared by the server's tests: a spec the FakeEngine accepts and a temporary database.
#ifndef LESION_SERVER_TEST_UTIL_H_
#define LESION_SERVER_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "proto/lesion/v1/experiment.pb.h"

namespace lesion::server::testing_util {

inline lesion::v1::ExperimentSpec TinySpec(const std::string& model = "tiny",
                                           const std::string& text = "Once upon a time") {
  lesion::v1::ExperimentSpec spec;
  spec.set_name("prune");
  spec.add_tags("sinks");
  spec.set_model(model);
  spec.mutable_dataset()->set_text(text);
  auto* ablation = spec.add_interventions()->mutable_head_ablation();
  ablation->set_layer(1);
  ablation->add_heads(0);
  spec.add_measurements()->mutable_perplexity();
  return spec;
}

// Every single-head ablation of `model` as a sweep (2 layers x 2 heads on the FakeEngine's "tiny").
inline lesion::v1::ExperimentSpec TinySweep(const std::string& model = "tiny") {
  lesion::v1::ExperimentSpec spec = TinySpec(model);
  spec.set_name("heads");
  spec.clear_interventions();
  spec.mutable_sweep()->add_axes()->mutable_heads();
  return spec;
}

// A fresh directory for the current test, removed at the start of the next run.
inline std::filesystem::path TestDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      (std::string("lesion_") + info->test_suite_name() + "_" + info->name() + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace lesion::server::testing_util

#endif  // LESION_SERVER_TEST_UTIL_H_
