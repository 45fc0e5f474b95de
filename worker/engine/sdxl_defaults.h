// SDXL's settings as StableDiffusionXLPipeline (diffusers 0.21.4) actually
// uses them once its defaults are filled in: prompt_2 = prompt,
// negative_prompt_2 = negative_prompt, original size = target size = the
// render size, and the negative micro-conditioning only when both negative
// sizes are given. One rule for everyone who states what made an image: the
// engine's conditioning (sdxl_conditioning.cc), its A1111 text and the farm's
// metadata.jsonl rows (coordinator/metadata_row.cc). No LibTorch.
//
//   EffectiveSdxl e = EffectiveSdxlSettings(item, /*width=*/1024, /*height=*/1024);
//   e.micro.original_width;   // 1024 when the item left it at 0
#ifndef SDFARM_WORKER_ENGINE_SDXL_DEFAULTS_H_
#define SDFARM_WORKER_ENGINE_SDXL_DEFAULTS_H_

#include <optional>
#include <string>

#include "worker/engine/engine.h"

namespace sdfarm::engine {

struct EffectiveSdxl {
  std::string prompt_2;           // text_encoder_2's prompt
  std::string negative_prompt_2;  // text_encoder_2's negative prompt (when the negative branch is encoded)
  MicroConditioning micro;        // no zero sizes
  // The negative rows' own micro-conditioning; nullopt: they use `micro`.
  std::optional<MicroConditioning> negative_micro;
};

// `micro` with zero sizes replaced by the render size.
MicroConditioning EffectiveMicro(const MicroConditioning& micro, int width, int height);
// Whether the negative_* micro-conditioning applies (both negative sizes given).
bool HasNegativeMicroConditioning(const RenderItem& item);
// `width` x `height`: the render size.
EffectiveSdxl EffectiveSdxlSettings(const RenderItem& item, int width, int height);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_SDXL_DEFAULTS_H_
