#include "common/job_payload.h"

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"

namespace sdfarm {

std::string JobPayload::ToJson() const {
  nlohmann::json items_json = nlohmann::json::array();
  for (const JobItem& it : items) {
    nlohmann::json item = {{"index", it.index},
                           {"file_name", it.file_name},
                           {"prompt", it.prompt},
                           {"negative_prompt", it.negative_prompt},
                           {"seed", it.seed},
                           {"guidance_scale", it.guidance_scale}};
    // SDXL fields, only when set.
    if (!it.prompt_2.empty()) item["prompt_2"] = it.prompt_2;
    if (!it.negative_prompt_2.empty()) item["negative_prompt_2"] = it.negative_prompt_2;
    auto pair = [&](const char* key, int a, int b) {
      if (a != 0 || b != 0) item[key] = {a, b};
    };
    pair("original_size", it.original_width, it.original_height);
    pair("crop_top_left", it.crop_top, it.crop_left);
    pair("target_size", it.target_width, it.target_height);
    pair("negative_original_size", it.negative_original_width, it.negative_original_height);
    pair("negative_crop_top_left", it.negative_crop_top, it.negative_crop_left);
    pair("negative_target_size", it.negative_target_width, it.negative_target_height);
    if (it.guidance_rescale != 0) item["guidance_rescale"] = it.guidance_rescale;
    items_json.push_back(std::move(item));
  }
  nlohmann::json j = {{"sweep_id", sweep_id}, {"job_index", job_index}, {"model", model},
                      {"width", width},       {"height", height},       {"steps", steps},
                      {"sampler", sampler},   {"items", std::move(items_json)}};
  if (!loras.empty()) {
    nlohmann::json l = nlohmann::json::array();
    for (const LoraUse& u : loras) l.push_back({{"name", u.name}, {"scale", u.scale}});
    j["loras"] = std::move(l);
  }
  if (!vae.empty()) j["vae"] = vae;
  if (prompt_chunking) j["prompt_chunking"] = true;
  return j.dump();
}

absl::StatusOr<JobPayload> JobPayload::FromJson(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("job payload is not a JSON object");
  try {
    JobPayload p;
    p.sweep_id = j.at("sweep_id").get<std::string>();
    p.job_index = j.at("job_index").get<int64_t>();
    p.model = j.at("model").get<std::string>();
    p.width = j.at("width").get<int>();
    p.height = j.at("height").get<int>();
    p.steps = j.at("steps").get<int>();
    p.sampler = j.at("sampler").get<std::string>();
    if (j.contains("loras")) {
      for (const auto& l : j.at("loras")) p.loras.push_back({l.at("name").get<std::string>(), l.at("scale").get<double>()});
    }
    if (j.contains("vae")) p.vae = j.at("vae").get<std::string>();
    if (j.contains("prompt_chunking")) p.prompt_chunking = j.at("prompt_chunking").get<bool>();
    for (const auto& it : j.at("items")) {
      JobItem item;
      item.index = it.at("index").get<int64_t>();
      item.file_name = it.at("file_name").get<std::string>();
      item.prompt = it.at("prompt").get<std::string>();
      item.negative_prompt = it.at("negative_prompt").get<std::string>();
      item.seed = it.at("seed").get<uint64_t>();
      item.guidance_scale = it.at("guidance_scale").get<double>();
      if (it.contains("prompt_2")) item.prompt_2 = it.at("prompt_2").get<std::string>();
      if (it.contains("negative_prompt_2")) item.negative_prompt_2 = it.at("negative_prompt_2").get<std::string>();
      auto pair = [&](const char* key, int* a, int* b) {
        if (!it.contains(key)) return;
        const auto& v = it.at(key);
        if (!v.is_array() || v.size() != 2) throw std::invalid_argument(std::string(key) + " must be [a, b]");
        *a = v.at(0).get<int>();
        *b = v.at(1).get<int>();
      };
      pair("original_size", &item.original_width, &item.original_height);
      pair("crop_top_left", &item.crop_top, &item.crop_left);
      pair("target_size", &item.target_width, &item.target_height);
      pair("negative_original_size", &item.negative_original_width, &item.negative_original_height);
      pair("negative_crop_top_left", &item.negative_crop_top, &item.negative_crop_left);
      pair("negative_target_size", &item.negative_target_width, &item.negative_target_height);
      if (it.contains("guidance_rescale")) item.guidance_rescale = it.at("guidance_rescale").get<double>();
      p.items.push_back(std::move(item));
    }
    if (p.items.empty()) return absl::InvalidArgumentError("job payload has no items");
    return p;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(std::string("bad job payload: ") + e.what());
  } catch (const std::invalid_argument& e) {
    return absl::InvalidArgumentError(std::string("bad job payload: ") + e.what());
  }
}

absl::StatusOr<std::pair<std::string, int64_t>> ParseJobId(const std::string& job_id) {
  const size_t slash = job_id.rfind('/');
  int64_t index = 0;
  if (slash == std::string::npos || slash == 0 || !absl::SimpleAtoi(job_id.substr(slash + 1), &index) || index < 0) {
    return absl::InvalidArgumentError("bad job id '" + job_id + "': want <sweep_id>/<job_index>");
  }
  return std::make_pair(job_id.substr(0, slash), index);
}

}  // namespace sdfarm
