// Diffusion schedulers (samplers): numerically faithful ports of Hugging Face
// diffusers v0.21.4's PNDM, DDIM, DDPM, Euler, Euler ancestral, LMS and
// DPM-Solver++ 2M (plain and Karras) schedulers, behind one small interface.
//
// The pipeline drives a scheduler by step index (an index into timesteps()),
// which is what diffusers' pipelines do implicitly by iterating
// `scheduler.timesteps`:
//
//   ASSIGN_OR_RETURN(Sampler sampler, ParseSampler("euler_a"));
//   ASSIGN_OR_RETURN(std::unique_ptr<Scheduler> s, MakeScheduler(sampler, model.scheduler_config));
//   RETURN_IF_ERROR(s->SetTimesteps(steps));
//   at::Tensor latents = noise * s->init_noise_sigma();           // txt2img
//   for (int64_t i = 0; i < s->timesteps().numel(); ++i) {
//     at::Tensor x_in = s->ScaleModelInput(latents, i);
//     at::Tensor eps = unet(x_in, s->timesteps()[i], ...);      // + guidance
//     latents = s->Step(eps, i, latents, noise_fn);
//   }
//
// img2img (diffusers' get_timesteps): first = t_start * order() with
// t_start = steps - min(int(steps * strength), steps); latents =
// AddNoise(encoded, noise, first); then the loop above from i = first.
//
// Step must be called once per index, in increasing order, after
// SetTimesteps (PNDM, LMS and DPM-Solver keep a history of model outputs;
// SetTimesteps resets it). Schedulers are not thread-safe; use one per job.
//
// Numerics follow diffusers on CPU: the tables (betas, alphas_cumprod,
// sigmas, timesteps) live on the CPU, built with diffusers' dtypes (torch
// float32; numpy float64 for timestep spacing, interpolation and Karras
// sigmas); per-step coefficients are 0-d float32 CPU tensors computed with the
// same operations in the same order; the tensor math runs in float32 on the
// device of `sample` (0-d CPU tensors mix with device tensors without any
// device-to-host synchronisation). On CPU the golden runs match bit for bit
// (LMS to ~2e-7: diffusers integrates its coefficients numerically).
#ifndef SDFARM_WORKER_ENGINE_SCHEDULER_H_
#define SDFARM_WORKER_ENGINE_SCHEDULER_H_

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "worker/engine/scheduler_config.h"
#include "worker/engine/status.h"

namespace sdfarm::engine {

// PNDM = PNDMScheduler, DDIM = DDIMScheduler (eta 0), Euler =
// EulerDiscreteScheduler, EulerAncestral = EulerAncestralDiscreteScheduler,
// LMS = LMSDiscreteScheduler, Dpmpp2m = DPMSolverMultistepScheduler
// (dpmsolver++, order 2, lower_order_final), Dpmpp2mKarras = the same with
// Karras sigmas, DDPM = DDPMScheduler.
enum class Sampler { kPndm, kDdim, kEuler, kEulerAncestral, kLms, kDpmpp2m, kDpmpp2mKarras, kDdpm };

// Accepts the names below ("euler_a"); the error lists the valid names.
StatusOr<Sampler> ParseSampler(std::string_view name);
// "pndm", "ddim", "euler", "euler_a", "lms", "dpmpp_2m", "dpmpp_2m_karras", "ddpm".
std::string_view SamplerName(Sampler s);

// How AUTOMATIC1111 (v1.9 and later) writes the equivalent sampler in its
// "parameters" text, so that A1111's reader (sd_samplers.
// get_sampler_and_scheduler, which Civitai follows) picks that sampler and
// schedule back:
//
//   ours             Sampler    Schedule type  Eta DDIM
//   pndm             PLMS       Automatic
//   ddim             DDIM       Automatic
//   euler            Euler      Automatic
//   euler_a          Euler a    Automatic
//   lms              LMS        Automatic
//   dpmpp_2m         DPM++ 2M   Uniform
//   dpmpp_2m_karras  DPM++ 2M   Karras
//   ddpm             DDIM       Automatic      1
//
// A1111 reads an unknown sampler name as its first sampler (DPM++ 2M) and a
// missing "Schedule type" as "Automatic", which for DPM++ 2M means Karras;
// hence "Uniform" (the model's own sigmas) for plain DPM++ 2M. A1111 has no
// DDPM sampler: DDIM with eta 1 is DDPM's ancestral sampler (Song et al.
// 2021, sec. 4.1), and A1111 writes eta != 0 as "Eta DDIM". The README's
// "Samplers" table cites the A1111 source of each value.
struct A1111SamplerName {
  std::string_view sampler;        // "Sampler: ..."
  std::string_view schedule_type;  // "Schedule type: ..."
  std::string_view eta_ddim;       // "Eta DDIM: ...", empty when A1111 writes none (eta 0)
};
A1111SamplerName A1111Name(Sampler s);
// A1111Name(s).sampler: "PLMS", "DDIM", "Euler", "Euler a", "LMS",
// "DPM++ 2M" (plain and Karras: the schedule is written apart), "DDIM".
std::string_view SamplerDisplayName(Sampler s);
const std::vector<Sampler>& AllSamplers();

// Standard-normal draws on the CPU in float32 for the given (full batch)
// shape, made by the caller from its torch generators in diffusers' order
// (with a generator list: one draw of shape (1, ...) per image, concatenated).
// A scheduler calls it exactly where diffusers calls randn_tensor with the
// generator: EulerAncestral every step, DDPM every step whose timestep is > 0,
// Euler every step (the draw is unused with s_churn = 0, but it advances the
// generator), the others never.
using NoiseFn = std::function<at::Tensor(at::IntArrayRef shape)>;

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Computes the timesteps (and sigmas) for a run and resets all per-run
  // state. InvalidArgument when num_inference_steps is not in
  // [1, num_train_timesteps] or the spacing would index past the tables.
  virtual Status SetTimesteps(int num_inference_steps) = 0;

