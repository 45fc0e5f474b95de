// RETURN_IF_ERROR / ASSIGN_OR_RETURN work with absl::Status(Or) and with the
// engine's Status(Or) alike, return early on error and move values out.
#include "common/status_macros.h"

#include <gtest/gtest.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/engine/status.h"

namespace sdfarm {
namespace {

absl::StatusOr<std::unique_ptr<int>> MakeInt(int v) {
  if (v < 0) return absl::InvalidArgumentError("negative");
  return std::make_unique<int>(v);
}

absl::StatusOr<int> Twice(int v) {
  ASSIGN_OR_RETURN(std::unique_ptr<int> p, MakeInt(v));  // move-only values work
  return *p * 2;
}

absl::Status Check(int v) {
  RETURN_IF_ERROR(MakeInt(v).status());
  return absl::OkStatus();
}

engine::StatusOr<int> EngineTwice(engine::StatusOr<int> in) {
  ASSIGN_OR_RETURN(int v, std::move(in));
  RETURN_IF_ERROR(v > 100 ? engine::InvalidArgumentError("too big") : engine::OkStatus());
  return v * 2;
}

TEST(StatusMacros, AbslValuesFlowAndErrorsReturnEarly) {
  EXPECT_EQ(*Twice(21), 42);
  EXPECT_EQ(Twice(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Check(1).ok());
  EXPECT_EQ(Check(-1).message(), "negative");
}

TEST(StatusMacros, EngineStatusWorksTheSameWay) {
  EXPECT_EQ(*EngineTwice(21), 42);
  EXPECT_EQ(EngineTwice(engine::NotFoundError("x")).status().code(), engine::StatusCode::kNotFound);
  EXPECT_EQ(EngineTwice(101).status().message(), "too big");
}

TEST(StatusMacros, EngineCodesConvertToAbslCodes) {
  // The engine's codes are absl's numbers, so the worker converts with a cast.
  const engine::Status s = engine::ResourceExhaustedError("CUDA out of memory");
  const absl::Status a(static_cast<absl::StatusCode>(s.code()), s.message());
  EXPECT_EQ(a.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(static_cast<int>(engine::StatusCode::kDataLoss), static_cast<int>(absl::StatusCode::kDataLoss));
  EXPECT_EQ(static_cast<int>(engine::StatusCode::kUnavailable), static_cast<int>(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace sdfarm
