#include "worker/engine/scheduler_config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <initializer_list>
#include <sstream>

#include "common/status_macros.h"

namespace sdfarm::engine {
namespace {

using Json = nlohmann::json;

std::string Join(std::initializer_list<std::string_view> names) {
  std::string out;
  for (std::string_view n : names) {
    if (!out.empty()) out += ", ";
    out += '"';
    out += n;
    out += '"';
  }
  return out;
}

Status CheckOneOf(std::string_view key, const std::string& value, std::initializer_list<std::string_view> allowed) {
  if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return OkStatus();
  return InvalidArgumentError("scheduler config: unknown " + std::string(key) + " \"" + value + "\" (expected one of " +
                              Join(allowed) + ")");
}

Status TypeError(std::string_view key, std::string_view expected, const Json& v) {
  return InvalidArgumentError("scheduler config: \"" + std::string(key) + "\" must be " + std::string(expected) +
                              ", got " + v.dump());
}

// Each reader leaves `out` untouched when the key is absent or null: from_config
// then uses the class default (an explicit null in the SD files means "default").
Status ReadDouble(const Json& j, std::string_view key, double* out) {
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return OkStatus();
  if (!it->is_number()) return TypeError(key, "a number", *it);
  *out = it->get<double>();
  return OkStatus();
}

Status ReadInt(const Json& j, std::string_view key, int64_t* out) {
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return OkStatus();
  if (it->is_number_integer()) {
    *out = it->get<int64_t>();
    return OkStatus();
  }
  if (it->is_number_float()) {
    const double d = it->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9e15) {
      *out = static_cast<int64_t>(d);
      return OkStatus();
    }
  }
  return TypeError(key, "an integer", *it);
}

Status ReadBool(const Json& j, std::string_view key, bool* out) {
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return OkStatus();
  if (!it->is_boolean()) return TypeError(key, "true or false", *it);
  *out = it->get<bool>();
  return OkStatus();
}

Status ReadOptionalBool(const Json& j, std::string_view key, std::optional<bool>* out) {
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return OkStatus();
  bool v = false;
  RETURN_IF_ERROR(ReadBool(j, key, &v));
  *out = v;
  return OkStatus();
}

Status ReadString(const Json& j, std::string_view key, std::string* out) {
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return OkStatus();
  if (!it->is_string()) return TypeError(key, "a string", *it);
  *out = it->get<std::string>();
  return OkStatus();
}

Status ReadOptionalString(const Json& j, std::string_view key, std::optional<std::string>* out) {
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return OkStatus();
  std::string v;
  RETURN_IF_ERROR(ReadString(j, key, &v));
  *out = std::move(v);
  return OkStatus();
}

}  // namespace

