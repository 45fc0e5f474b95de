// PNDMScheduler (diffusers 0.21.4): pseudo numerical methods (Liu et al.
// 2022). With skip_prk_steps (Stable Diffusion's setting) it is crowsonkb's
// PLMS: a 4th-order linear multistep method over the model outputs, warmed up
// by one Heun-like step that re-evaluates the second timestep, which is why
// the timestep list repeats its second entry (N + 1 entries for N steps).
// Without skip_prk_steps, 12 Runge-Kutta calls (3 RK4 steps) come first.
#include <memory>
#include <string>
#include <vector>

#include "common/status_macros.h"
#include "worker/engine/schedulers_internal.h"

namespace sdfarm::engine::internal {
namespace {

class PndmScheduler final : public Scheduler {
 public:
  PndmScheduler(const SchedulerConfig& config, NoiseTables tables)
      : num_train_timesteps_(config.num_train_timesteps),
        spacing_(ResolveSpacing(config, "leading")),
        steps_offset_(config.steps_offset),
        skip_prk_steps_(config.skip_prk_steps),
        v_prediction_(config.prediction_type == "v_prediction") {
    betas_ = std::move(tables.betas);
    alphas_cumprod_ = std::move(tables.alphas_cumprod);
    final_alpha_cumprod_ = config.set_alpha_to_one.value_or(false) ? at::scalar_tensor(1.0, at::kFloat)
                                                                   : alphas_cumprod_[0];
  }

  Status SetTimesteps(int num_inference_steps) override {
    const int64_t n = num_inference_steps;
    const int64_t train = num_train_timesteps_;
    if (n < 1 || n > train) {
      return InvalidArgumentError("num_inference_steps must be in [1, " + std::to_string(train) + "], got " +
                                  std::to_string(n));
    }
    // Ascending, as diffusers' self._timesteps.
    std::vector<int64_t> base;
    if (spacing_ == "linspace") {
      for (double v : NpLinspace(0, static_cast<double>(train - 1), n)) base.push_back(static_cast<int64_t>(NpRound(v)));
    } else if (spacing_ == "leading") {
      const int64_t step_ratio = train / n;
      for (int64_t i = 0; i < n; ++i) base.push_back(i * step_ratio + steps_offset_);
    } else if (spacing_ == "trailing") {
      const double step_ratio = static_cast<double>(train) / static_cast<double>(n);
      std::vector<double> desc = NpArange(static_cast<double>(train), 0, -step_ratio);
      for (auto it = desc.rbegin(); it != desc.rend(); ++it) base.push_back(static_cast<int64_t>(NpRound(*it)) - 1);
    } else {
      return InvalidArgumentError("timestep_spacing \"" + spacing_ + "\" is not supported");
    }

    std::vector<int64_t> prk, plms;
    if (skip_prk_steps_) {
      // _timesteps[:-1] + _timesteps[-2:-1] + _timesteps[-1:], reversed: the
      // second-largest timestep appears twice.
      std::vector<int64_t> asc(base.begin(), base.end() - 1);
      if (base.size() >= 2) asc.push_back(base[base.size() - 2]);
      asc.push_back(base.back());
      plms.assign(asc.rbegin(), asc.rend());
    } else {
      const int64_t order = 4;
      if (n < order) {
        return InvalidArgumentError("PNDM without skip_prk_steps needs at least 4 steps, got " + std::to_string(n));
      }
      // np.array(_timesteps[-4:]).repeat(2) + np.tile([0, train // n // 2], 4)
      std::vector<int64_t> rk;
      for (int64_t i = n - order; i < n; ++i) {
        rk.push_back(base[i]);
        rk.push_back(base[i] + train / n / 2);
      }
      // (rk[:-1].repeat(2)[1:-1])[::-1]
      std::vector<int64_t> repeated;
      for (size_t i = 0; i + 1 < rk.size(); ++i) {
        repeated.push_back(rk[i]);
        repeated.push_back(rk[i]);
      }
      prk.assign(repeated.rbegin() + 1, repeated.rend() - 1);
      // _timesteps[:-3][::-1]
      plms.assign(base.rbegin() + 3, base.rend());
    }
    std::vector<int64_t> all = prk;
    all.insert(all.end(), plms.begin(), plms.end());
    for (int64_t t : all) {
      if (t < 0 || t >= train) {
        return InvalidArgumentError("PNDM timestep " + std::to_string(t) + " is outside [0, " +
                                    std::to_string(train) + ") for " + std::to_string(n) + " steps");
      }
    }

    num_inference_steps_ = n;
    prk_timesteps_ = std::move(prk);
    ts_ = std::move(all);
    timesteps_ = LongTable(ts_);
    ets_.clear();
    counter_ = 0;
    cur_model_output_ = at::Tensor();
    cur_sample_ = at::Tensor();
    return OkStatus();
  }

  at::Tensor Step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample,
                  const NoiseFn& noise) override {
    CheckStepIndex(step_index);
    const at::Tensor out = AsFloat32(model_output);
    const at::Tensor x = AsFloat32(sample);
    // diffusers steps by the timestep value and its own call counter, not by
    // the index: img2img starting mid-list runs the warm-up from there.
    const int64_t timestep = ts_[step_index];
    if (counter_ < static_cast<int64_t>(prk_timesteps_.size()) && !skip_prk_steps_) {
      return StepPrk(out, timestep, x);
    }
    return StepPlms(out, timestep, x);
  }

  at::Tensor AddNoise(const at::Tensor& original, const at::Tensor& noise, int64_t step_index) const override {
    CheckStepIndex(step_index);
    return AddNoiseWithAlphas(alphas_cumprod_, ts_[step_index], original, noise);
  }

