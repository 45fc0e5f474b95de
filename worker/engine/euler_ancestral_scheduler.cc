// EulerAncestralDiscreteScheduler (diffusers 0.21.4): k-diffusion's
// sample_euler_ancestral. Each step goes down to sigma_down with an Euler step
// and adds fresh noise of scale sigma_up (one NoiseFn draw per step).
#include <memory>
#include <string>

#include "common/status_macros.h"
#include "worker/engine/schedulers_internal.h"

namespace sdfarm::engine::internal {
namespace {

class EulerAncestralScheduler final : public SigmaScheduler {
 public:
  EulerAncestralScheduler(const SchedulerConfig& config, NoiseTables tables)
      : SigmaScheduler(config, std::move(tables), /*karras=*/false) {}

  Status SetTimesteps(int num_inference_steps) override { return ComputeSchedule(num_inference_steps); }

  at::Tensor Step(const at::Tensor& model_output_in, int64_t step_index, const at::Tensor& sample_in,
                  const NoiseFn& noise) override {
    CheckStepIndex(step_index);
    const at::Tensor model_output = AsFloat32(model_output_in);
    const at::Tensor sample = AsFloat32(sample_in);
    const at::Tensor sigma = Sigma(step_index);

    const at::Tensor pred_original_sample = PredictOriginalSample(sample, model_output, sigma, sigma);

    const at::Tensor sigma_from = Sigma(step_index);
    const at::Tensor sigma_to = Sigma(step_index + 1);
    const at::Tensor sigma_up = (sigma_to.pow(2) * (sigma_from.pow(2) - sigma_to.pow(2)) / sigma_from.pow(2)).pow(0.5);
    const at::Tensor sigma_down = (sigma_to.pow(2) - sigma_up.pow(2)).pow(0.5);

    const at::Tensor derivative = (sample - pred_original_sample) / sigma;
    const at::Tensor dt = sigma_down - sigma;
    const at::Tensor prev_sample = sample + derivative * dt;

    const at::Tensor step_noise = DrawNoise(noise, model_output, "euler_a");
    return prev_sample + step_noise * sigma_up;
  }
};

}  // namespace

StatusOr<std::unique_ptr<Scheduler>> MakeEulerAncestralScheduler(const SchedulerConfig& config) {
  if (config.prediction_type == "sample") {
    return InvalidArgumentError("euler_a does not support prediction_type \"sample\" (nor does diffusers)");
  }
  ASSIGN_OR_RETURN(NoiseTables tables, MakeNoiseTables(config, "EulerAncestralDiscreteScheduler",
                                                       /*allow_sigmoid=*/false, /*rescale_zero_snr=*/false));
  return std::unique_ptr<Scheduler>(new EulerAncestralScheduler(config, std::move(tables)));
}

}  // namespace sdfarm::engine::internal
