// A stand-in for the diffusion engine (`sdfarm-worker --engine synthetic:MS`),
// for the farm's tests and benchmarks: no model and no compute, just time.
// Every step sleeps MS milliseconds and reports through the step callback
// (which can cancel, as with the real engine); every image is a deterministic
// RGB pattern of (prompt, seed, guidance scale) at the requested size (64x64
// when the request leaves it to the model), so tests can tell images apart
// and check that the farm stored the right one. Never the default.
//
//   ASSIGN_OR_RETURN(SyntheticOptions o, ParseSyntheticEngine("synthetic:5"));
//   o.model_name = "sd15";
//   SyntheticRenderer r(o);
//   ASSIGN_OR_RETURN(engine::RenderResult out, r.Render(request, on_step));
#ifndef SDFARM_WORKER_FARM_SYNTHETIC_ENGINE_H_
#define SDFARM_WORKER_FARM_SYNTHETIC_ENGINE_H_

#include <string>
#include <vector>

#include "worker/engine/engine.h"
#include "worker/farm/renderer.h"

namespace sdfarm::worker {

struct SyntheticOptions {
  int step_ms = 0;                    // sleep per step
  std::string model_name = "synthetic";
};

// "synthetic:MS" (MS a whole number of milliseconds, 0..60000) or
// "synthetic" (0 ms); InvalidArgument otherwise.
engine::StatusOr<SyntheticOptions> ParseSyntheticEngine(const std::string& spec);

class SyntheticRenderer : public Renderer {
 public:
  static constexpr char kModelHash[] = "synthetic";
  static constexpr int kDefaultSize = 64;

  explicit SyntheticRenderer(SyntheticOptions options);

  const engine::ModelInfo& info() const override { return info_; }
  // The engine's checks that apply without a model: items with non-blank
  // prompts, guidance in [0, 100], size a multiple of 8 in [8, 8192], steps in
  // [1, 1000], a known sampler; no init image or mask.
  engine::Status Validate(const engine::RenderRequest& request) const override;
  engine::StatusOr<engine::RenderResult> Render(const engine::RenderRequest& request,
                                                const engine::StepCallback& on_step) const override;
  // One (width/8) x (height/8) image per item, brightening with progress.
  std::vector<engine::Image> Previews(const engine::StepInfo& step) const override;

  // The image Render gives `item` at width x height (items are independent of
  // the rest of their batch, as with the engine's per-image seeds).
  static engine::Image Pattern(const engine::RenderItem& item, int width, int height);

 private:
  SyntheticOptions options_;
  engine::ModelInfo info_;
  // Set by Render for Previews (one thread uses a renderer at a time).
  mutable int preview_width_ = 0, preview_height_ = 0, preview_items_ = 0;
};

}  // namespace sdfarm::worker

#endif  // SDFARM_WORKER_FARM_SYNTHETIC_ENGINE_H_
