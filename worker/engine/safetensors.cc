#include "worker/engine/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>

namespace sdfarm::engine {
namespace {

at::ScalarType ToScalarType(StDtype d) {
  switch (d) {
    case StDtype::kF64: return at::kDouble;
    case StDtype::kF32: return at::kFloat;
    case StDtype::kF16: return at::kHalf;
    case StDtype::kBF16: return at::kBFloat16;
    case StDtype::kI64: return at::kLong;
    case StDtype::kI32: return at::kInt;
    case StDtype::kI16: return at::kShort;
    case StDtype::kI8: return at::kChar;
    case StDtype::kU8: return at::kByte;
    case StDtype::kBool: return at::kBool;
  }
  return at::kFloat;
}

bool FromScalarType(at::ScalarType t, StDtype* out) {
  switch (t) {
    case at::kDouble: *out = StDtype::kF64; return true;
    case at::kFloat: *out = StDtype::kF32; return true;
    case at::kHalf: *out = StDtype::kF16; return true;
    case at::kBFloat16: *out = StDtype::kBF16; return true;
    case at::kLong: *out = StDtype::kI64; return true;
    case at::kInt: *out = StDtype::kI32; return true;
    case at::kShort: *out = StDtype::kI16; return true;
    case at::kChar: *out = StDtype::kI8; return true;
    case at::kByte: *out = StDtype::kU8; return true;
    case at::kBool: *out = StDtype::kBool; return true;
    default: return false;
  }
}

std::string Errno(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

}  // namespace

struct SafetensorsFile::Mapping {
  void* data = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (data != nullptr && size > 0) munmap(data, size);
  }
};

SafetensorsFile::SafetensorsFile(std::string path, std::shared_ptr<Mapping> mapping,
                                 SafetensorsHeader header)
    : path_(std::move(path)), mapping_(std::move(mapping)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

SafetensorsFile::~SafetensorsFile() = default;

StatusOr<std::shared_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Status(errno == ENOENT ? StatusCode::kNotFound : StatusCode::kUnavailable, Errno("cannot open", path));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    Status s = UnavailableError(Errno("cannot stat", path));
    ::close(fd);
    return s;
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(st.st_size);
  if (mapping->size > 0) {
    mapping->data = mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapping->data == MAP_FAILED) {
      mapping->data = nullptr;
      Status s = UnavailableError(Errno("cannot mmap", path));
      ::close(fd);
      return s;
    }
  }
  ::close(fd);
  std::string_view bytes(static_cast<const char*>(mapping->data), mapping->size);
  auto header = ParseSafetensorsHeader(bytes, mapping->size);
  if (!header.ok()) return header.status().WithContext(path);
  return std::shared_ptr<SafetensorsFile>(
      new SafetensorsFile(path, std::move(mapping), std::move(header).value()));
}

const StTensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

StatusOr<at::Tensor> SafetensorsFile::Get(const std::string& name) const {
  const StTensorInfo* info = Find(name);
  if (info == nullptr) return NotFoundError(path_ + ": no tensor named '" + name + "'");
  const auto options = at::TensorOptions().dtype(ToScalarType(info->dtype)).device(at::kCPU);
  char* ptr = static_cast<char*>(mapping_->data) + header_.data_start + info->begin;
  if (info->numel() == 0) return at::empty(info->shape, options);
  if (reinterpret_cast<uintptr_t>(ptr) % StDtypeSize(info->dtype) != 0) {
    at::Tensor t = at::empty(info->shape, options);
    std::memcpy(t.data_ptr(), ptr, info->end - info->begin);
    return t;
  }
  std::shared_ptr<Mapping> keep = mapping_;
  return at::from_blob(ptr, info->shape, [keep](void*) mutable { keep.reset(); }, options);
}

void SafetensorsFile::DropPages(const StTensorInfo& info) const {
  if (mapping_->data == nullptr) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t base = reinterpret_cast<uintptr_t>(mapping_->data);
  // Only whole pages inside this tensor: neighbours keep theirs.
  const uintptr_t begin = (base + header_.data_start + info.begin + page - 1) / page * page;
  const uintptr_t end = (base + header_.data_start + info.end) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

Status WriteSafetensors(const std::string& path,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<StTensorInfo> infos;
  std::vector<at::Tensor> cpu;
  infos.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    StTensorInfo info;
    info.name = name;
    if (!FromScalarType(t.scalar_type(), &info.dtype)) {
      return InvalidArgumentError("cannot write tensor '" + name + "' of dtype " +
                                  std::string(c10::toString(t.scalar_type())));
    }
    info.shape = t.sizes().vec();
    infos.push_back(std::move(info));
    cpu.push_back(t.to(at::kCPU).contiguous());
  }
  const std::string header = SerializeSafetensorsHeader(infos, metadata);
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return UnavailableError(Errno("cannot create", tmp));
  bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (size_t i = 0; ok && i < cpu.size(); ++i) {
    const size_t n = infos[i].end - infos[i].begin;
    if (n > 0) ok = std::fwrite(cpu[i].data_ptr(), 1, n, f) == n;
  }
  ok = (std::fflush(f) == 0) && ok;
  ok = (fsync(fileno(f)) == 0) && ok;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    Status s = UnavailableError(Errno("cannot write", tmp));
    std::remove(tmp.c_str());
    return s;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    Status s = UnavailableError(Errno("cannot rename to", path));
    std::remove(tmp.c_str());
    return s;
  }
  return OkStatus();
}

StatusOr<std::map<std::string, at::Tensor>> ReadSafetensors(const std::string& path) {
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  std::map<std::string, at::Tensor> out;
  for (const auto& info : (*file)->tensors()) {
    auto t = (*file)->Get(info.name);
    if (!t.ok()) return t.status();
    out[info.name] = t->clone();
  }
  return out;
}

}  // namespace sdfarm::engine
