// metadata.jsonl rows (see metadata_row.h).
#include "coordinator/metadata_row.h"

#include <map>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "worker/engine/engine.h"
#include "worker/engine/sdxl_defaults.h"

namespace sdfarm::coordinator {
namespace {

// "loras": the item's LoRAs with the hash each image's parameters carry
// (A1111's "Lora hashes: "name: hash, ...""), so a row names the exact files
// that made it.
nlohmann::json LorasRow(const std::vector<LoraUse>& loras, const engine::GenerationParameters& params) {
  std::map<std::string, std::string> hashes;
  for (const auto& [key, value] : params.extra) {
    if (key != "Lora hashes") continue;
    for (absl::string_view entry : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      const size_t colon = entry.find(':');
      if (colon == absl::string_view::npos) continue;
      hashes[std::string(absl::StripAsciiWhitespace(entry.substr(0, colon)))] =
          std::string(absl::StripAsciiWhitespace(entry.substr(colon + 1)));
    }
  }
  nlohmann::json rows = nlohmann::json::array();
  for (const LoraUse& l : loras) {
    auto it = hashes.find(l.name);
    rows.push_back({{"name", l.name}, {"scale", l.scale}, {"hash", it == hashes.end() ? "" : it->second}});
  }
  return rows;
}

// The item as the engine receives it (worker/farm/renderer.cc's RenderItemFor
// of its job item), for the engine's rule of defaults.
engine::RenderItem AsRenderItem(const Item& item) {
  engine::RenderItem r;
  r.prompt = item.prompt;
  r.negative_prompt = item.negative_prompt;
  r.prompt_2 = item.prompt_2;
  r.negative_prompt_2 = item.negative_prompt_2;
  r.micro = {item.original_size.width, item.original_size.height, item.crop_top_left.top,
             item.crop_top_left.left,  item.target_size.width,   item.target_size.height};
  r.negative_micro = {item.negative_original_size.width, item.negative_original_size.height,
                      item.negative_crop_top_left.top,    item.negative_crop_top_left.left,
                      item.negative_target_size.width,   item.negative_target_size.height};
  return r;
}

// The spec's formats: "WxH" and "TOP,LEFT".
std::string SizeText(int width, int height) { return absl::StrCat(width, "x", height); }
std::string CropText(int top, int left) { return absl::StrCat(top, ",", left); }

}  // namespace

nlohmann::json MetadataRow(const SweepSpec& spec, const Item& item, const engine::GenerationParameters& params,
                           const RowContext& ctx) {
  nlohmann::json row = {{"prompt", item.prompt},
                        {"negative_prompt", item.negative_prompt},
                        {"seed", ctx.seeds_as_strings ? nlohmann::json(std::to_string(item.seed))
                                                      : nlohmann::json(item.seed)},
                        {"guidance_scale", item.guidance_scale},
                        {"steps", item.steps},
                        {"sampler", item.sampler},
                        {"width", item.width},
                        {"height", item.height},
                        {"model", ctx.model},
                        {"model_hash", params.model_hash},
                        {"vae", params.vae},
                        {"vae_hash", params.vae_hash},
                        {"loras", LorasRow(item.loras, params)},
                        {"sweep_id", ctx.sweep_id},
                        {"sweep", ctx.sweep_name},
                        {"item_index", item.index},
                        {"job_index", ctx.job_index},
                        {"worker", ctx.worker},
                        {"render_seconds", ctx.render_seconds},
                        {"prompt_tokens_dropped", ctx.prompt_tokens_dropped},
                        {"parameters", ctx.parameters}};
  const bool sweep_rescales = spec.guidance_rescales != std::vector<double>{0};
  if (ctx.sdxl || sweep_rescales) row["guidance_rescale"] = item.guidance_rescale;
  if (!ctx.sdxl) return row;
  const engine::EffectiveSdxl e = engine::EffectiveSdxlSettings(AsRenderItem(item), item.width, item.height);
  row["prompt_2"] = e.prompt_2;
  row["negative_prompt_2"] = e.negative_prompt_2;
  row["original_size"] = SizeText(e.micro.original_width, e.micro.original_height);
  row["crop_top_left"] = CropText(e.micro.crop_top, e.micro.crop_left);
  row["target_size"] = SizeText(e.micro.target_width, e.micro.target_height);
  if (e.negative_micro) {
    row["negative_original_size"] = SizeText(e.negative_micro->original_width, e.negative_micro->original_height);
    row["negative_crop_top_left"] = CropText(e.negative_micro->crop_top, e.negative_micro->crop_left);
    row["negative_target_size"] = SizeText(e.negative_micro->target_width, e.negative_micro->target_height);
  }
  return row;
}

}  // namespace sdfarm::coordinator
