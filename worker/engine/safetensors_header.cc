#include "worker/engine/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

namespace sdfarm::engine {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeEntry {
  StDtype dtype;
  std::string_view name;
  int size;
};
constexpr DtypeEntry kDtypes[] = {
    {StDtype::kF64, "F64", 8},  {StDtype::kF32, "F32", 4}, {StDtype::kF16, "F16", 2},
    {StDtype::kBF16, "BF16", 2}, {StDtype::kI64, "I64", 8}, {StDtype::kI32, "I32", 4},
    {StDtype::kI16, "I16", 2},  {StDtype::kI8, "I8", 1},   {StDtype::kU8, "U8", 1},
    {StDtype::kBool, "BOOL", 1},
};

Status Bad(const std::string& tensor, const std::string& what) {
  return DataLossError("safetensors header: tensor '" + tensor + "': " + what);
}

}  // namespace

std::string_view StDtypeName(StDtype dtype) {
  for (const auto& e : kDtypes) if (e.dtype == dtype) return e.name;
  return "?";
}

int StDtypeSize(StDtype dtype) {
  for (const auto& e : kDtypes) if (e.dtype == dtype) return e.size;
  return 0;
}

bool ParseStDtype(std::string_view name, StDtype* out) {
  for (const auto& e : kDtypes) {
    if (e.name == name) {
      *out = e.dtype;
      return true;
    }
  }
  return false;
}

int64_t StTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view prefix, uint64_t file_size) {
  if (file_size < 8 || prefix.size() < 8) {
    return DataLossError("safetensors: file is " + std::to_string(file_size) +
                         " bytes, too short for the 8-byte header length");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(prefix[i]);
  if (n > kMaxHeaderBytes) {
    return DataLossError("safetensors: header length " + std::to_string(n) +
                         " exceeds the 100 MB limit (corrupt or not a safetensors file)");
  }
  if (n > file_size - 8) {
    return DataLossError("safetensors: header length " + std::to_string(n) + " runs past the end of the " +
                         std::to_string(file_size) + "-byte file (truncated?)");
  }
  if (prefix.size() < 8 + n) return InternalError("safetensors: header prefix not fully read");

  nlohmann::json j = nlohmann::json::parse(prefix.substr(8, n), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return DataLossError("safetensors: header is not valid JSON");
  if (!j.is_object()) return DataLossError("safetensors: header JSON is not an object");

  SafetensorsHeader header;
  header.data_start = 8 + n;
  const uint64_t data_size = file_size - header.data_start;

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return DataLossError("safetensors: __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return DataLossError("safetensors: __metadata__ value for '" + m.key() + "' is not a string");
        }
        header.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) return Bad(name, "entry is not an object");
    StTensorInfo info;
    info.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) return Bad(name, "missing or non-string dtype");
    if (!ParseStDtype(dt->get<std::string>(), &info.dtype)) {
      return Bad(name, "unsupported dtype " + dt->get<std::string>());
    }
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) return Bad(name, "missing shape");
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return Bad(name, "shape has a negative or non-integer dimension");
      uint64_t dim = d.get<uint64_t>();
      if (dim > (uint64_t{1} << 48)) return Bad(name, "absurd dimension " + std::to_string(dim));
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim / 8) {
        return Bad(name, "shape overflows");
      }
      numel *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return Bad(name, "data_offsets must be [begin, end] with non-negative integers");
    }
    info.begin = (*off)[0].get<uint64_t>();
    info.end = (*off)[1].get<uint64_t>();
    if (info.begin > info.end) return Bad(name, "data_offsets begin > end");
    if (info.end > data_size) {
      return Bad(name, "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                           ") run past the " + std::to_string(data_size) +
                           "-byte data section (file truncated or offsets lie)");
    }
    const uint64_t expect = numel * static_cast<uint64_t>(StDtypeSize(info.dtype));
    if (info.end - info.begin != expect) {
      return Bad(name, "data_offsets span " + std::to_string(info.end - info.begin) + " bytes but shape x " +
                           std::string(StDtypeName(info.dtype)) + " needs " + std::to_string(expect));
    }
    header.tensors.push_back(std::move(info));
  }

  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const StTensorInfo& a, const StTensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  for (size_t i = 1; i < header.tensors.size(); ++i) {
    const auto& prev = header.tensors[i - 1];
    const auto& cur = header.tensors[i];
    if (cur.begin < prev.end && cur.begin != cur.end && prev.begin != prev.end) {
      return Bad(cur.name, "data overlaps tensor '" + prev.name + "'");
    }
  }
  return header;
}

std::string SerializeSafetensorsHeader(std::vector<StTensorInfo>& tensors,
                                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    j["__metadata__"] = m;
  }
  uint64_t offset = 0;
  for (auto& t : tensors) {
    t.begin = offset;
    t.end = offset + static_cast<uint64_t>(t.numel()) * StDtypeSize(t.dtype);
    offset = t.end;
    j[t.name] = {{"dtype", std::string(StDtypeName(t.dtype))},
                 {"shape", t.shape},
                 {"data_offsets", {t.begin, t.end}}};
  }
  std::string body = j.dump();
  while ((8 + body.size()) % 8 != 0) body.push_back(' ');
  std::string out(8, '\0');
  uint64_t n = body.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + body;
}

}  // namespace sdfarm::engine
