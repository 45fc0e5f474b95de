#include "worker/engine/scheduler.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <exception>
#include <numbers>
#include <string>
#include <utility>

#include "common/status_macros.h"
#include "worker/engine/schedulers_internal.h"

namespace sdfarm::engine {
namespace {

struct SamplerInfo {
  Sampler sampler;
  std::string_view name;
  A1111SamplerName a1111;
};

// The A1111 values, from its source (v1.9+; see the README's "Samplers"):
// sampler labels from modules/sd_samplers_timesteps.py (samplers_timesteps:
// 'DDIM', 'PLMS') and modules/sd_samplers_kdiffusion.py (samplers_k_diffusion:
// 'Euler a', 'Euler', 'LMS', 'DPM++ 2M' with options {'scheduler': 'karras'});
// schedule labels from modules/sd_schedulers.py (schedulers: 'Automatic',
// 'Uniform', 'Karras'); "Eta DDIM" from CompVisSampler.eta_infotext_field.
constexpr std::array<SamplerInfo, 8> kSamplers = {{
    {Sampler::kPndm, "pndm", {"PLMS", "Automatic", ""}},
    {Sampler::kDdim, "ddim", {"DDIM", "Automatic", ""}},
    {Sampler::kEuler, "euler", {"Euler", "Automatic", ""}},
    {Sampler::kEulerAncestral, "euler_a", {"Euler a", "Automatic", ""}},
    {Sampler::kLms, "lms", {"LMS", "Automatic", ""}},
    {Sampler::kDpmpp2m, "dpmpp_2m", {"DPM++ 2M", "Uniform", ""}},
    {Sampler::kDpmpp2mKarras, "dpmpp_2m_karras", {"DPM++ 2M", "Karras", ""}},
    {Sampler::kDdpm, "ddpm", {"DDIM", "Automatic", "1"}},
}};

const SamplerInfo& Info(Sampler s) {
  for (const SamplerInfo& info : kSamplers) {
    if (info.sampler == s) return info;
  }
  return kSamplers[0];  // unreachable for valid enum values
}

}  // namespace

StatusOr<Sampler> ParseSampler(std::string_view name) {
  std::string valid;
  for (const SamplerInfo& info : kSamplers) {
    if (info.name == name) return info.sampler;
    if (!valid.empty()) valid += ", ";
    valid += info.name;
  }
  return InvalidArgumentError("unknown sampler \"" + std::string(name) + "\"; valid samplers: " + valid);
}

std::string_view SamplerName(Sampler s) { return Info(s).name; }
A1111SamplerName A1111Name(Sampler s) { return Info(s).a1111; }
std::string_view SamplerDisplayName(Sampler s) { return Info(s).a1111.sampler; }

const std::vector<Sampler>& AllSamplers() {
  static const std::vector<Sampler>* const all = [] {
    auto* v = new std::vector<Sampler>();
    for (const SamplerInfo& info : kSamplers) v->push_back(info.sampler);
    return v;
  }();
  return *all;
}

at::Tensor Scheduler::ScaleModelInput(const at::Tensor& sample, int64_t step_index) {
  CheckStepIndex(step_index);
  return sample;
}

void Scheduler::CheckStepIndex(int64_t step_index) const {
  TORCH_CHECK(timesteps_.defined(), "scheduler: SetTimesteps must be called before stepping");
  TORCH_CHECK(step_index >= 0 && step_index < timesteps_.numel(), "scheduler: step index ", step_index,
              " is out of range [0, ", timesteps_.numel(), ")");
}

StatusOr<std::unique_ptr<Scheduler>> MakeScheduler(Sampler sampler, const SchedulerConfig& config) {
  try {
    switch (sampler) {
      case Sampler::kPndm: return internal::MakePndmScheduler(config);
      case Sampler::kDdim: return internal::MakeDdimScheduler(config);
      case Sampler::kDdpm: return internal::MakeDdpmScheduler(config);
      case Sampler::kEuler: return internal::MakeEulerScheduler(config);
      case Sampler::kEulerAncestral: return internal::MakeEulerAncestralScheduler(config);
      case Sampler::kLms: return internal::MakeLmsScheduler(config);
      case Sampler::kDpmpp2m: return internal::MakeDpmSolverScheduler(config, /*karras=*/false);
      case Sampler::kDpmpp2mKarras: return internal::MakeDpmSolverScheduler(config, /*karras=*/true);
    }
    return InvalidArgumentError("unknown sampler enum value " + std::to_string(static_cast<int>(sampler)));
  } catch (const std::exception& e) {
    return InternalError("building scheduler " + std::string(SamplerName(sampler)) + ": " + e.what());
  }
}

namespace internal {

// --- Training noise schedule -------------------------------------------------

namespace {

// diffusers' rescale_zero_terminal_snr (Lin et al. 2023, Algorithm 1), with
// the same torch operations.
at::Tensor RescaleZeroTerminalSnr(const at::Tensor& betas) {
  at::Tensor alphas = 1.0 - betas;
  at::Tensor alphas_cumprod = at::cumprod(alphas, 0);
  at::Tensor alphas_bar_sqrt = alphas_cumprod.sqrt();
  at::Tensor sqrt_0 = alphas_bar_sqrt[0].clone();
  at::Tensor sqrt_T = alphas_bar_sqrt[-1].clone();
  alphas_bar_sqrt -= sqrt_T;
  alphas_bar_sqrt *= sqrt_0 / (sqrt_0 - sqrt_T);
  at::Tensor alphas_bar = alphas_bar_sqrt.pow(2);
  at::Tensor ratios = alphas_bar.slice(0, 1) / alphas_bar.slice(0, 0, -1);
  return 1 - at::cat({alphas_bar.slice(0, 0, 1), ratios});
}

}  // namespace

StatusOr<NoiseTables> MakeNoiseTables(const SchedulerConfig& config, std::string_view class_name, bool allow_sigmoid,
                                      bool rescale_zero_snr) {
  const int64_t n = config.num_train_timesteps;
  at::Tensor betas;
  if (config.trained_betas) {
    betas = at::tensor(*config.trained_betas, at::kDouble).to(at::kFloat);
  } else if (config.beta_schedule == "linear") {
    betas = at::linspace(config.beta_start, config.beta_end, n, at::kFloat);
  } else if (config.beta_schedule == "scaled_linear") {
    // Latent diffusion's schedule: linear in sqrt(beta).
    betas = at::linspace(std::pow(config.beta_start, 0.5), std::pow(config.beta_end, 0.5), n, at::kFloat).pow(2);
  } else if (config.beta_schedule == "squaredcos_cap_v2") {
    // GLIDE's cosine schedule (betas_for_alpha_bar), in Python floats.
    auto alpha_bar = [](double t) {
      const double c = std::cos((t + 0.008) / 1.008 * std::numbers::pi / 2);
      return c * c;
    };
    std::vector<double> b;
    b.reserve(n);
    for (int64_t i = 0; i < n; ++i) {
      const double t1 = static_cast<double>(i) / n;
      const double t2 = static_cast<double>(i + 1) / n;
      b.push_back(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999));
    }
    betas = at::tensor(b, at::kDouble).to(at::kFloat);
  } else if (config.beta_schedule == "sigmoid" && allow_sigmoid) {
    betas = at::sigmoid(at::linspace(-6, 6, n, at::kFloat)) * (config.beta_end - config.beta_start) +
            config.beta_start;
  } else {
    return InvalidArgumentError("beta_schedule \"" + config.beta_schedule + "\" is not supported by " +
                                std::string(class_name));
  }
  if (rescale_zero_snr) betas = RescaleZeroTerminalSnr(betas);
  NoiseTables tables;
  tables.betas = betas.contiguous();
  tables.alphas_cumprod = at::cumprod(1.0 - betas, 0).contiguous();
  return tables;
}

std::vector<float> TrainingSigmas(const at::Tensor& alphas_cumprod) {
  at::Tensor s = ((1 - alphas_cumprod) / alphas_cumprod).pow(0.5).contiguous();
  return std::vector<float>(s.data_ptr<float>(), s.data_ptr<float>() + s.numel());
}

std::string ResolveSpacing(const SchedulerConfig& config, std::string_view class_default) {
  return config.timestep_spacing ? *config.timestep_spacing : std::string(class_default);
}

// --- numpy 1.24 arithmetic ---------------------------------------------------

std::vector<double> NpLinspace(double start, double stop, int64_t num) {
  std::vector<double> y(std::max<int64_t>(num, 0));
  if (num <= 0) return y;
  if (num == 1) {
    y[0] = start;
    return y;
  }
  const double div = static_cast<double>(num - 1);
  const double delta = stop - start;
  const double step = delta / div;
  for (int64_t i = 0; i < num; ++i) {
    y[i] = step == 0 ? (static_cast<double>(i) / div) * delta + start : static_cast<double>(i) * step + start;
  }
  y[num - 1] = stop;
  return y;
}

std::vector<double> NpArange(double start, double stop, double step) {
  const double len_f = std::ceil((stop - start) / step);
  const int64_t len = len_f > 0 ? static_cast<int64_t>(len_f) : 0;
  std::vector<double> y(len);
  if (len == 0) return y;
  y[0] = start;
  if (len == 1) return y;
  y[1] = start + step;
  // numpy's DOUBLE_fill extrapolates from the first two stored values.
  const double delta = y[1] - y[0];
  for (int64_t i = 2; i < len; ++i) y[i] = start + static_cast<double>(i) * delta;
  return y;
}

std::vector<double> NpInterp(const std::vector<double>& x, const std::vector<float>& fp) {
  const int64_t n = static_cast<int64_t>(fp.size());
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    if (std::isnan(v)) {
      out[i] = v;
    } else if (v < 0) {
      out[i] = fp.front();
    } else if (v >= static_cast<double>(n - 1)) {
      out[i] = fp.back();
    } else {
      const int64_t j = static_cast<int64_t>(std::floor(v));
      if (static_cast<double>(j) == v) {
        out[i] = fp[j];
      } else {
        const double slope = (static_cast<double>(fp[j + 1]) - fp[j]) / ((j + 1.0) - j);
        out[i] = slope * (v - static_cast<double>(j)) + fp[j];
      }
    }
  }
  return out;
}