StatusOr<SchedulerConfig> SchedulerConfig::FromJson(std::string_view text) {
  Json j = Json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("scheduler config: not valid JSON");
  if (!j.is_object()) return InvalidArgumentError("scheduler config: expected a JSON object");

  SchedulerConfig c;
  RETURN_IF_ERROR(ReadInt(j, "num_train_timesteps", &c.num_train_timesteps));
  RETURN_IF_ERROR(ReadDouble(j, "beta_start", &c.beta_start));
  RETURN_IF_ERROR(ReadDouble(j, "beta_end", &c.beta_end));
  RETURN_IF_ERROR(ReadString(j, "beta_schedule", &c.beta_schedule));
  RETURN_IF_ERROR(ReadBool(j, "rescale_betas_zero_snr", &c.rescale_betas_zero_snr));
  RETURN_IF_ERROR(ReadString(j, "prediction_type", &c.prediction_type));
  RETURN_IF_ERROR(ReadOptionalString(j, "timestep_spacing", &c.timestep_spacing));
  RETURN_IF_ERROR(ReadInt(j, "steps_offset", &c.steps_offset));
  RETURN_IF_ERROR(ReadOptionalBool(j, "set_alpha_to_one", &c.set_alpha_to_one));
  RETURN_IF_ERROR(ReadBool(j, "skip_prk_steps", &c.skip_prk_steps));
  RETURN_IF_ERROR(ReadOptionalBool(j, "clip_sample", &c.clip_sample));
  RETURN_IF_ERROR(ReadDouble(j, "clip_sample_range", &c.clip_sample_range));
  RETURN_IF_ERROR(ReadBool(j, "thresholding", &c.thresholding));
  RETURN_IF_ERROR(ReadDouble(j, "dynamic_thresholding_ratio", &c.dynamic_thresholding_ratio));
  RETURN_IF_ERROR(ReadDouble(j, "sample_max_value", &c.sample_max_value));
  RETURN_IF_ERROR(ReadOptionalString(j, "variance_type", &c.variance_type));
  RETURN_IF_ERROR(ReadBool(j, "use_karras_sigmas", &c.use_karras_sigmas));
  RETURN_IF_ERROR(ReadString(j, "interpolation_type", &c.interpolation_type));
  RETURN_IF_ERROR(ReadBool(j, "lower_order_final", &c.lower_order_final));
  RETURN_IF_ERROR(ReadString(j, "solver_type", &c.solver_type));
  RETURN_IF_ERROR(ReadDouble(j, "lambda_min_clipped", &c.lambda_min_clipped));
  RETURN_IF_ERROR(ReadString(j, "_class_name", &c.class_name));

  if (auto it = j.find("trained_betas"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return TypeError("trained_betas", "an array of numbers or null", *it);
    std::vector<double> betas;
    betas.reserve(it->size());
    for (const Json& b : *it) {
      if (!b.is_number()) return TypeError("trained_betas", "an array of numbers or null", *it);
      betas.push_back(b.get<double>());
    }
    c.trained_betas = std::move(betas);
  }

  if (c.num_train_timesteps < 2 || c.num_train_timesteps > 100000) {
    return InvalidArgumentError("scheduler config: num_train_timesteps must be in [2, 100000], got " +
                                std::to_string(c.num_train_timesteps));
  }
  if (c.trained_betas && static_cast<int64_t>(c.trained_betas->size()) != c.num_train_timesteps) {
    return InvalidArgumentError("scheduler config: trained_betas has " + std::to_string(c.trained_betas->size()) +
                                " values but num_train_timesteps is " + std::to_string(c.num_train_timesteps));
  }
  if (c.steps_offset < 0 || c.steps_offset >= c.num_train_timesteps) {
    return InvalidArgumentError("scheduler config: steps_offset must be in [0, num_train_timesteps), got " +
                                std::to_string(c.steps_offset));
  }
  if (!c.trained_betas) {
    RETURN_IF_ERROR(CheckOneOf("beta_schedule", c.beta_schedule,
                               {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"}));
  }
  RETURN_IF_ERROR(CheckOneOf("prediction_type", c.prediction_type, {"epsilon", "v_prediction", "sample"}));
  if (c.timestep_spacing) {
    RETURN_IF_ERROR(CheckOneOf("timestep_spacing", *c.timestep_spacing, {"linspace", "leading", "trailing"}));
  }
  if (c.variance_type) {
    RETURN_IF_ERROR(CheckOneOf("variance_type", *c.variance_type,
                               {"fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned",
                                "learned_range"}));
  }
  // diffusers' DPM-Solver maps the other solvers' names onto "midpoint".
  if (c.solver_type == "logrho" || c.solver_type == "bh1" || c.solver_type == "bh2") c.solver_type = "midpoint";
  RETURN_IF_ERROR(CheckOneOf("solver_type", c.solver_type, {"midpoint", "heun"}));
  RETURN_IF_ERROR(CheckOneOf("interpolation_type", c.interpolation_type, {"linear", "log_linear"}));
  return c;
}

StatusOr<SchedulerConfig> SchedulerConfig::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot read scheduler config " + path);
  std::ostringstream text;
  text << in.rdbuf();
  StatusOr<SchedulerConfig> config = FromJson(text.str());
  if (!config.ok()) return config.status().WithContext(path);
  return config;
}

}  // namespace sdfarm::engine
