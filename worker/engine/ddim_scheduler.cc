// DDIMScheduler (diffusers 0.21.4) with eta = 0: deterministic DDIM (Song et
// al. 2020). The previous timestep is always timestep - train // steps (not
// the next list entry), as in diffusers, whatever the spacing.
#include <memory>
#include <string>
#include <vector>

#include "common/status_macros.h"
#include "worker/engine/schedulers_internal.h"

namespace sdfarm::engine::internal {
namespace {

class DdimScheduler final : public Scheduler {
 public:
  DdimScheduler(const SchedulerConfig& config, NoiseTables tables)
      : config_(config), spacing_(ResolveSpacing(config, "leading")), clip_sample_(config.clip_sample.value_or(true)) {
    betas_ = std::move(tables.betas);
    alphas_cumprod_ = std::move(tables.alphas_cumprod);
    final_alpha_cumprod_ = config.set_alpha_to_one.value_or(true) ? at::scalar_tensor(1.0, at::kFloat)
                                                                  : alphas_cumprod_[0];
  }

  Status SetTimesteps(int num_inference_steps) override {
    ASSIGN_OR_RETURN(std::vector<int64_t> ts, AlphaScheduleTimesteps(spacing_, config_.num_train_timesteps,
                                                                     num_inference_steps, config_.steps_offset));
    num_inference_steps_ = num_inference_steps;
    ts_ = std::move(ts);
    timesteps_ = LongTable(ts_);
    return OkStatus();
  }

  at::Tensor Step(const at::Tensor& model_output_in, int64_t step_index, const at::Tensor& sample_in,
                  const NoiseFn& noise) override {
    CheckStepIndex(step_index);
    const at::Tensor model_output = AsFloat32(model_output_in);
    const at::Tensor sample = AsFloat32(sample_in);
    const int64_t timestep = ts_[step_index];
    const int64_t prev_timestep = timestep - config_.num_train_timesteps / num_inference_steps_;

    const at::Tensor alpha_prod_t = alphas_cumprod_[timestep];
    const at::Tensor alpha_prod_t_prev = prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
    const at::Tensor beta_prod_t = 1 - alpha_prod_t;

    at::Tensor pred_original_sample, pred_epsilon;
    if (config_.prediction_type == "epsilon") {
      pred_original_sample = (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
      pred_epsilon = model_output;
    } else if (config_.prediction_type == "sample") {
      pred_original_sample = model_output;
      pred_epsilon = (sample - alpha_prod_t.pow(0.5) * pred_original_sample) / beta_prod_t.pow(0.5);
    } else {  // v_prediction
      pred_original_sample = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;
      pred_epsilon = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
    }

    if (config_.thresholding) {
      pred_original_sample =
          ThresholdSample(pred_original_sample, config_.dynamic_thresholding_ratio, config_.sample_max_value);
    } else if (clip_sample_) {
      pred_original_sample = pred_original_sample.clamp(-config_.clip_sample_range, config_.clip_sample_range);
    }

    // eta = 0: std_dev_t = 0 * variance ** 0.5, kept so the arithmetic is diffusers'.
    const at::Tensor variance = Variance(timestep, prev_timestep);
    const at::Tensor std_dev_t = variance.pow(0.5) * 0.0;
    const at::Tensor pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t.pow(2)).pow(0.5) * pred_epsilon;
    return alpha_prod_t_prev.pow(0.5) * pred_original_sample + pred_sample_direction;
  }

  at::Tensor AddNoise(const at::Tensor& original, const at::Tensor& noise, int64_t step_index) const override {
    CheckStepIndex(step_index);
    return AddNoiseWithAlphas(alphas_cumprod_, ts_[step_index], original, noise);
  }

 private:
  at::Tensor Variance(int64_t timestep, int64_t prev_timestep) const {
    const at::Tensor alpha_prod_t = alphas_cumprod_[timestep];
    const at::Tensor alpha_prod_t_prev = prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
    const at::Tensor beta_prod_t = 1 - alpha_prod_t;
    const at::Tensor beta_prod_t_prev = 1 - alpha_prod_t_prev;
    return (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev);
  }

  const SchedulerConfig config_;
  const std::string spacing_;
  const bool clip_sample_;
  at::Tensor final_alpha_cumprod_;

  int64_t num_inference_steps_ = 0;
  std::vector<int64_t> ts_;
};

}  // namespace

StatusOr<std::unique_ptr<Scheduler>> MakeDdimScheduler(const SchedulerConfig& config) {
  ASSIGN_OR_RETURN(NoiseTables tables, MakeNoiseTables(config, "DDIMScheduler", /*allow_sigmoid=*/false,
                                                       /*rescale_zero_snr=*/config.rescale_betas_zero_snr));
  return std::unique_ptr<Scheduler>(new DdimScheduler(config, std::move(tables)));
}

}  // namespace sdfarm::engine::internal