std::vector<double> KarrasSigmas(double sigma_min, double sigma_max, int64_t num) {
  const double rho = 7.0;
  const std::vector<double> ramp = NpLinspace(0, 1, num);
  const double min_inv_rho = std::pow(sigma_min, 1 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> sigmas(ramp.size());
  for (size_t i = 0; i < ramp.size(); ++i) {
    sigmas[i] = std::pow(max_inv_rho + ramp[i] * (min_inv_rho - max_inv_rho), rho);
  }
  return sigmas;
}

double SigmaToT(double sigma, const std::vector<float>& log_sigmas) {
  const int64_t n = static_cast<int64_t>(log_sigmas.size());
  const double log_sigma = std::log(sigma);
  // np.cumsum(dists >= 0).argmax(): the first index where the running count
  // of table entries <= log_sigma reaches its final value.
  int64_t count = 0, best = -1, low_idx = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (log_sigma - static_cast<double>(log_sigmas[i]) >= 0) ++count;
    if (count > best) {
      best = count;
      low_idx = i;
    }
  }
  low_idx = std::min(low_idx, n - 2);
  const int64_t high_idx = low_idx + 1;
  const float low = log_sigmas[low_idx];
  const float high = log_sigmas[high_idx];
  // numpy scalar arithmetic: float32 - float32 stays float32.
  const float low_minus_high = low - high;
  double w = (static_cast<double>(low) - log_sigma) / static_cast<double>(low_minus_high);
  w = std::clamp(w, 0.0, 1.0);
  return (1 - w) * static_cast<double>(low_idx) + w * static_cast<double>(high_idx);
}