  // As diffusers holds them, on the CPU: int64 for PNDM/DDIM/DDPM/DPM-Solver,
  // float32 for Euler/EulerA/LMS (float64 when use_karras_sigmas gives them
  // fractional values; the UNet casts timesteps to float32 either way). PNDM
  // with skip_prk_steps has N + 1 entries for N steps (its second timestep is
  // repeated); DPM-Solver drops repeats, so it may have fewer than N.
  const at::Tensor& timesteps() const { return timesteps_; }
  int64_t num_timesteps() const { return timesteps_.defined() ? timesteps_.numel() : 0; }
  // float32 CPU: Euler/EulerA/LMS: N + 1 (trailing 0); DPM-Solver: the 1000
  // training sigmas (plain) or the N Karras sigmas in increasing order (as
  // diffusers 0.21.4 holds them; its step math does not read them).
  // Undefined for PNDM/DDIM/DDPM.
  const at::Tensor& sigmas() const { return sigmas_; }
  // Multiply the initial noise by this (txt2img); 1 except for the sigma
  // schedulers (Euler/EulerA/LMS: max sigma, or sqrt(max^2 + 1) with "leading"
  // spacing).
  double init_noise_sigma() const { return init_noise_sigma_; }
  // diffusers' `order` attribute: 1 for every scheduler here.
  int order() const { return 1; }
  // The training noise schedule (float32 CPU, num_train_timesteps entries).
  const at::Tensor& betas() const { return betas_; }
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }

  // Identity except for Euler/EulerA/LMS (sample / sqrt(sigma^2 + 1)).
  virtual at::Tensor ScaleModelInput(const at::Tensor& sample, int64_t step_index);

  // One denoising step from timesteps()[step_index]; returns the previous
  // (less noisy) sample in float32 on sample's device. model_output may be
  // fp16/bf16 (it is cast to float32 first). Throws std::exception
  // (c10::Error) on misuse: index out of range, SetTimesteps not called, a
  // needed NoiseFn missing.
  virtual at::Tensor Step(const at::Tensor& model_output, int64_t step_index, const at::Tensor& sample,
                          const NoiseFn& noise) = 0;

  // img2img: diffusers' add_noise(original, noise, timesteps[step_index]
  // repeated per image): sqrt(acp) * x + sqrt(1 - acp) * noise for the
  // alpha schedulers, x + sigma * noise for Euler/EulerA/LMS. float32 on
  // original's device. Throws on misuse like Step.
  virtual at::Tensor AddNoise(const at::Tensor& original, const at::Tensor& noise, int64_t step_index) const = 0;

 protected:
  Scheduler() = default;
  // Throws unless SetTimesteps ran and 0 <= step_index < num_timesteps().
  void CheckStepIndex(int64_t step_index) const;

  at::Tensor betas_;
  at::Tensor alphas_cumprod_;
  at::Tensor timesteps_;
  at::Tensor sigmas_;
  double init_noise_sigma_ = 1.0;
};

// Builds the scheduler for `sampler` from a model's scheduler config (absent
// keys take that class's diffusers defaults). InvalidArgument for settings the
// class does not support (e.g. prediction_type "sample" with euler_a, as in
// diffusers). Call SetTimesteps before use.
StatusOr<std::unique_ptr<Scheduler>> MakeScheduler(Sampler sampler, const SchedulerConfig& config);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_SCHEDULER_H_
