// DDPMScheduler (diffusers 0.21.4): ancestral sampling of Ho et al. (2020)
// over a subset of timesteps. Noise is drawn (NoiseFn) on every step whose
// timestep is > 0; the previous timestep is timestep - train // steps.
#include <memory>
#include <string>
#include <vector>

#include "common/status_macros.h"
#include "worker/engine/schedulers_internal.h"

namespace sdfarm::engine::internal {
namespace {

class DdpmScheduler final : public Scheduler {
 public:
  DdpmScheduler(const SchedulerConfig& config, NoiseTables tables)
      : config_(config),
        spacing_(ResolveSpacing(config, "leading")),
        clip_sample_(config.clip_sample.value_or(true)),
        variance_type_(config.variance_type.value_or("fixed_small")),
        one_(at::scalar_tensor(1.0, at::kFloat)) {
    betas_ = std::move(tables.betas);
    alphas_cumprod_ = std::move(tables.alphas_cumprod);
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
    at::Tensor model_output = AsFloat32(model_output_in);
    const at::Tensor sample = AsFloat32(sample_in);
    const int64_t t = ts_[step_index];
    const int64_t prev_t = PreviousTimestep(t);

    at::Tensor predicted_variance;
    if (model_output.size(1) == sample.size(1) * 2 &&
        (variance_type_ == "learned" || variance_type_ == "learned_range")) {
      std::vector<at::Tensor> parts = at::split(model_output, sample.size(1), 1);
      model_output = parts[0];
      predicted_variance = parts[1];
    }

    // 1. alphas, betas
    const at::Tensor alpha_prod_t = alphas_cumprod_[t];
    const at::Tensor alpha_prod_t_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : one_;
    const at::Tensor beta_prod_t = 1 - alpha_prod_t;
    const at::Tensor beta_prod_t_prev = 1 - alpha_prod_t_prev;
    const at::Tensor current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
    const at::Tensor current_beta_t = 1 - current_alpha_t;

    // 2. predicted x0
    at::Tensor pred_original_sample;
    if (config_.prediction_type == "epsilon") {
      pred_original_sample = (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
    } else if (config_.prediction_type == "sample") {
      pred_original_sample = model_output;
    } else {  // v_prediction
      pred_original_sample = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;
    }

    // 3. clip or threshold x0
    if (config_.thresholding) {
      pred_original_sample =
          ThresholdSample(pred_original_sample, config_.dynamic_thresholding_ratio, config_.sample_max_value);
    } else if (clip_sample_) {
      pred_original_sample = pred_original_sample.clamp(-config_.clip_sample_range, config_.clip_sample_range);
    }

    // 4-5. posterior mean (formula (7) of the DDPM paper)
    const at::Tensor pred_original_sample_coeff = (alpha_prod_t_prev.pow(0.5) * current_beta_t) / beta_prod_t;
    const at::Tensor current_sample_coeff = current_alpha_t.pow(0.5) * beta_prod_t_prev / beta_prod_t;
    at::Tensor pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample;

    // 6. noise
    if (t > 0) {
      const at::Tensor variance_noise = DrawNoise(noise, model_output, "ddpm");
      at::Tensor variance;
      if (variance_type_ == "fixed_small_log") {
        variance = Variance(t, predicted_variance) * variance_noise;
      } else if (variance_type_ == "learned_range") {
        variance = at::exp(Variance(t, predicted_variance) * 0.5) * variance_noise;
      } else {
        variance = Variance(t, predicted_variance).pow(0.5) * variance_noise;
      }
      pred_prev_sample = pred_prev_sample + variance;
    }
    return pred_prev_sample;
  }

  at::Tensor AddNoise(const at::Tensor& original, const at::Tensor& noise, int64_t step_index) const override {
    CheckStepIndex(step_index);
    return AddNoiseWithAlphas(alphas_cumprod_, ts_[step_index], original, noise);
  }

 private:
  int64_t PreviousTimestep(int64_t t) const { return t - config_.num_train_timesteps / num_inference_steps_; }

  // diffusers' _get_variance.
  at::Tensor Variance(int64_t t, const at::Tensor& predicted_variance) const {
    const int64_t prev_t = PreviousTimestep(t);
    const at::Tensor alpha_prod_t = alphas_cumprod_[t];
    const at::Tensor alpha_prod_t_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : one_;
    const at::Tensor current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev;
    // Formula (6)-(7) of the DDPM paper: the posterior variance.
    at::Tensor variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t;
    variance = at::clamp(variance, at::Scalar(1e-20), c10::nullopt);
    if (variance_type_ == "fixed_small") return variance;
    if (variance_type_ == "fixed_small_log") return at::exp(at::log(variance) * 0.5);
    if (variance_type_ == "fixed_large") return current_beta_t;
    if (variance_type_ == "fixed_large_log") return at::log(current_beta_t);
    TORCH_CHECK(predicted_variance.defined(), "ddpm: variance_type ", variance_type_,
                " needs a model output with twice the sample's channels");
    if (variance_type_ == "learned") return predicted_variance;
    // learned_range
    const at::Tensor min_log = at::log(variance);
    const at::Tensor max_log = at::log(current_beta_t);
    const at::Tensor frac = (predicted_variance + 1) / 2;
    return frac * max_log + (1 - frac) * min_log;
  }

  const SchedulerConfig config_;
  const std::string spacing_;
  const bool clip_sample_;
  const std::string variance_type_;
  const at::Tensor one_;

  int64_t num_inference_steps_ = 0;
  std::vector<int64_t> ts_;
};

}  // namespace

StatusOr<std::unique_ptr<Scheduler>> MakeDdpmScheduler(const SchedulerConfig& config) {
  if (config.variance_type == "fixed_large_log") {
    // diffusers takes the square root of this log-variance, which is NaN.
    return InvalidArgumentError("ddpm: variance_type fixed_large_log is not supported (it yields NaN in diffusers)");
  }
  ASSIGN_OR_RETURN(NoiseTables tables, MakeNoiseTables(config, "DDPMScheduler", /*allow_sigmoid=*/true,
                                                       /*rescale_zero_snr=*/false));
  return std::unique_ptr<Scheduler>(new DdpmScheduler(config, std::move(tables)));
}

}  // namespace sdfarm::engine::internal
