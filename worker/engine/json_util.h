// Reading diffusers / transformers config.json files with clear errors.
//
//   ASSIGN_OR_RETURN(nlohmann::json j, ReadJsonFile(dir + "/config.json"));
//   int layers = 0;
//   RETURN_IF_ERROR(GetJson(j, "num_hidden_layers", &layers, path));        // required
//   RETURN_IF_ERROR(GetJsonOr(j, "layer_norm_eps", &eps, 1e-5, path));      // optional
//
// A JSON null counts as absent (diffusers writes `"class_embed_type": null`).
#ifndef SDFARM_WORKER_ENGINE_JSON_UTIL_H_
#define SDFARM_WORKER_ENGINE_JSON_UTIL_H_

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "worker/engine/status.h"

namespace sdfarm::engine {

StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

template <typename T>
Status GetJson(const nlohmann::json& j, const std::string& key, T* out, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return InvalidArgumentError(where + ": missing key '" + key + "'");
  try {
    *out = it->get<T>();
  } catch (const std::exception& e) {
    return InvalidArgumentError(where + ": key '" + key + "' has the wrong type (" + it->dump() + ")");
  }
  return OkStatus();
}

template <typename T>
Status GetJsonOr(const nlohmann::json& j, const std::string& key, T* out, const T& fallback,
                 const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    *out = fallback;
    return OkStatus();
  }
  return GetJson(j, key, out, where);
}

// An int or a list of ints (diffusers allows both for e.g. attention_head_dim):
// returns `n` values, repeating a scalar. Absent or null: `fallback` repeated
// when given (the class's default), else an error.
Status GetIntOrList(const nlohmann::json& j, const std::string& key, size_t n, std::vector<int64_t>* out,
                    const std::string& where, std::optional<int64_t> fallback = std::nullopt);

}  // namespace sdfarm::engine

#endif  // SDFARM_WORKER_ENGINE_JSON_UTIL_H_
