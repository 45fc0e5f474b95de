// One metadata.jsonl row: what made one image of a sweep, as the coordinator
// records it next to the PNG (the format is in docs/farm.md, "metadata.jsonl").
//
//   RowContext ctx{.sweep_id = s.id, .sweep_name = s.name, .model = s.model, ...};
//   nlohmann::json row = MetadataRow(s.spec, item, *parsed_a1111_text, ctx);
//   ASSIGN_OR_RETURN(bool added, output->RecordImage(file_name, row));
//
// Every row has the keys of SD 1.x/2.x images (prompt ... parameters). Images
// of an SDXL model also record what else decided them, with diffusers'
// defaults filled in by the engine's own rule (engine::EffectiveSdxlSettings):
//   "prompt_2", "negative_prompt_2"          (default: prompt, negative_prompt)
//   "original_size", "target_size": "WxH"    (default: the image size)
//   "crop_top_left": "TOP,LEFT"
//   "negative_original_size", "negative_target_size", "negative_crop_top_left":
//                                            only when the sweep gives both negative sizes
//   "guidance_rescale"
// Rows of other models get "guidance_rescale" only when their sweep sets one
// other than 0, so a sweep that does not keeps exactly the rows it had.
#ifndef SDFARM_COORDINATOR_METADATA_ROW_H_
#define SDFARM_COORDINATOR_METADATA_ROW_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "coordinator/sweep_expander.h"
#include "coordinator/sweep_spec.h"
#include "worker/engine/a1111_parameters.h"

namespace sdfarm::coordinator {

// What a row records besides the item and its image's parameters.
struct RowContext {
  std::string sweep_id, sweep_name;
  std::string model;             // the name the sweep asked for
  int64_t job_index = 0;
  std::string worker;            // the worker id that rendered it
  bool sdxl = false;             // that worker's model is SDXL (WorkerInfo.sdxl)
  bool seeds_as_strings = false; // the sweep has a seed >= 2^63 (Arrow reads JSON integers as int64)
  double render_seconds = 0;
  int64_t prompt_tokens_dropped = 0;
  std::string parameters;        // the PNG's A1111 text, as embedded
};

// `params`: `ctx.parameters` parsed (hashes of the model, VAE and LoRAs).
nlohmann::json MetadataRow(const SweepSpec& spec, const Item& item, const engine::GenerationParameters& params,
                           const RowContext& ctx);

}  // namespace sdfarm::coordinator

#endif  // SDFARM_COORDINATOR_METADATA_ROW_H_