StatusOr<std::vector<int64_t>> AlphaScheduleTimesteps(const std::string& spacing, int64_t num_train_timesteps,
                                                      int num_inference_steps, int64_t steps_offset) {
  const int64_t n = num_inference_steps;
  if (n < 1 || n > num_train_timesteps) {
    return InvalidArgumentError("num_inference_steps must be in [1, " + std::to_string(num_train_timesteps) +
                                "], got " + std::to_string(n));
  }
  std::vector<int64_t> ts;
  if (spacing == "linspace") {
    for (double v : NpLinspace(0, static_cast<double>(num_train_timesteps - 1), n)) {
      ts.push_back(static_cast<int64_t>(NpRound(v)));
    }
    std::reverse(ts.begin(), ts.end());
  } else if (spacing == "leading") {
    const int64_t step_ratio = num_train_timesteps / n;
    for (int64_t i = n - 1; i >= 0; --i) ts.push_back(i * step_ratio + steps_offset);
  } else if (spacing == "trailing") {
    const double step_ratio = static_cast<double>(num_train_timesteps) / static_cast<double>(n);
    for (double v : NpArange(static_cast<double>(num_train_timesteps), 0, -step_ratio)) {
      ts.push_back(static_cast<int64_t>(NpRound(v)) - 1);
    }
  } else {
    return InvalidArgumentError("timestep_spacing \"" + spacing + "\" is not supported");
  }
  for (int64_t t : ts) {
    if (t < 0 || t >= num_train_timesteps) {
      return InvalidArgumentError("timestep " + std::to_string(t) + " (" + spacing + " spacing, " +
                                  std::to_string(n) + " steps, steps_offset " + std::to_string(steps_offset) +
                                  ") is outside [0, " + std::to_string(num_train_timesteps) + ")");
    }
  }
  return ts;
}

