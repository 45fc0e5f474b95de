// Internal to the scheduler implementations (scheduler.cc and the
// *_scheduler.cc files): the pieces several diffusers schedulers share, ported
// with diffusers' dtype choices (torch float32 for the tables, numpy float64
// for timestep spacing, interpolation and Karras sigmas), and one factory per
// class for MakeScheduler. Not for use outside worker/engine.
#ifndef SDFARM_WORKER_ENGINE_SCHEDULERS_INTERNAL_H_
#define SDFARM_WORKER_ENGINE_SCHEDULERS_INTERNAL_H_

#include <ATen/ATen.h>

#include <cmath>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "worker/engine/scheduler.h"
#include "worker/engine/scheduler_config.h"
#include "worker/engine/status.h"

namespace sdfarm::engine::internal {

// --- Training noise schedule -------------------------------------------------

struct NoiseTables {
  at::Tensor betas;           // float32 CPU [num_train_timesteps]
  at::Tensor alphas_cumprod;  // float32 CPU, torch.cumprod(1 - betas)
};

// The betas of config.beta_schedule / trained_betas exactly as diffusers'
// __init__ builds them. `allow_sigmoid`: only DDPM has the "sigmoid" schedule;
// `rescale_zero_snr`: only DDIM reads rescale_betas_zero_snr.
StatusOr<NoiseTables> MakeNoiseTables(const SchedulerConfig& config, std::string_view class_name, bool allow_sigmoid,
                                      bool rescale_zero_snr);

// sqrt((1 - acp) / acp) computed with torch in float32, as every sigma
// scheduler does before handing it to numpy.
std::vector<float> TrainingSigmas(const at::Tensor& alphas_cumprod);

// timestep_spacing, or the class's default when the file has none.
std::string ResolveSpacing(const SchedulerConfig& config, std::string_view class_default);

// --- numpy 1.24 arithmetic ---------------------------------------------------

// np.linspace(start, stop, num) in float64: i * step + start, last = stop.
std::vector<double> NpLinspace(double start, double stop, int64_t num);
// np.arange(start, stop, step) in float64: start + i * ((start + step) - start).
std::vector<double> NpArange(double start, double stop, double step);
// np.round: half to even.
inline double NpRound(double x) { return std::nearbyint(x); }
// np.interp(x, np.arange(len(fp)), fp) in float64.
std::vector<double> NpInterp(const std::vector<double>& x, const std::vector<float>& fp);
// Karras et al. (2022) sigmas, rho 7, as diffusers' _convert_to_karras with
// in_sigmas[-1] = sigma_min and in_sigmas[0] = sigma_max (the caller passes
// the ends in diffusers' order, whatever their magnitude).
std::vector<double> KarrasSigmas(double sigma_min, double sigma_max, int64_t num);
// diffusers' _sigma_to_t: fractional training timestep of `sigma` by linear
// interpolation in log-sigma (log_sigmas is np.log of the float32 table).
double SigmaToT(double sigma, const std::vector<float>& log_sigmas);

// Integer timesteps of DDIM / DDPM (descending) for a spacing, as their
// set_timesteps computes them. InvalidArgument when a timestep falls outside
// [0, num_train_timesteps).
StatusOr<std::vector<int64_t>> AlphaScheduleTimesteps(const std::string& spacing, int64_t num_train_timesteps,
                                                      int num_inference_steps, int64_t steps_offset);

// --- Tensor helpers ----------------------------------------------------------

// Model outputs arrive in the UNet's dtype; the scheduler math is float32.
inline at::Tensor AsFloat32(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

// A float32 CPU tensor holding `values`.
at::Tensor FloatTable(const std::vector<float>& values);
at::Tensor LongTable(const std::vector<int64_t>& values);

// Calls `noise` for like's shape and moves the CPU draw to like's device
// (through pinned memory without blocking for CUDA). Throws when `noise` is
// empty or returns the wrong shape.
at::Tensor DrawNoise(const NoiseFn& noise, const at::Tensor& like, std::string_view who);

// diffusers' _threshold_sample (dynamic thresholding, Imagen).
at::Tensor ThresholdSample(const at::Tensor& sample, double ratio, double max_value);

// add_noise of the alpha schedulers (PNDM, DDIM, DDPM, DPM-Solver) at timestep t.
at::Tensor AddNoiseWithAlphas(const at::Tensor& alphas_cumprod, int64_t t, const at::Tensor& original,
                              const at::Tensor& noise);

// --- The sigma schedulers' common part (Euler, Euler ancestral, LMS) ---------

// Timesteps (float32), sigmas (float32, trailing 0), init_noise_sigma,
// scale_model_input and add_noise are the same code in diffusers' three
// k-diffusion style schedulers.
class SigmaScheduler : public Scheduler {
 public:
  at::Tensor ScaleModelInput(const at::Tensor& sample, int64_t step_index) override;
  at::Tensor AddNoise(const at::Tensor& original, const at::Tensor& noise, int64_t step_index) const override;

 protected:
  // `karras`: use_karras_sigmas (EulerAncestral has none in diffusers 0.21.4).
  SigmaScheduler(const SchedulerConfig& config, NoiseTables tables, bool karras);

  // set_timesteps' shared part: fills timesteps_, sigmas_, init_noise_sigma_.
  Status ComputeSchedule(int num_inference_steps);
  // The 0-d float32 CPU sigma at index i (diffusers' self.sigmas[i]).
  at::Tensor Sigma(int64_t i) const { return sigmas_[i]; }
  // diffusers' x0 prediction, shared by Euler, Euler a and LMS. `eps_sigma`
  // scales the epsilon branch: Euler passes its sigma_hat there (equal to
  // sigma when s_churn is 0), the others pass sigma.
  at::Tensor PredictOriginalSample(const at::Tensor& sample, const at::Tensor& model_output, const at::Tensor& sigma,
                                   const at::Tensor& eps_sigma) const;

  int64_t num_train_timesteps_;
  std::string spacing_;
  int64_t steps_offset_;
  bool karras_;
  std::string prediction_type_;
  std::vector<float> train_sigmas_;  // ascending with t
  std::vector<float> log_sigmas_;

 private:
  void UpdateInitNoiseSigma();
};

// --- Factories (one per *_scheduler.cc) --------------------------------------

StatusOr<std::unique_ptr<Scheduler>> MakePndmScheduler(const SchedulerConfig& config);
StatusOr<std::unique_ptr<Scheduler>> MakeDdimScheduler(const SchedulerConfig& config);
StatusOr<std::unique_ptr<Scheduler>> MakeDdpmScheduler(const SchedulerConfig& config);
StatusOr<std::unique_ptr<Scheduler>> MakeEulerScheduler(const SchedulerConfig& config);
StatusOr<std::unique_ptr<Scheduler>> MakeEulerAncestralScheduler(const SchedulerConfig& config);
StatusOr<std::unique_ptr<Scheduler>> MakeLmsScheduler(const SchedulerConfig& config);
StatusOr<std::unique_ptr<Scheduler>> MakeDpmSolverScheduler(const SchedulerConfig& config, bool karras);

}  // namespace sdfarm::engine::internal

#endif  // SDFARM_WORKER_ENGINE_SCHEDULERS_INTERNAL_H_
