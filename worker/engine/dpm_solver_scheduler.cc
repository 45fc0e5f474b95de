// DPMSolverMultistepScheduler (diffusers 0.21.4) as DPM-Solver++(2M): the
// multistep second-order solver of Lu et al. (2022) on the data prediction,
// algorithm_type "dpmsolver++", solver_order 2, with lower_order_final (the
// last step is first order when there are fewer than 15 steps).
//
// diffusers 0.21.4's step math reads the alpha_t / sigma_t / lambda_t tables
// at integer timesteps. With Karras sigmas the sigmas only choose those
// timesteps (rounded, de-duplicated); sigmas() then holds them in increasing
// order, exactly as that release does (it passes the ascending training
// sigmas to _convert_to_karras, whose ramp thus runs upwards, and flips the
// resulting timesteps).
#include <algorithm>
#include <array>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/status_macros.h"
#include "worker/engine/schedulers_internal.h"

namespace sdfarm::engine::internal {
namespace {

class DpmSolverScheduler final : public Scheduler {
 public:
  DpmSolverScheduler(const SchedulerConfig& config, NoiseTables tables, bool karras)
      : config_(config), spacing_(ResolveSpacing(config, "linspace")), karras_(karras) {
    betas_ = std::move(tables.betas);
    alphas_cumprod_ = std::move(tables.alphas_cumprod);
    // VP-type noise schedule.
    alpha_t_ = at::sqrt(alphas_cumprod_);
    sigma_t_ = at::sqrt(1 - alphas_cumprod_);
    lambda_t_ = (at::log(alpha_t_) - at::log(sigma_t_)).contiguous();
    train_sigmas_ = TrainingSigmas(alphas_cumprod_);
    sigmas_ = FloatTable(train_sigmas_);
  }

  Status SetTimesteps(int num_inference_steps) override {
    const int64_t n = num_inference_steps;
    const int64_t train = config_.num_train_timesteps;
    if (n < 1 || n > train) {
      return InvalidArgumentError("num_inference_steps must be in [1, " + std::to_string(train) + "], got " +
                                  std::to_string(n));
    }
    // Clipping the smallest lambda(t) (for the cosine schedule): timesteps
    // stop below the first one whose lambda is under lambda_min_clipped.
    const float* lambdas = lambda_t_.data_ptr<float>();
    int64_t clipped_idx = 0;  // torch.searchsorted(torch.flip(lambda_t), lambda_min_clipped)
    while (clipped_idx < train &&
           static_cast<double>(lambdas[train - 1 - clipped_idx]) < config_.lambda_min_clipped) {
      ++clipped_idx;
    }
    const int64_t last_timestep = train - clipped_idx;

    std::vector<int64_t> ts;
    if (spacing_ == "linspace") {
      std::vector<double> v = NpLinspace(0, static_cast<double>(last_timestep - 1), n + 1);
      for (int64_t i = n; i >= 1; --i) ts.push_back(static_cast<int64_t>(NpRound(v[i])));
    } else if (spacing_ == "leading") {
      const int64_t step_ratio = last_timestep / (n + 1);
      for (int64_t i = n; i >= 1; --i) ts.push_back(i * step_ratio + config_.steps_offset);
    } else if (spacing_ == "trailing") {
      const double step_ratio = static_cast<double>(train) / static_cast<double>(n);
      for (double v : NpArange(static_cast<double>(last_timestep), 0, -step_ratio)) {
        ts.push_back(static_cast<int64_t>(NpRound(v)) - 1);
      }
    } else {
      return InvalidArgumentError("timestep_spacing \"" + spacing_ + "\" is not supported");
    }

    std::vector<float> sigmas = train_sigmas_;
    if (karras_) {
      std::vector<float> log_sigmas;
      for (float s : train_sigmas_) log_sigmas.push_back(std::log(s));
      // in_sigmas[-1] / in_sigmas[0] of the ascending training sigmas.
      const std::vector<double> k = KarrasSigmas(train_sigmas_.back(), train_sigmas_.front(), n);
      ts.clear();
      for (auto it = k.rbegin(); it != k.rend(); ++it) {
        ts.push_back(static_cast<int64_t>(NpRound(SigmaToT(*it, log_sigmas))));
      }
      sigmas.assign(k.begin(), k.end());
    }

    // Rounding can repeat a timestep (e.g. as many steps as training steps);
    // diffusers keeps the first of each.
    std::vector<int64_t> unique;
    std::set<int64_t> seen;
    for (int64_t t : ts) {
      if (seen.insert(t).second) unique.push_back(t);
    }
    for (int64_t t : unique) {
      if (t < 0 || t >= train) {
        return InvalidArgumentError("DPM-Solver timestep " + std::to_string(t) + " is outside [0, " +
                                    std::to_string(train) + ")");
      }
    }

    sigmas_ = FloatTable(sigmas);
    ts_ = std::move(unique);
    timesteps_ = LongTable(ts_);
    model_outputs_ = {at::Tensor(), at::Tensor()};
    lower_order_nums_ = 0;
    return OkStatus();
  }

