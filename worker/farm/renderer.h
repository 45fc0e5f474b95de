// What the farm worker renders with: the real diffusion engine, or the
// synthetic stand-in of tests and benchmarks (synthetic_engine.h), behind one
// small interface shaped like engine::Engine.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Renderer> r, LoadEngineRenderer("models/sd15", {.device = "cuda"}, "sd15"));
//   RETURN_IF_ERROR(r->Validate(request));
//   ASSIGN_OR_RETURN(engine::RenderResult out, r->Render(request, on_step));
//
// A Renderer is used by one thread at a time (the worker's main thread).
#ifndef SDFARM_WORKER_FARM_RENDERER_H_
#define SDFARM_WORKER_FARM_RENDERER_H_

#include <memory>
#include <string>
#include <vector>

#include "common/job_payload.h"
#include "worker/engine/engine.h"

namespace sdfarm::worker {

class Renderer {
 public:
  virtual ~Renderer() = default;

  // name is the model name the worker serves (its queue, and "Model:" in the
  // parameters text); hash is "Model hash:".
  virtual const engine::ModelInfo& info() const = 0;
  // Everything Render would reject, without compute (engine::Engine::Validate).
  virtual engine::Status Validate(const engine::RenderRequest& request) const = 0;
  // One image per item; on_step after every step, returning false cancels
  // (Render then returns Cancelled).
  virtual engine::StatusOr<engine::RenderResult> Render(const engine::RenderRequest& request,
                                                        const engine::StepCallback& on_step) const = 0;
  // Small previews of the images in flight, from inside on_step (one per
  // item; empty when the renderer has none).
  virtual std::vector<engine::Image> Previews(const engine::StepInfo& step) const = 0;
  // Renders from now on with the VAE at `path` (a diffusers VAE folder or a
  // single file); "" goes back to the VAE the model was loaded with. info()
  // then names it. Renderers that cannot swap VAEs refuse any other path.
  virtual engine::Status UseVae(const std::string& path) {
    if (path.empty()) return engine::OkStatus();
    return engine::UnimplementedError("this renderer cannot swap VAEs (asked for " + path + ")");
  }
};

// Loads the model in `model_dir` into the engine. `model_name`, when not
// empty, replaces the folder's name as the model's name.
engine::StatusOr<std::unique_ptr<Renderer>> LoadEngineRenderer(const std::string& model_dir,
                                                               const engine::EngineOptions& options,
                                                               const std::string& model_name);

// The engine item a job item describes (prompt, seeds, guidance and the SDXL
// fields), so that a farm image equals sdfarm-render's for the same settings.
engine::RenderItem RenderItemFor(const JobItem& item);

// The model name a folder gives by default: its last path component, so that
// "models/sd15/" serves "sd15" as "models/sd15" does (and "." the current
// folder's name); a single file "models/dreamshaper_8.safetensors" serves
// "dreamshaper_8".
std::string ModelNameFromDir(const std::string& model_dir);

}  // namespace sdfarm::worker

#endif  // SDFARM_WORKER_FARM_RENDERER_H_
