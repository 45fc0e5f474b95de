// LoRA (low-rank adaptation) for the engine: reading LoRA files, mapping their
// keys onto this model's modules, and merging a request's set of LoRAs into
// the UNet and text-encoder weights.
//
// Formats read (safetensors only; .ckpt/.pt/.bin/.pth pickles are refused):
//  - kohya-ss / AUTOMATIC1111: `lora_unet_<module path with _ for .>` and
//    `lora_te_<text encoder module path with _>`, each with `.lora_down.weight`
//    [r, in(, kh, kw)], `.lora_up.weight` [out, r(, 1, 1)] and an optional
//    `.alpha` scalar. Linear layers, 1x1 convs (SD 1.x proj_in/proj_out) and
//    3x3 "LoCon" convs.
//  - diffusers 0.21 (`save_lora_weights`): `unet.<attn path>.processor.
//    to_{q,k,v,out}_lora.{down,up}.weight`, `text_encoder.<path>.
//    lora_linear_layer.{down,up}.weight`; also the newer `<path>.lora.{down,up}
//    .weight`, PEFT's `<path>.lora_A/lora_B.weight` and `<path>.alpha`, and the
//    old attention-processor files without the `unet.` prefix.
//  A path may be a folder holding pytorch_lora_weights.safetensors.
//
// Underscored kohya names are ambiguous to split (`to_q`, `transformer_blocks`,
// `proj_in` all hold `_`), so they are resolved against the model's own
// module paths: every parameter "<module>.weight" of the loaded network gives
// the key "<module with . -> _>". A key that resolves to no module, or a
// LoRA whose shapes do not fit the module, is an error naming it.
//
// Why merge instead of applying on the fly. Each adapted layer computes
//   W x + b + scale * (alpha / rank) * up(down(x))
// which equals (W + scale * alpha / rank * up @ down) x + b. A render farm runs
// many jobs with the same LoRA set, and a real SD 1.5 LoRA touches ~300
// layers, so on-the-fly application would add two small matmuls (and, on a
// GPU, two kernel launches) per adapted layer per UNet call, every step, for
// every image. Merging costs one matmul per layer once per set change and
// makes renders exactly as fast as without LoRA; it also needs no change to the
// layer code (Linear, Conv2d, the CLIP and transformer blocks). The merge is
// computed in float32 (fp16 LoRA files are upcast) and cast to the model's
// dtype once. The original tensors of the touched layers are kept, so a new
// set, or no LoRA, starts again from the exact base weights: removable
// without reloading the model, and scale 0 is exactly the base model. The
// difference to diffusers' on-the-fly sum is float rounding (~1e-7 relative).
//
//   LoraMerger loras(model.unet_params, model.text_encoder_params, device);
//   ASSIGN_OR_RETURN(LoraInfo info, loras.Load("add_detail.safetensors"));  // cached, validated
//   RETURN_IF_ERROR(loras.Apply({{"add_detail.safetensors", 0.8}}));          // no-op if already applied
#ifndef SDFARM_WORKER_ENGINE_LORA_H_
#define SDFARM_WORKER_ENGINE_LORA_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "worker/engine/engine.h"
#include "worker/engine/status.h"

namespace sdfarm::engine {

// Parameter name ("down_blocks.0.attentions.0.proj_in.weight") -> the loaded
// model's tensor, for one network.
using NamedTensors = std::map<std::string, at::Tensor*>;

enum class LoraTarget { kUNet, kTextEncoder };

// One adapted layer of a LoRA file, resolved against the model.
struct LoraModule {
  LoraTarget target = LoraTarget::kUNet;
  std::string module;      // the model's module path, e.g. "mid_block.attentions.0.proj_in"
  at::Tensor down, up;     // CPU, the file's dtype (upcast to float32 for the merge): [r, in(, kh, kw)], [out, r(, 1, 1)]
  double alpha_over_rank = 1.0;
};

struct LoraFile {
  std::string file;  // the .safetensors file read
  LoraInfo info;
  std::vector<LoraModule> modules;
};

// Reads and validates one LoRA (file or folder) against the model's networks.
StatusOr<std::shared_ptr<const LoraFile>> ReadLora(const std::string& path, const NamedTensors& unet,
                                                   const NamedTensors& text_encoder);

// The LoRA state of one loaded model: a cache of read files and the set now
// merged into the weights. Used by one thread at a time (as the Engine is).
class LoraMerger {
 public:
  LoraMerger(NamedTensors unet, NamedTensors text_encoder, at::Device device);

  // Reads, validates and caches `path` (keyed by the path as given). The
  // cache keeps the kMaxCached most recently used files besides those applied.
  StatusOr<std::shared_ptr<const LoraFile>> Load(const std::string& path);

  // Makes the weights those of the base model plus `loras` (in order; entries
  // with scale 0 are left out). Nothing happens when the effective set equals
  // the applied one. On an error the weights stay consistent with applied():
  // the previous set when a file fails to load, the base model when the
  // merge itself fails (e.g. out of memory).
  Status Apply(const std::vector<LoraRef>& loras);

  // The effective set now merged (scale-0 entries dropped).
  const std::vector<LoraRef>& applied() const { return applied_; }
  // Parameters now holding merged values (0 at base weights).
  size_t num_merged_tensors() const { return originals_.size(); }

 private:
  void RestoreBase();

  NamedTensors unet_, text_encoder_;
  at::Device device_;
  static constexpr size_t kMaxCached = 8;
  struct Cached {
    std::shared_ptr<const LoraFile> file;
    uint64_t last_use = 0;
  };
  std::map<std::string, Cached> cache_;
  uint64_t uses_ = 0;
  std::vector<LoraRef> applied_;
  std::map<at::Tensor*, at::Tensor> originals_;  // base tensors of the layers merged now
};

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_LORA_H_
