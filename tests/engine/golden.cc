#include "tests/engine/golden.h"

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <vector>

#include "worker/engine/safetensors.h"

namespace sdfarm::testing {
namespace fs = std::filesystem;

std::string SharedPath(const std::string& rel) {
  fs::path p = fs::path(SDFARM_SHARED_DIR) / rel;
  if (!fs::exists(p)) {
    ADD_FAILURE() << "missing fixture " << p
                  << " (set the CMake cache variable SDFARM_SHARED_DIR to the folder holding models/ and golden/)";
  }
  return p.string();
}

std::map<std::string, at::Tensor> LoadGolden(const std::string& rel) {
  auto tensors = engine::ReadSafetensors(GoldenPath(rel));
  if (!tensors.ok()) {
    ADD_FAILURE() << "cannot read golden file " << rel << ": " << tensors.status().ToString();
    return {};
  }
  return std::move(tensors).value();
}

std::map<std::string, std::string> LoadGoldenMetadata(const std::string& rel) {
  auto file = engine::SafetensorsFile::Open(GoldenPath(rel));
  if (!file.ok()) {
    ADD_FAILURE() << "cannot read golden file " << rel << ": " << file.status().ToString();
    return {};
  }
  return (*file)->header().metadata;
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) {
    ADD_FAILURE() << "shape mismatch: " << a.sizes() << " vs " << b.sizes();
    return std::numeric_limits<double>::infinity();
  }
  if (a.numel() == 0) return 0.0;
  return (a.to(at::kCPU, at::kDouble) - b.to(at::kCPU, at::kDouble)).abs().max().item<double>();
}

double MaxRelDiff(const at::Tensor& a, const at::Tensor& b) {
  const double scale = b.numel() == 0 ? 1.0 : b.to(at::kCPU, at::kDouble).abs().max().item<double>();
  return MaxAbsDiff(a, b) / std::max(scale, 1e-30);
}

namespace {
std::mutex g_mu;
std::vector<fs::path>* g_dirs = nullptr;
void RemoveTempDirs() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_dirs == nullptr) return;
  std::error_code ec;
  for (const auto& d : *g_dirs) fs::remove_all(d, ec);
}
}  // namespace

std::string MakeTempDir() {
  std::string tmpl = (fs::temp_directory_path() / "sdfarm_test_XXXXXX").string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp failed";
    return "/tmp";
  }
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_dirs == nullptr) {
    g_dirs = new std::vector<fs::path>();
    std::atexit(RemoveTempDirs);
  }
  g_dirs->push_back(buf.data());
  return buf.data();
}

}  // namespace sdfarm::testing
