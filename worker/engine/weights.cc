#include "worker/engine/weights.h"

#include <cmath>
#include <map>
#include <set>
#include <sstream>

namespace sdfarm::engine {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

}  // namespace

ParamSlot& ParamSet::Scope::Add(const std::string& name, std::vector<int64_t> shape, at::Tensor* slot,
                                const std::string& init) const {
  ParamSlot s;
  s.name = Join(name);
  s.shape = std::move(shape);
  s.tensor = slot;
  s.init = init;
  set_->slots_.push_back(std::move(s));
  return set_->slots_.back();
}

int64_t ParamSet::NumElements() const {
  int64_t n = 0;
  for (const auto& s : slots_) {
    int64_t k = 1;
    for (int64_t d : s.shape) k *= d;
    n += k;
  }
  return n;
}

bool IsIgnorableBuffer(const std::string& name) {
  return name == "text_model.embeddings.position_ids";
}

Status StatusFromException(const std::exception& e, const std::string& what) {
  std::string msg = e.what();
  // LibTorch's messages carry a C++ backtrace after the first line.
  const size_t cut = msg.find("\nException raised from");
  if (cut != std::string::npos) msg.resize(cut);
  if (msg.find("out of memory") != std::string::npos || msg.find("OutOfMemory") != std::string::npos ||
      msg.find("DefaultCPUAllocator: can't allocate") != std::string::npos) {
    return ResourceExhaustedError(what + ": out of memory: " + msg);
  }
  return InternalError(what + ": " + msg);
}

Status LoadParams(ParamSet& params, const std::vector<std::shared_ptr<SafetensorsFile>>& files,
                  const at::Device& device, at::ScalarType dtype) {
  StatusOr<TensorSource> src = TensorSource::FromFiles(files);
  if (!src.ok()) return src.status();
  return LoadParams(params, *src, device, dtype);
}

namespace {
// "'name' in file" or, for a renamed tensor, "'name' (stored as 'key') in file".
std::string Where(const TensorSource::Entry& e) {
  std::string s = "'" + e.name + "'";
  if (!e.stored_as.empty() && e.stored_as != e.name) s += " (stored as '" + e.stored_as + "')";
  return s + " in " + e.file;
}
}  // namespace

Status LoadParams(ParamSet& params, const TensorSource& source, const at::Device& device, at::ScalarType dtype) {
  std::set<std::string> used;
  try {
    for (auto& slot : params.slots()) {
      const TensorSource::Entry* src = source.Find(slot.name);
      std::string found_as = src != nullptr ? slot.name : std::string();
      for (const auto& alias : slot.aliases) {
        const TensorSource::Entry* a = source.Find(alias);
        if (a == nullptr) continue;
        if (src != nullptr) {
          return InvalidArgumentError("both '" + found_as + "' and its legacy name '" + alias + "' are present in " +
                                      a->file);
        }
        src = a;
        found_as = alias;
      }
      if (src == nullptr) {
        return NotFoundError("missing tensor '" + slot.name + "' (shape " + ShapeString(slot.shape) + ") in " +
                             source.description());
      }
      used.insert(found_as);
      const std::vector<int64_t>& shape = src->shape;
      // Old checkpoints store the VAE attention projections as 1x1 convolutions.
      const bool conv_as_linear = shape.size() == 4 && slot.shape.size() == 2 && shape[2] == 1 && shape[3] == 1 &&
                                  shape[0] == slot.shape[0] && shape[1] == slot.shape[1];
      if (shape != slot.shape && !conv_as_linear) {
        return InvalidArgumentError("tensor " + Where(*src) + " has shape " + ShapeString(shape) +
                                    ", the model config needs " + ShapeString(slot.shape));
      }
      const std::string dt(StDtypeName(src->dtype));
      if (dt != "F32" && dt != "F16" && dt != "BF16" && dt != "F64") {
        return InvalidArgumentError("tensor " + Where(*src) + " has dtype " + dt + ", expected a floating-point type");
      }
      auto t = src->get();
      if (!t.ok()) return t.status();
      at::Tensor w = conv_as_linear ? t->reshape(slot.shape) : *t;
      *slot.tensor = w.to(device, dtype, /*non_blocking=*/false, /*copy=*/true);
      if (src->done) src->done();
    }
  } catch (const std::exception& e) {
    return StatusFromException(e, "loading weights to " + device.str());
  }
  for (const auto& e : source.entries()) {
    if (used.count(e.name) == 0 && !IsIgnorableBuffer(e.name)) {
      return InvalidArgumentError("tensor " + Where(e) +
                                  " is not used by the model its config describes (wrong config or wrong file?)");
    }
  }
  return OkStatus();
}

void RandomizeParams(ParamSet& params, uint64_t seed, const at::Device& device, at::ScalarType dtype) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (auto& slot : params.slots()) {
    at::Tensor t;
    if (slot.init == "ones") {
      t = at::ones(slot.shape, at::kFloat);
    } else if (slot.init == "zeros") {
      t = at::zeros(slot.shape, at::kFloat);
    } else if (slot.shape.size() >= 2) {
      // Variance-preserving (1 / sqrt(fan_in)), so deep random models stay finite in fp16.
      int64_t fan_in = 1;
      for (size_t i = 1; i < slot.shape.size(); ++i) fan_in *= slot.shape[i];
      t = at::randn(slot.shape, gen, at::kFloat) / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1)));
    } else {
      t = at::randn(slot.shape, gen, at::kFloat) * 0.02;
    }
    *slot.tensor = t.to(device, dtype);
  }
}

}  // namespace sdfarm::engine
