// SchedulerConfig: the keys of a diffusers `scheduler/scheduler_config.json`
// that the engine's schedulers (scheduler.h) read, parsed into native types.
//
// It mirrors diffusers' `<Class>.from_config(json)`: a key present in the file
// wins; an absent key takes the chosen scheduler class's own default. Most
// defaults are the same for every class and are plain members here; the few
// that differ between classes (timestep_spacing, set_alpha_to_one, clip_sample,
// variance_type) are optional and resolved by the class (e.g. SD 1.5's file
// has no timestep_spacing, so PNDM/DDIM/DDPM space "leading" and
// Euler/EulerA/LMS/DPM-Solver "linspace", as in diffusers 0.21.4).
//
// `_class_name` is kept for information only: the sampler the user picks
// decides the class (MakeScheduler in scheduler.h). Unknown keys are ignored,
// as from_config does.
//
//   ASSIGN_OR_RETURN(SchedulerConfig config, SchedulerConfig::FromFile(dir + "/scheduler/scheduler_config.json"));
//   ASSIGN_OR_RETURN(auto scheduler, MakeScheduler(Sampler::kEuler, config));
#ifndef SDFARM_WORKER_ENGINE_SCHEDULER_CONFIG_H_
#define SDFARM_WORKER_ENGINE_SCHEDULER_CONFIG_H_

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "worker/engine/status.h"

namespace sdfarm::engine {

struct SchedulerConfig {
  // The noise schedule the model was trained with.
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  // "linear", "scaled_linear", "squaredcos_cap_v2", or "sigmoid" (DDPM only).
  std::string beta_schedule = "linear";
  // Replaces the beta_* keys when present (one beta per training timestep).
  std::optional<std::vector<double>> trained_betas;
  // Only DDIM reads this (diffusers 0.21.4 has it on DDIMScheduler alone).
  bool rescale_betas_zero_snr = false;

  // What the UNet predicts: "epsilon", "v_prediction" or "sample".
  std::string prediction_type = "epsilon";

  // Inference timestep placement: "linspace", "leading" or "trailing".
  // Absent: "leading" for PNDM/DDIM/DDPM, "linspace" for the others.
  std::optional<std::string> timestep_spacing;
  int64_t steps_offset = 0;

  // PNDM / DDIM: alpha product used past the last step. Absent: PNDM false, DDIM true.
  std::optional<bool> set_alpha_to_one;
  // PNDM: PLMS only (SD's setting) instead of 12 Runge-Kutta warm-up calls.
  bool skip_prk_steps = false;

  // DDIM / DDPM x0 clipping. Absent: true (both classes' default).
  std::optional<bool> clip_sample;
  double clip_sample_range = 1.0;
  // Dynamic thresholding (DDIM / DDPM / DPM-Solver).
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;
  double sample_max_value = 1.0;

  // DDPM: "fixed_small" (absent), "fixed_small_log", "fixed_large", "learned",
  // "learned_range". DPM-Solver: absent, "learned" or "learned_range".
  std::optional<std::string> variance_type;

  // Euler / LMS: Karras sigmas when true. DPM-Solver ignores it: the sampler
  // name (dpmpp_2m vs dpmpp_2m_karras) decides.
  bool use_karras_sigmas = false;
  // Euler: only "linear" is supported.
  std::string interpolation_type = "linear";

  // DPM-Solver (the sampler fixes algorithm_type dpmsolver++ and solver_order 2).
  bool lower_order_final = true;
  std::string solver_type = "midpoint";  // or "heun"
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();

  // Informational: the class that wrote the file ("PNDMScheduler").
  std::string class_name;

  // InvalidArgument for malformed JSON, a key of the wrong type, or an unknown
  // beta_schedule / prediction_type / timestep_spacing / variance_type / solver_type.
  static StatusOr<SchedulerConfig> FromJson(std::string_view text);
  // NotFound when the file cannot be read; the path prefixes any parse error.
  static StatusOr<SchedulerConfig> FromFile(const std::string& path);
};

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_SCHEDULER_CONFIG_H_
