// diffusers' SDXL defaults, filled in (see sdxl_defaults.h).
#include "worker/engine/sdxl_defaults.h"

namespace sdfarm::engine {

MicroConditioning EffectiveMicro(const MicroConditioning& m, int width, int height) {
  MicroConditioning out = m;
  if (out.original_width <= 0) out.original_width = width;
  if (out.original_height <= 0) out.original_height = height;
  if (out.target_width <= 0) out.target_width = width;
  if (out.target_height <= 0) out.target_height = height;
  return out;
}

bool HasNegativeMicroConditioning(const RenderItem& item) {
  const MicroConditioning& n = item.negative_micro;
  return n.original_width > 0 && n.original_height > 0 && n.target_width > 0 && n.target_height > 0;
}

EffectiveSdxl EffectiveSdxlSettings(const RenderItem& item, int width, int height) {
  EffectiveSdxl e;
  e.prompt_2 = item.prompt_2.empty() ? item.prompt : item.prompt_2;
  e.negative_prompt_2 = item.negative_prompt_2.empty() ? item.negative_prompt : item.negative_prompt_2;
  e.micro = EffectiveMicro(item.micro, width, height);
  if (HasNegativeMicroConditioning(item)) e.negative_micro = EffectiveMicro(item.negative_micro, width, height);
  return e;
}

}  // namespace sdfarm::engine
