#include "worker/engine/lora.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <optional>
#include <sstream>
#include <utility>

#include "common/status_macros.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/sha256.h"
#include "worker/engine/weights.h"

namespace sdfarm::engine {
namespace fs = std::filesystem;
namespace {

enum class Role { kDown, kUp, kAlpha };

// What one tensor name of a LoRA file says, before matching it to the model.
struct ParsedKey {
  LoraTarget target = LoraTarget::kUNet;
  std::string module;        // dotted path, or (kohya) the underscored form
  bool underscored = false;  // kohya: `module` must be resolved through the underscore map
  Role role = Role::kDown;
};

bool StartsWith(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool EndsWith(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

std::string ShapeString(at::IntArrayRef shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

std::optional<ParsedKey> ParseKohya(const std::string& key) {
  ParsedKey k;
  std::string rest;
  if (StartsWith(key, "lora_unet_")) {
    k.target = LoraTarget::kUNet;
    rest = key.substr(10);
  } else if (StartsWith(key, "lora_te_")) {
    k.target = LoraTarget::kTextEncoder;
    rest = key.substr(8);
  } else {
    return std::nullopt;
  }
  const size_t dot = rest.find('.');
  if (dot == std::string::npos) return std::nullopt;
  const std::string suffix = rest.substr(dot + 1);
  if (suffix == "lora_down.weight") {
    k.role = Role::kDown;
  } else if (suffix == "lora_up.weight") {
    k.role = Role::kUp;
  } else if (suffix == "alpha") {
    k.role = Role::kAlpha;
  } else {
    return std::nullopt;
  }
  k.module = rest.substr(0, dot);
  k.underscored = true;
  return k;
}

std::optional<ParsedKey> ParseDiffusers(const std::string& key) {
  ParsedKey k;
  std::string rest;
  if (StartsWith(key, "unet.")) {
    rest = key.substr(5);
  } else if (StartsWith(key, "text_encoder.")) {
    k.target = LoraTarget::kTextEncoder;
    rest = key.substr(13);
  } else if (StartsWith(key, "down_blocks.") || StartsWith(key, "mid_block.") || StartsWith(key, "up_blocks.")) {
    rest = key;  // attention-processor files (save_attn_procs) name UNet modules without a prefix
  } else {
    return std::nullopt;
  }
  static const std::pair<const char*, Role> kSuffixes[] = {
      {".lora_linear_layer.down.weight", Role::kDown}, {".lora_linear_layer.up.weight", Role::kUp},
      {".lora.down.weight", Role::kDown},              {".lora.up.weight", Role::kUp},
      {".lora_A.weight", Role::kDown},                 {".lora_B.weight", Role::kUp},
      {".lora_down.weight", Role::kDown},              {".lora_up.weight", Role::kUp},
      {".alpha", Role::kAlpha},
  };
  for (const auto& [suffix, role] : kSuffixes) {
    if (EndsWith(rest, suffix)) {
      k.module = rest.substr(0, rest.size() - std::string(suffix).size());
      k.role = role;
      return k;
    }
  }
  // diffusers <= 0.21 attention processors: <attn>.processor.<proj>_lora.{down,up}.weight
  const size_t proc = rest.rfind(".processor.");
  if (proc == std::string::npos) return std::nullopt;
  std::string tail = rest.substr(proc + 11);  // "to_q_lora.down.weight"
  std::string proj;
  for (const auto& [suffix, role] : {std::pair<const char*, Role>{"_lora.down.weight", Role::kDown},
                                     std::pair<const char*, Role>{"_lora.up.weight", Role::kUp}}) {
    if (EndsWith(tail, suffix)) {
      proj = tail.substr(0, tail.size() - std::string(suffix).size());
      k.role = role;
    }
  }
  if (proj.empty() || proj.find('.') != std::string::npos) return std::nullopt;
  if (proj == "to_out") proj = "to_out.0";
  k.module = rest.substr(0, proc) + "." + proj;
  return k;
}

// Module paths of one network: dotted path -> weight tensor, and the kohya
// underscored form -> dotted path (an underscored form two paths share is
// left out: it cannot be resolved).
struct ModuleIndex {
  std::map<std::string, at::Tensor*> weight_of;
  std::map<std::string, std::string> dotted_of;

  explicit ModuleIndex(const NamedTensors& params) {
    std::map<std::string, int> count;
    for (const auto& [name, tensor] : params) {
      if (!EndsWith(name, ".weight")) continue;
      const std::string module = name.substr(0, name.size() - 7);
      weight_of[module] = tensor;
      std::string u = module;
      std::replace(u.begin(), u.end(), '.', '_');
      if (++count[u] == 1) dotted_of[u] = module;
    }
    for (const auto& [u, n] : count) {
      if (n > 1) dotted_of.erase(u);
    }
  }
};

StatusOr<std::string> LoraWeightsFile(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFoundError("LoRA " + path + " does not exist");
  if (fs::is_directory(path, ec)) {
    const std::string file = (fs::path(path) / "pytorch_lora_weights.safetensors").string();
    if (fs::is_regular_file(file, ec)) return file;
    std::string msg = "LoRA folder " + path + " has no pytorch_lora_weights.safetensors";
    if (fs::exists(fs::path(path) / "pytorch_lora_weights.bin", ec)) {
      msg += " (only pytorch_lora_weights.bin, a PyTorch pickle, which sdfarm does not load: convert it to "
             "safetensors)";
    }
    return NotFoundError(msg);
  }
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin") {
    return InvalidArgumentError("LoRA " + path + ": " + ext +
                                " files are PyTorch pickles (they can run code when loaded), which sdfarm does not "
                                "load: use the .safetensors version of the LoRA");
  }
  if (ext != ".safetensors") {
    return InvalidArgumentError("LoRA " + path + ": expected a .safetensors file or a folder holding "
                                "pytorch_lora_weights.safetensors");
  }
  return path;
}

std::string LoraName(const std::string& path) {
  fs::path p(path);
  while (p.has_parent_path() && p.filename().empty()) p = p.parent_path();  // "dir/" -> "dir"
  std::error_code ec;
  return fs::is_directory(p, ec) ? p.filename().string() : p.stem().string();
}

// Whether up @ down fits `weight`: Linear [out, in] or Conv2d [out, in, kh, kw].
bool Fits(const at::Tensor& weight, const at::Tensor& down, const at::Tensor& up) {
  if (weight.dim() != 2 && weight.dim() != 4) return false;
  if (down.dim() != 2 && down.dim() != 4) return false;
  if (up.dim() != 2 && !(up.dim() == 4 && up.size(2) == 1 && up.size(3) == 1)) return false;
  if (up.size(1) != down.size(0)) return false;  // rank
  if (up.size(0) != weight.size(0) || down.size(1) != weight.size(1)) return false;
  if (down.dim() == 4) {
    if (weight.dim() != 4 || down.size(2) != weight.size(2) || down.size(3) != weight.size(3)) return false;
  } else if (weight.dim() == 4 && (weight.size(2) != 1 || weight.size(3) != 1)) {
    return false;
  }
  return true;
}

}  // namespace

StatusOr<std::shared_ptr<const LoraFile>> ReadLora(const std::string& path, const NamedTensors& unet,
                                                   const NamedTensors& text_encoder) {
  ASSIGN_OR_RETURN(std::string file, LoraWeightsFile(path));
  ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> st, SafetensorsFile::Open(file));
  const ModuleIndex unet_index(unet), te_index(text_encoder);
  auto out = std::make_shared<LoraFile>();
  out->file = file;
  out->info.name = LoraName(path);
  ASSIGN_OR_RETURN(std::string sha, Sha256File(file, /*addnet=*/true));
  out->info.hash = sha.substr(0, 12);

  struct Parts {
    const StTensorInfo* down = nullptr;
    const StTensorInfo* up = nullptr;
    const StTensorInfo* alpha = nullptr;
  };
  std::map<std::pair<LoraTarget, std::string>, Parts> parts;
  std::vector<std::pair<LoraTarget, std::string>> order;
  const std::string what = "LoRA " + out->info.name + " (" + file + ")";
  bool any_lora_key = false;
  const StTensorInfo* first_unmatched = nullptr;
  for (const StTensorInfo& t : st->tensors()) {
    std::optional<ParsedKey> k = ParseKohya(t.name);
    if (!k) k = ParseDiffusers(t.name);
    if (!k) {
      if (!first_unmatched) first_unmatched = &t;
      continue;
    }
    any_lora_key = true;
    const ModuleIndex& index = k->target == LoraTarget::kUNet ? unet_index : te_index;
    std::string module = k->module;
    if (k->underscored) {
      auto it = index.dotted_of.find(module);
      module = it == index.dotted_of.end() ? std::string() : it->second;
    }
    if (module.empty() || index.weight_of.count(module) == 0) {
      if (!first_unmatched) first_unmatched = &t;
      continue;
    }
    const auto id = std::make_pair(k->target, module);
    auto [it, inserted] = parts.try_emplace(id);
    if (inserted) order.push_back(id);
    const StTensorInfo** slot = k->role == Role::kDown ? &it->second.down
                                : k->role == Role::kUp ? &it->second.up
                                                       : &it->second.alpha;
    if (*slot != nullptr) {
      return InvalidArgumentError(what + ": tensors '" + (*slot)->name + "' and '" + t.name +
                                  "' both adapt module '" + module + "'");
    }
    *slot = &t;
  }
  if (!any_lora_key) {
    return InvalidArgumentError(what + " holds no LoRA tensors" +
                                (st->tensors().empty() ? std::string(" (the file is empty)")
                                                       : " (first tensor '" + st->tensors().front().name +
                                                             "'): is it a model checkpoint rather than a LoRA?"));
  }
  if (first_unmatched != nullptr) {
    return InvalidArgumentError(what + ": tensor '" + first_unmatched->name +
                                "' matches no module of this model: the LoRA is for another model (e.g. SD 2.x or "
                                "SDXL), or of a kind sdfarm does not read (LyCORIS LoHa/LoKr)");
  }

  try {
    c10::InferenceMode guard;
    for (const auto& id : order) {
      const Parts& p = parts.at(id);
      const std::string& module = id.second;
      if (p.down == nullptr || p.up == nullptr) {
        return InvalidArgumentError(what + ": module '" + module + "' has a LoRA " +
                                    (p.down ? "down" : "up") + " matrix but no " + (p.down ? "up" : "down") +
                                    " matrix");
      }
      LoraModule m;
      m.target = id.first;
      m.module = module;
      ASSIGN_OR_RETURN(at::Tensor down, st->Get(p.down->name));
      ASSIGN_OR_RETURN(at::Tensor up, st->Get(p.up->name));
      m.down = down.clone();  // owned, not a view of the mapped file
      m.up = up.clone();
      const at::Tensor& weight =
          *(id.first == LoraTarget::kUNet ? unet_index : te_index).weight_of.at(module);
      if (!Fits(weight, m.down, m.up)) {
        return InvalidArgumentError(what + " does not fit this model (a LoRA for another architecture?): module '" +
                                    module + "' has weight " + ShapeString(weight.sizes()) + ", the LoRA has down " +
                                    ShapeString(m.down.sizes()) + " and up " + ShapeString(m.up.sizes()));
      }
      if (p.alpha != nullptr) {
        ASSIGN_OR_RETURN(at::Tensor alpha, st->Get(p.alpha->name));
        if (alpha.numel() != 1) {
          return InvalidArgumentError(what + ": '" + p.alpha->name + "' should be a scalar, has shape " +
                                      ShapeString(alpha.sizes()));
        }
        m.alpha_over_rank = alpha.to(at::kDouble).item<double>() / static_cast<double>(m.down.size(0));
      }
      if (!std::isfinite(m.alpha_over_rank) || !m.down.to(at::kFloat).isfinite().all().item<bool>() ||
          !m.up.to(at::kFloat).isfinite().all().item<bool>()) {
        return InvalidArgumentError(what + ": module '" + module + "' holds non-finite values");
      }
      out->modules.push_back(std::move(m));
    }
  } catch (const std::exception& e) {
    return StatusFromException(e, "reading " + what);
  }
  return std::shared_ptr<const LoraFile>(std::move(out));
}

LoraMerger::LoraMerger(NamedTensors unet, NamedTensors text_encoder, at::Device device)
    : unet_(std::move(unet)), text_encoder_(std::move(text_encoder)), device_(device) {}

StatusOr<std::shared_ptr<const LoraFile>> LoraMerger::Load(const std::string& path) {
  auto it = cache_.find(path);
  if (it != cache_.end()) {
    it->second.last_use = ++uses_;
    return it->second.file;
  }
  ASSIGN_OR_RETURN(std::shared_ptr<const LoraFile> f, ReadLora(path, unet_, text_encoder_));
  // Forget the least recently used files that are not applied now.
  while (cache_.size() >= kMaxCached) {
    auto oldest = cache_.end();
    for (auto c = cache_.begin(); c != cache_.end(); ++c) {
      const bool applied = std::any_of(applied_.begin(), applied_.end(),
                                       [&](const LoraRef& l) { return l.path == c->first; });
      if (!applied && (oldest == cache_.end() || c->second.last_use < oldest->second.last_use)) oldest = c;
    }
    if (oldest == cache_.end()) break;
    cache_.erase(oldest);
  }
  cache_[path] = Cached{f, ++uses_};
  return f;
}

void LoraMerger::RestoreBase() {
  for (auto& [slot, original] : originals_) *slot = original;
  originals_.clear();
  applied_.clear();
}

Status LoraMerger::Apply(const std::vector<LoraRef>& loras) {
  std::vector<LoraRef> wanted;
  for (const LoraRef& l : loras) {
    if (!std::isfinite(l.scale)) return InvalidArgumentError("LoRA " + l.path + ": the scale is not finite");
    if (l.scale != 0.0) wanted.push_back(l);
  }
  if (wanted == applied_) return OkStatus();
  std::vector<std::shared_ptr<const LoraFile>> files;
  for (const LoraRef& l : wanted) {
    ASSIGN_OR_RETURN(std::shared_ptr<const LoraFile> f, Load(l.path));
    files.push_back(std::move(f));
  }
  RestoreBase();
  if (wanted.empty()) return OkStatus();
  try {
    c10::InferenceMode guard;
    // Every delta of a layer is summed in float32 before the one cast to the model's dtype.
    std::map<at::Tensor*, at::Tensor> merged;
    for (size_t i = 0; i < wanted.size(); ++i) {
      for (const LoraModule& m : files[i]->modules) {
        const NamedTensors& params = m.target == LoraTarget::kUNet ? unet_ : text_encoder_;
        at::Tensor* slot = params.at(m.module + ".weight");
        at::Tensor& acc = merged[slot];
        if (!acc.defined()) acc = slot->to(device_, at::kFloat, /*non_blocking=*/false, /*copy=*/true);
        at::Tensor up = m.up.to(device_, at::kFloat).flatten(1);
        at::Tensor down = m.down.to(device_, at::kFloat).flatten(1);
        acc.add_(at::mm(up, down).view(acc.sizes()), wanted[i].scale * m.alpha_over_rank);
      }
    }
    for (auto& [slot, acc] : merged) {
      at::Tensor cast = acc.to(slot->scalar_type());
      originals_.emplace(slot, *slot);
      *slot = std::move(cast);
    }
  } catch (const std::exception& e) {
    RestoreBase();
    return StatusFromException(e, "merging LoRAs");
  }
  applied_ = std::move(wanted);
  return OkStatus();
}

}  // namespace sdfarm::engine
