// LMSDiscreteScheduler (diffusers 0.21.4): linear multistep (order 4) over
// the ODE derivatives in sigma, k-diffusion's sample_lms. The coefficients
// are integrals of Lagrange basis polynomials over [sigma_i, sigma_{i+1}];
// diffusers integrates them numerically (scipy quad); they are polynomials
// of degree <= 3, so a 4-point Gauss-Legendre rule gives them exactly.
#include <array>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "common/status_macros.h"
#include "worker/engine/schedulers_internal.h"

namespace sdfarm::engine::internal {
namespace {

constexpr int kLmsOrder = 4;

class LmsScheduler final : public SigmaScheduler {
 public:
  LmsScheduler(const SchedulerConfig& config, NoiseTables tables)
      : SigmaScheduler(config, std::move(tables), config.use_karras_sigmas) {}

  Status SetTimesteps(int num_inference_steps) override {
    RETURN_IF_ERROR(ComputeSchedule(num_inference_steps));
    const at::Tensor s = sigmas_.contiguous();
    sigma_values_.assign(s.data_ptr<float>(), s.data_ptr<float>() + s.numel());
    derivatives_.clear();
    return OkStatus();
  }

  at::Tensor Step(const at::Tensor& model_output_in, int64_t step_index, const at::Tensor& sample_in,
                  const NoiseFn& noise) override {
    CheckStepIndex(step_index);
    const at::Tensor model_output = AsFloat32(model_output_in);
    const at::Tensor sample = AsFloat32(sample_in);
    const at::Tensor sigma = Sigma(step_index);

    // 1. predicted x0
    const at::Tensor pred_original_sample = PredictOriginalSample(sample, model_output, sigma, sigma);

    // 2. ODE derivative, kept for the multistep history
    derivatives_.push_back((sample - pred_original_sample) / sigma);
    if (derivatives_.size() > kLmsOrder) derivatives_.pop_front();

    // 3. coefficients. As in diffusers the order comes from the step index,
    // not the history length: an img2img run starting at index > 0 uses
    // order-4 coefficients with a shorter history (zip truncates).
    const int64_t order = std::min<int64_t>(step_index + 1, kLmsOrder);

    // 4. prev = sample + sum(coeff * derivative), newest derivative first.
    at::Tensor sum;
    auto d = derivatives_.rbegin();
    for (int64_t k = 0; k < order && d != derivatives_.rend(); ++k, ++d) {
      const at::Tensor term = *d * LmsCoefficient(order, step_index, k);
      sum = sum.defined() ? sum + term : term;
    }
    return sample + sum;
  }

 private:
  // Integral over [sigma_t, sigma_{t+1}] of the Lagrange basis polynomial that
  // is 1 at sigma_{t - current_order} and 0 at the other sigma_{t - k}, k < order.
  double LmsCoefficient(int64_t order, int64_t t, int64_t current_order) const {
    auto basis = [&](double tau) {
      double prod = 1.0;
      for (int64_t k = 0; k < order; ++k) {
        if (k == current_order) continue;
        const double s_k = sigma_values_[t - k];
        prod *= (tau - s_k) / (static_cast<double>(sigma_values_[t - current_order]) - s_k);
      }
      return prod;
    };
    // 4-point Gauss-Legendre: exact for degree <= 7.
    static constexpr std::array<double, 4> kNodes = {-0.8611363115940526, -0.3399810435848563,
                                                     0.3399810435848563, 0.8611363115940526};
    static constexpr std::array<double, 4> kWeights = {0.3478548451374538, 0.6521451548625461,
                                                       0.6521451548625461, 0.3478548451374538};
    const double a = sigma_values_[t];
    const double b = sigma_values_[t + 1];
    const double half = 0.5 * (b - a);
    const double mid = 0.5 * (b + a);
    double integral = 0.0;
    for (size_t i = 0; i < kNodes.size(); ++i) integral += kWeights[i] * basis(mid + half * kNodes[i]);
    return half * integral;
  }

  std::vector<float> sigma_values_;
  std::deque<at::Tensor> derivatives_;
};

}  // namespace

StatusOr<std::unique_ptr<Scheduler>> MakeLmsScheduler(const SchedulerConfig& config) {
  ASSIGN_OR_RETURN(NoiseTables tables, MakeNoiseTables(config, "LMSDiscreteScheduler", /*allow_sigmoid=*/false,
                                                       /*rescale_zero_snr=*/false));
  return std::unique_ptr<Scheduler>(new LmsScheduler(config, std::move(tables)));
}

}  // namespace sdfarm::engine::internal
