// The payload of one job in the Redis stream (coordinator/job_queue.h): what a
// worker needs to render a job and embed its parameters, as JSON.
//
//   {"sweep_id": "s1a2b3c4", "job_index": 12, "model": "sd15",
//    "width": 512, "height": 512, "steps": 30, "sampler": "euler_a",
//    "items": [{"index": 42, "file_name": "000042-seed7-cfg7.5.png",
//               "prompt": "a fox", "negative_prompt": "", "seed": 7,
//               "guidance_scale": 7.5}, ...]}
//
// Items share model, size, steps, sampler and LoRA set (SweepExpander never
// mixes them in a job). Optional fields, absent when unused:
//   "loras": [{"name": "style", "scale": 0.5}, ...]   by name: each worker finds
//            <name>.safetensors (or the folder <name>/) in its --lora-dir
//   "vae": "vae-ft-mse"                               likewise in its --vae-dir
//   "prompt_chunking": true                           A1111-style 75-token chunks
// and per item (SDXL; absent at their defaults): "prompt_2", "negative_prompt_2",
// "original_size" / "target_size" / "negative_original_size" /
// "negative_target_size" ([width, height]), "crop_top_left" /
// "negative_crop_top_left" ([top, left]), "guidance_rescale".
// job_id is "<sweep_id>/<job_index>".
#ifndef SDFARM_COMMON_JOB_PAYLOAD_H_
#define SDFARM_COMMON_JOB_PAYLOAD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sdfarm {

// One LoRA of a sweep or job: the name workers look up, and its strength.
struct LoraUse {
  std::string name;
  double scale = 1.0;
  friend bool operator==(const LoraUse&, const LoraUse&) = default;
};

struct JobItem {
  int64_t index = 0;       // item index in the sweep
  std::string file_name;   // where the coordinator stores it, e.g. "000042-seed7-cfg7.5.png"
  std::string prompt, negative_prompt;
  uint64_t seed = 0;
  double guidance_scale = 7.5;
  // SDXL (engine::RenderItem's fields; 0 sizes: the image size).
  std::string prompt_2, negative_prompt_2;
  int original_width = 0, original_height = 0, crop_top = 0, crop_left = 0, target_width = 0, target_height = 0;
  int negative_original_width = 0, negative_original_height = 0, negative_crop_top = 0, negative_crop_left = 0;
  int negative_target_width = 0, negative_target_height = 0;
  double guidance_rescale = 0;
};

struct JobPayload {
  std::string sweep_id;
  int64_t job_index = 0;
  std::string model;
  int width = 512, height = 512;
  int steps = 30;
  std::string sampler;  // sdfarm sampler name (engine::ParseSampler), e.g. "euler_a"
  std::vector<LoraUse> loras;
  std::string vae;      // empty: the worker's own
  bool prompt_chunking = false;  // A1111-style 75-token chunks (engine RenderRequest::prompt_chunking)
  std::vector<JobItem> items;

  std::string job_id() const { return sweep_id + "/" + std::to_string(job_index); }
  std::string ToJson() const;
  // InvalidArgument on malformed JSON, a missing or mistyped field, or no items.
  static absl::StatusOr<JobPayload> FromJson(const std::string& text);

  friend bool operator==(const JobPayload&, const JobPayload&) = default;
};
inline bool operator==(const JobItem& a, const JobItem& b) {
  return a.index == b.index && a.file_name == b.file_name && a.prompt == b.prompt &&
         a.negative_prompt == b.negative_prompt && a.seed == b.seed && a.guidance_scale == b.guidance_scale &&
         a.prompt_2 == b.prompt_2 && a.negative_prompt_2 == b.negative_prompt_2 &&
         a.original_width == b.original_width && a.original_height == b.original_height && a.crop_top == b.crop_top &&
         a.crop_left == b.crop_left && a.target_width == b.target_width && a.target_height == b.target_height &&
         a.negative_original_width == b.negative_original_width &&
         a.negative_original_height == b.negative_original_height && a.negative_crop_top == b.negative_crop_top &&
         a.negative_crop_left == b.negative_crop_left && a.negative_target_width == b.negative_target_width &&
         a.negative_target_height == b.negative_target_height && a.guidance_rescale == b.guidance_rescale;
}

// Splits "<sweep_id>/<job_index>"; InvalidArgument otherwise.
absl::StatusOr<std::pair<std::string, int64_t>> ParseJobId(const std::string& job_id);

}  // namespace sdfarm

#endif  // SDFARM_COMMON_JOB_PAYLOAD_H_
