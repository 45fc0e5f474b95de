// EulerDiscreteScheduler (diffusers 0.21.4): Algorithm 2 of Karras et al.
// (2022) with s_churn = 0, i.e. plain Euler steps of the probability-flow ODE
// in sigma. diffusers still draws the churn noise every step (and throws it
// away), so Step calls the NoiseFn every time to keep the generator in step.
#include <memory>
#include <string>

#include "common/status_macros.h"
#include "worker/engine/schedulers_internal.h"

namespace sdfarm::engine::internal {
namespace {

class EulerScheduler final : public SigmaScheduler {
 public:
  EulerScheduler(const SchedulerConfig& config, NoiseTables tables)
      : SigmaScheduler(config, std::move(tables), config.use_karras_sigmas) {}

  Status SetTimesteps(int num_inference_steps) override { return ComputeSchedule(num_inference_steps); }

  at::Tensor Step(const at::Tensor& model_output_in, int64_t step_index, const at::Tensor& sample_in,
                  const NoiseFn& noise) override {
    CheckStepIndex(step_index);
    const at::Tensor model_output = AsFloat32(model_output_in);
    at::Tensor sample = AsFloat32(sample_in);
    const at::Tensor sigma = Sigma(step_index);

    // s_churn = 0 makes gamma 0: the draw only advances the generator. With
    // no NoiseFn there is nothing to keep in step, so skip it.
    const double gamma = 0.0;
    if (noise) (void)noise(model_output.sizes());
    const at::Tensor sigma_hat = sigma * (gamma + 1);

    const at::Tensor pred_original_sample = PredictOriginalSample(sample, model_output, sigma, sigma_hat);

    const at::Tensor derivative = (sample - pred_original_sample) / sigma_hat;
    const at::Tensor dt = Sigma(step_index + 1) - sigma_hat;
    return sample + derivative * dt;
  }
};

}  // namespace

StatusOr<std::unique_ptr<Scheduler>> MakeEulerScheduler(const SchedulerConfig& config) {
  if (config.interpolation_type != "linear") {
    return InvalidArgumentError("euler: interpolation_type \"" + config.interpolation_type +
                                "\" is not supported (only \"linear\")");
  }
  ASSIGN_OR_RETURN(NoiseTables tables, MakeNoiseTables(config, "EulerDiscreteScheduler", /*allow_sigmoid=*/false,
                                                       /*rescale_zero_snr=*/false));
  return std::unique_ptr<Scheduler>(new EulerScheduler(config, std::move(tables)));
}

}  // namespace sdfarm::engine::internal