// --- Tensor helpers ----------------------------------------------------------

at::Tensor FloatTable(const std::vector<float>& values) {
  return at::tensor(at::ArrayRef<float>(values), at::kFloat);
}

at::Tensor LongTable(const std::vector<int64_t>& values) {
  return at::tensor(at::ArrayRef<int64_t>(values), at::kLong);
}

at::Tensor DrawNoise(const NoiseFn& noise, const at::Tensor& like, std::string_view who) {
  TORCH_CHECK(static_cast<bool>(noise), who, " draws noise in this step but no NoiseFn was given");
  at::Tensor n = noise(like.sizes());
  TORCH_CHECK(n.defined() && n.sizes() == like.sizes(), who, ": NoiseFn returned shape ",
              n.defined() ? n.sizes() : at::IntArrayRef{}, ", expected ", like.sizes());
  n = AsFloat32(n);
  if (n.device() == like.device()) return n;
  // A pinned staging copy lets the host-to-device copy run without waiting
  // for the work already queued on the GPU.
  if (n.is_cpu() && like.is_cuda()) return n.pin_memory().to(like.device(), at::kFloat, /*non_blocking=*/true);
  return n.to(like.device());
}

at::Tensor ThresholdSample(const at::Tensor& sample, double ratio, double max_value) {
  const at::ScalarType dtype = sample.scalar_type();
  at::Tensor x = (dtype == at::kFloat || dtype == at::kDouble) ? sample : sample.to(at::kFloat);
  const std::vector<int64_t> shape = sample.sizes().vec();
  x = x.reshape({shape[0], -1});
  at::Tensor s = at::quantile(x.abs(), ratio, /*dim=*/1);
  // Clamped to min 1, this is plain clipping to [-1, 1].
  s = at::clamp(s, at::Scalar(1), at::Scalar(max_value)).unsqueeze(1);
  x = at::minimum(at::maximum(x, -s), s) / s;
  return x.reshape(shape).to(dtype);
}

at::Tensor AddNoiseWithAlphas(const at::Tensor& alphas_cumprod, int64_t t, const at::Tensor& original,
                              const at::Tensor& noise) {
  // Every image gets the same timestep, so 0-d coefficients broadcast exactly
  // like diffusers' per-image [B, 1, 1, 1] ones.
  const at::Tensor acp = alphas_cumprod[t];
  const at::Tensor sqrt_alpha_prod = acp.pow(0.5);
  const at::Tensor sqrt_one_minus_alpha_prod = (1 - acp).pow(0.5);
  const at::Tensor x = AsFloat32(original);
  return sqrt_alpha_prod * x + sqrt_one_minus_alpha_prod * AsFloat32(noise).to(x.device());
}

// --- SigmaScheduler ----------------------------------------------------------

SigmaScheduler::SigmaScheduler(const SchedulerConfig& config, NoiseTables tables, bool karras)
    : num_train_timesteps_(config.num_train_timesteps),
      spacing_(ResolveSpacing(config, "linspace")),
      steps_offset_(config.steps_offset),
      karras_(karras),
      prediction_type_(config.prediction_type) {
  betas_ = std::move(tables.betas);
  alphas_cumprod_ = std::move(tables.alphas_cumprod);
  train_sigmas_ = TrainingSigmas(alphas_cumprod_);
  log_sigmas_.reserve(train_sigmas_.size());
  for (float s : train_sigmas_) log_sigmas_.push_back(std::log(s));
  // Before set_timesteps diffusers holds the reversed training sigmas + 0.
  std::vector<float> initial(train_sigmas_.rbegin(), train_sigmas_.rend());
  initial.push_back(0.0f);
  sigmas_ = FloatTable(initial);
  UpdateInitNoiseSigma();
}