 private:
  at::Tensor StepPrk(const at::Tensor& model_output_in, int64_t timestep, const at::Tensor& sample) {
    const int64_t train = num_train_timesteps_;
    const int64_t diff_to_prev = (counter_ % 2) ? 0 : train / num_inference_steps_ / 2;
    const int64_t prev_timestep = timestep - diff_to_prev;
    timestep = prk_timesteps_[counter_ / 4 * 4];

    at::Tensor model_output = model_output_in;
    // RK4 weights 1/6, 1/3, 1/3, 1/6 accumulated over four calls.
    if (counter_ % 4 == 0) {
      cur_model_output_ = AccumulateRk(model_output * (1.0 / 6));
      ets_.push_back(model_output);
      cur_sample_ = sample;
    } else if ((counter_ - 1) % 4 == 0 || (counter_ - 2) % 4 == 0) {
      cur_model_output_ = AccumulateRk(model_output * (1.0 / 3));
    } else {
      model_output = cur_model_output_ + model_output * (1.0 / 6);
      cur_model_output_ = at::Tensor();
    }
    const at::Tensor& cur_sample = cur_sample_.defined() ? cur_sample_ : sample;
    at::Tensor prev = PrevSample(cur_sample, timestep, prev_timestep, model_output);
    ++counter_;
    return prev;
  }

  // self.cur_model_output += term, where cur_model_output starts as the int 0.
  at::Tensor AccumulateRk(const at::Tensor& term) const {
    return cur_model_output_.defined() ? cur_model_output_ + term : term;
  }

  at::Tensor StepPlms(const at::Tensor& model_output_in, int64_t timestep, const at::Tensor& sample_in) {
    TORCH_CHECK(skip_prk_steps_ || ets_.size() >= 3,
                "PNDM can only run PLMS steps after 12 Runge-Kutta warm-up steps (skip_prk_steps is false)");
    const int64_t ratio = num_train_timesteps_ / num_inference_steps_;
    int64_t prev_timestep = timestep - ratio;
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(model_output_in);
    } else {
      // The warm-up's second call redoes the first step (timestep + ratio ->
      // timestep) from the saved sample with the average of both outputs.
      prev_timestep = timestep;
      timestep = timestep + ratio;
    }

    at::Tensor model_output = model_output_in;
    at::Tensor sample = sample_in;
    const size_t n = ets_.size();
    if (n == 1 && counter_ == 0) {
      cur_sample_ = sample;
    } else if (n == 1 && counter_ == 1) {
      model_output = (model_output + ets_[n - 1]) / 2;
      sample = cur_sample_;
      cur_sample_ = at::Tensor();
    } else if (n == 2) {
      model_output = (ets_[n - 1] * 3 - ets_[n - 2]) / 2;
    } else if (n == 3) {
      model_output = (ets_[n - 1] * 23 - ets_[n - 2] * 16 + ets_[n - 3] * 5) / 12;
    } else {
      model_output =
          (ets_[n - 1] * 55 - ets_[n - 2] * 59 + ets_[n - 3] * 37 - ets_[n - 4] * 9) * (1.0 / 24);
    }
    at::Tensor prev = PrevSample(sample, timestep, prev_timestep, model_output);
    ++counter_;
    return prev;
  }

  // Formula (9) of the PNDM paper, term by term as diffusers' _get_prev_sample.
  at::Tensor PrevSample(const at::Tensor& sample, int64_t timestep, int64_t prev_timestep,
                        at::Tensor model_output) const {
    const at::Tensor alpha_prod_t = alphas_cumprod_[timestep];
    const at::Tensor alpha_prod_t_prev = prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
    const at::Tensor beta_prod_t = 1 - alpha_prod_t;
    const at::Tensor beta_prod_t_prev = 1 - alpha_prod_t_prev;
    if (v_prediction_) {
      model_output = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
    }
    const at::Tensor sample_coeff = (alpha_prod_t_prev / alpha_prod_t).pow(0.5);
    const at::Tensor model_output_denom_coeff =
        alpha_prod_t * beta_prod_t_prev.pow(0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).pow(0.5);
    return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / model_output_denom_coeff;
  }

  const int64_t num_train_timesteps_;
  const std::string spacing_;
  const int64_t steps_offset_;
  const bool skip_prk_steps_;
  const bool v_prediction_;
  at::Tensor final_alpha_cumprod_;

  // Per run (reset by SetTimesteps).
  int64_t num_inference_steps_ = 0;
  std::vector<int64_t> ts_;
  std::vector<int64_t> prk_timesteps_;
  std::vector<at::Tensor> ets_;
  int64_t counter_ = 0;
  at::Tensor cur_model_output_;  // undefined = diffusers' int 0
  at::Tensor cur_sample_;        // undefined = None
};

}  // namespace

StatusOr<std::unique_ptr<Scheduler>> MakePndmScheduler(const SchedulerConfig& config) {
  if (config.prediction_type != "epsilon" && config.prediction_type != "v_prediction") {
    return InvalidArgumentError("pndm supports prediction_type epsilon and v_prediction, not \"" +
                                config.prediction_type + "\"");
  }
  ASSIGN_OR_RETURN(NoiseTables tables, MakeNoiseTables(config, "PNDMScheduler", /*allow_sigmoid=*/false,
                                                       /*rescale_zero_snr=*/false));
  return std::unique_ptr<Scheduler>(new PndmScheduler(config, std::move(tables)));
}

}  // namespace sdfarm::engine::internal
