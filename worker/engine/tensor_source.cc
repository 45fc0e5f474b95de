#include "worker/engine/tensor_source.h"

#include <set>
#include <utility>

namespace sdfarm::engine {

TensorSource::Entry TensorSource::FileEntry(const std::shared_ptr<SafetensorsFile>& file, const StTensorInfo& info,
                                            std::string name) {
  Entry e;
  e.name = std::move(name);
  e.shape = info.shape;
  e.dtype = info.dtype;
  e.file = file->path();
  e.stored_as = info.name;
  const std::string key = info.name;
  e.get = [file, key]() { return file->Get(key); };
  const StTensorInfo* p = &info;  // owned by the file's header, which the captured file keeps alive
  e.done = [file, p]() { file->DropPages(*p); };
  return e;
}

TensorSource TensorSource::FromFile(const std::shared_ptr<SafetensorsFile>& file) {
  TensorSource src;
  for (const auto& info : file->tensors()) {
    src.index_.emplace(info.name, src.entries_.size());
    src.entries_.push_back(FileEntry(file, info, info.name));
  }
  return src;
}

StatusOr<TensorSource> TensorSource::FromFiles(const std::vector<std::shared_ptr<SafetensorsFile>>& files) {
  TensorSource src;
  for (const auto& f : files) {
    for (const auto& info : f->tensors()) {
      if (const Entry* prev = src.Find(info.name)) {
        return InvalidArgumentError("tensor '" + info.name + "' is in both " + prev->file + " and " + f->path());
      }
      src.index_.emplace(info.name, src.entries_.size());
      src.entries_.push_back(FileEntry(f, info, info.name));
    }
  }
  return src;
}

Status TensorSource::Add(Entry entry) {
  if (const Entry* prev = Find(entry.name)) {
    return InvalidArgumentError("two tensors of " + entry.file + " map to '" + entry.name + "': '" + prev->stored_as +
                                "' and '" + entry.stored_as + "'");
  }
  index_.emplace(entry.name, entries_.size());
  entries_.push_back(std::move(entry));
  return OkStatus();
}

StatusOr<TensorSource> TensorSource::Renamed(const std::function<std::string(const std::string&)>& rename) const {
  TensorSource out;
  out.ignored_ = ignored_;
  for (const Entry& e : entries_) {
    Entry copy = e;
    copy.name = rename(e.name);
    Status st = out.Add(std::move(copy));
    if (!st.ok()) return st;
  }
  return out;
}

const TensorSource::Entry* TensorSource::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

std::string TensorSource::description() const {
  std::set<std::string> files;
  for (const Entry& e : entries_) files.insert(e.file);
  std::string out;
  for (const auto& f : files) out += (out.empty() ? "" : ", ") + f;
  return out.empty() ? "no weight files" : out;
}

}  // namespace sdfarm::engine