void SigmaScheduler::UpdateInitNoiseSigma() {
  const at::Tensor max_sigma = sigmas_.max();
  if (spacing_ == "linspace" || spacing_ == "trailing") {
    init_noise_sigma_ = max_sigma.item<double>();
  } else {
    init_noise_sigma_ = (max_sigma.pow(2) + 1).pow(0.5).item<double>();
  }
}

Status SigmaScheduler::ComputeSchedule(int num_inference_steps) {
  const int64_t n = num_inference_steps;
  const int64_t train = num_train_timesteps_;
  if (n < 1 || n > train) {
    return InvalidArgumentError("num_inference_steps must be in [1, " + std::to_string(train) + "], got " +
                                std::to_string(n));
  }
  // diffusers builds these timesteps as np.float32.
  std::vector<float> ts;
  if (spacing_ == "linspace") {
    for (double v : NpLinspace(0, static_cast<double>(train - 1), n)) ts.push_back(static_cast<float>(v));
    std::reverse(ts.begin(), ts.end());
  } else if (spacing_ == "leading") {
    const int64_t step_ratio = train / n;
    for (int64_t i = n - 1; i >= 0; --i) {
      ts.push_back(static_cast<float>(i * step_ratio) + static_cast<float>(steps_offset_));
    }
  } else if (spacing_ == "trailing") {
    const double step_ratio = static_cast<double>(train) / static_cast<double>(n);
    for (double v : NpArange(static_cast<double>(train), 0, -step_ratio)) {
      ts.push_back(static_cast<float>(NpRound(v)) - 1.0f);
    }
  } else {
    return InvalidArgumentError("timestep_spacing \"" + spacing_ + "\" is not supported");
  }

  std::vector<double> x(ts.begin(), ts.end());
  std::vector<double> sigmas = NpInterp(x, train_sigmas_);
  if (karras_) {
    sigmas = KarrasSigmas(/*sigma_min=*/sigmas.back(), /*sigma_max=*/sigmas.front(), n);
    // Fractional timesteps, which diffusers keeps in float64.
    std::vector<double> karras_ts;
    for (double sigma : sigmas) karras_ts.push_back(SigmaToT(sigma, log_sigmas_));
    timesteps_ = at::tensor(karras_ts, at::kDouble);
  } else {
    timesteps_ = FloatTable(ts);
  }
  std::vector<float> sigmas_f(sigmas.begin(), sigmas.end());
  sigmas_f.push_back(0.0f);
  sigmas_ = FloatTable(sigmas_f);
  UpdateInitNoiseSigma();
  return OkStatus();
}

at::Tensor SigmaScheduler::PredictOriginalSample(const at::Tensor& sample, const at::Tensor& model_output,
                                                 const at::Tensor& sigma, const at::Tensor& eps_sigma) const {
  if (prediction_type_ == "epsilon") return sample - eps_sigma * model_output;
  if (prediction_type_ == "v_prediction") {  // c_out * output + c_skip * input
    return model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (sample / (sigma.pow(2) + 1));
  }
  return model_output;  // "sample" (rejected for Euler a by its factory, as in diffusers)
}

at::Tensor SigmaScheduler::ScaleModelInput(const at::Tensor& sample, int64_t step_index) {
  CheckStepIndex(step_index);
  const at::Tensor sigma = Sigma(step_index);
  return AsFloat32(sample) / (sigma.pow(2) + 1).pow(0.5);
}

at::Tensor SigmaScheduler::AddNoise(const at::Tensor& original, const at::Tensor& noise, int64_t step_index) const {
  CheckStepIndex(step_index);
  const at::Tensor x = AsFloat32(original);
  return x + AsFloat32(noise).to(x.device()) * Sigma(step_index);
}

}  // namespace internal
}  // namespace sdfarm::engine
