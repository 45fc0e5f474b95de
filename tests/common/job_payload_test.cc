#include "common/job_payload.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace sdfarm {
namespace {

JobPayload Job() {
  JobPayload p;
  p.sweep_id = "s1";
  p.job_index = 3;
  p.model = "sd15";
  p.sampler = "euler_a";
  p.items = {{7, "07-seed7-cfg7.5.png", "a fox", "", 7, 7.5}};
  return p;
}

TEST(JobPayload, LorasAndVaeTravelAndAreAbsentWhenUnused) {
  JobPayload p = Job();
  const nlohmann::json plain = nlohmann::json::parse(p.ToJson());
  EXPECT_FALSE(plain.contains("loras"));
  EXPECT_FALSE(plain.contains("vae"));
  p.loras = {{"style", 0.5}, {"detail", -1}};
  p.vae = "vae-ft-mse";
  auto back = JobPayload::FromJson(p.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, p);
  // A payload written before LoRAs existed still reads.
  auto old = JobPayload::FromJson(Job().ToJson());
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_TRUE(old->loras.empty());
  EXPECT_TRUE(old->vae.empty());
}

}  // namespace
}  // namespace sdfarm