  at::Tensor Step(const at::Tensor& model_output_in, int64_t step_index, const at::Tensor& sample_in,
                  const NoiseFn& noise) override {
    CheckStepIndex(step_index);
    const at::Tensor sample = AsFloat32(sample_in);
    const int64_t n = static_cast<int64_t>(ts_.size());
    const int64_t timestep = ts_[step_index];
    const int64_t prev_timestep = step_index == n - 1 ? 0 : ts_[step_index + 1];
    const bool lower_order_final = step_index == n - 1 && config_.lower_order_final && n < 15;

    const at::Tensor model_output = ConvertModelOutput(AsFloat32(model_output_in), timestep, sample);
    model_outputs_[0] = model_outputs_[1];
    model_outputs_[1] = model_output;

    at::Tensor prev_sample;
    if (lower_order_nums_ < 1 || lower_order_final) {
      prev_sample = FirstOrderUpdate(model_output, timestep, prev_timestep, sample);
    } else {
      prev_sample = SecondOrderUpdate(ts_[step_index - 1], timestep, prev_timestep, sample);
    }
    if (lower_order_nums_ < kSolverOrder) ++lower_order_nums_;
    return prev_sample;
  }

  at::Tensor AddNoise(const at::Tensor& original, const at::Tensor& noise, int64_t step_index) const override {
    CheckStepIndex(step_index);
    return AddNoiseWithAlphas(alphas_cumprod_, ts_[step_index], original, noise);
  }

 private:
  static constexpr int kSolverOrder = 2;

  // DPM-Solver++ integrates the data prediction: turn the model output into x0.
  at::Tensor ConvertModelOutput(at::Tensor model_output, int64_t timestep, const at::Tensor& sample) const {
    if (config_.variance_type == "learned" || config_.variance_type == "learned_range") {
      model_output = model_output.slice(1, 0, 3);
    }
    at::Tensor x0_pred;
    if (config_.prediction_type == "epsilon") {
      x0_pred = (sample - sigma_t_[timestep] * model_output) / alpha_t_[timestep];
    } else if (config_.prediction_type == "sample") {
      x0_pred = model_output;
    } else {  // v_prediction
      x0_pred = alpha_t_[timestep] * sample - sigma_t_[timestep] * model_output;
    }
    if (config_.thresholding) {
      x0_pred = ThresholdSample(x0_pred, config_.dynamic_thresholding_ratio, config_.sample_max_value);
    }
    return x0_pred;
  }

  // One DPM-Solver++ first-order step (equivalent to DDIM).
  at::Tensor FirstOrderUpdate(const at::Tensor& model_output, int64_t timestep, int64_t prev_timestep,
                              const at::Tensor& sample) const {
    const at::Tensor lambda_t = lambda_t_[prev_timestep];
    const at::Tensor lambda_s = lambda_t_[timestep];
    const at::Tensor alpha_t = alpha_t_[prev_timestep];
    const at::Tensor sigma_t = sigma_t_[prev_timestep];
    const at::Tensor sigma_s = sigma_t_[timestep];
    const at::Tensor h = lambda_t - lambda_s;
    return (sigma_t / sigma_s) * sample - (alpha_t * (at::exp(-h) - 1.0)) * model_output;
  }

  // Multistep second-order DPM-Solver++ step from model_outputs_ (newest last).
  at::Tensor SecondOrderUpdate(int64_t s1, int64_t s0, int64_t t, const at::Tensor& sample) const {
    const at::Tensor& m0 = model_outputs_[1];
    const at::Tensor& m1 = model_outputs_[0];
    const at::Tensor lambda_t = lambda_t_[t];
    const at::Tensor lambda_s0 = lambda_t_[s0];
    const at::Tensor lambda_s1 = lambda_t_[s1];
    const at::Tensor alpha_t = alpha_t_[t];
    const at::Tensor sigma_t = sigma_t_[t];
    const at::Tensor sigma_s0 = sigma_t_[s0];
    const at::Tensor h = lambda_t - lambda_s0;
    const at::Tensor h_0 = lambda_s0 - lambda_s1;
    const at::Tensor r0 = h_0 / h;
    const at::Tensor& d0 = m0;
    const at::Tensor d1 = r0.reciprocal() * 1.0 * (m0 - m1);
    if (config_.solver_type == "heun") {
      return (sigma_t / sigma_s0) * sample - (alpha_t * (at::exp(-h) - 1.0)) * d0 +
             (alpha_t * ((at::exp(-h) - 1.0) / h + 1.0)) * d1;
    }
    // midpoint
    return (sigma_t / sigma_s0) * sample - (alpha_t * (at::exp(-h) - 1.0)) * d0 -
           (alpha_t * (at::exp(-h) - 1.0)) * 0.5 * d1;
  }

  const SchedulerConfig config_;
  const std::string spacing_;
  const bool karras_;
  at::Tensor alpha_t_, sigma_t_, lambda_t_;
  std::vector<float> train_sigmas_;

  // Per run (reset by SetTimesteps).
  std::vector<int64_t> ts_;
  std::array<at::Tensor, 2> model_outputs_;
  int lower_order_nums_ = 0;
};

}  // namespace

StatusOr<std::unique_ptr<Scheduler>> MakeDpmSolverScheduler(const SchedulerConfig& config, bool karras) {
  ASSIGN_OR_RETURN(NoiseTables tables, MakeNoiseTables(config, "DPMSolverMultistepScheduler",
                                                       /*allow_sigmoid=*/false, /*rescale_zero_snr=*/false));
  return std::unique_ptr<Scheduler>(new DpmSolverScheduler(config, std::move(tables), karras));
}

}  // namespace sdfarm::engine::internal
