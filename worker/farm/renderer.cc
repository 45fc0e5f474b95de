#include "worker/farm/renderer.h"

#include <filesystem>
#include <utility>

namespace sdfarm::worker {
namespace {

class EngineRenderer : public Renderer {
 public:
  EngineRenderer(std::unique_ptr<engine::Engine> engine, const std::string& model_name)
      : engine_(std::move(engine)), info_(engine_->info()) {
    if (!model_name.empty()) info_.name = model_name;
  }

  const engine::ModelInfo& info() const override { return info_; }

  engine::Status Validate(const engine::RenderRequest& request) const override {
    return engine_->Validate(request);
  }

  engine::StatusOr<engine::RenderResult> Render(const engine::RenderRequest& request,
                                                const engine::StepCallback& on_step) const override {
    return engine_->Render(request, on_step);
  }

  engine::Status UseVae(const std::string& path) override {
    engine::Status s = engine_->SetVae(path);
    const std::string name = info_.name;
    info_ = engine_->info();  // the VAE's name and hash
    info_.name = name;
    return s;
  }

  std::vector<engine::Image> Previews(const engine::StepInfo& step) const override {
    // The tensor stays incomplete here: binding *latents to a reference needs
    // no definition, and keeps LibTorch's headers out of the farm worker.
    if (step.latents == nullptr) return {};
    return engine::PreviewImages(*step.latents);
  }

 private:
  std::unique_ptr<engine::Engine> engine_;
  engine::ModelInfo info_;  // the engine's, with the served name
};

}  // namespace

engine::StatusOr<std::unique_ptr<Renderer>> LoadEngineRenderer(const std::string& model_dir,
                                                               const engine::EngineOptions& options,
                                                               const std::string& model_name) {
  auto engine = engine::Engine::Load(model_dir, options);
  if (!engine.ok()) return engine.status();
  return std::unique_ptr<Renderer>(new EngineRenderer(std::move(engine).value(), model_name));
}

engine::RenderItem RenderItemFor(const JobItem& it) {
  engine::RenderItem r;
  r.prompt = it.prompt;
  r.negative_prompt = it.negative_prompt;
  r.seed = it.seed;
  r.guidance_scale = it.guidance_scale;
  r.prompt_2 = it.prompt_2;
  r.negative_prompt_2 = it.negative_prompt_2;
  r.micro = {it.original_width, it.original_height, it.crop_top, it.crop_left, it.target_width, it.target_height};
  r.negative_micro = {it.negative_original_width, it.negative_original_height, it.negative_crop_top,
                      it.negative_crop_left,      it.negative_target_width,    it.negative_target_height};
  r.guidance_rescale = it.guidance_rescale;
  return r;
}

std::string ModelNameFromDir(const std::string& model_dir) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(model_dir, ec);  // "." names the current folder
  if (ec) p = model_dir;
  p = p.lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "models/sd15/" -> "models/sd15"
  if (p.extension() == ".safetensors") return p.stem().string();  // a single-file checkpoint
  return p.filename().string();
}

}  // namespace sdfarm::worker
