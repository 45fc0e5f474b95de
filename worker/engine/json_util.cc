#include "worker/engine/json_util.h"

#include <fstream>
#include <sstream>

namespace sdfarm::engine {

StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot open " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError(path + ": not valid JSON");
  if (!j.is_object()) return InvalidArgumentError(path + ": expected a JSON object");
  return j;
}

Status GetIntOrList(const nlohmann::json& j, const std::string& key, size_t n, std::vector<int64_t>* out,
                    const std::string& where, std::optional<int64_t> fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (!fallback) return InvalidArgumentError(where + ": missing key '" + key + "'");
    out->assign(n, *fallback);
    return OkStatus();
  }
  out->clear();
  if (it->is_number_integer()) {
    out->assign(n, it->get<int64_t>());
    return OkStatus();
  }
  if (!it->is_array() || it->size() != n) {
    return InvalidArgumentError(where + ": key '" + key + "' must be an integer or a list of " + std::to_string(n) +
                                " integers, got " + it->dump());
  }
  for (const auto& v : *it) {
    if (!v.is_number_integer()) return InvalidArgumentError(where + ": key '" + key + "' holds a non-integer");
    out->push_back(v.get<int64_t>());
  }
  return OkStatus();
}

}  // namespace sdfarm::engine
