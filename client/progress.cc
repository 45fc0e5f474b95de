#include "client/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sdfarm::client {
namespace {

// Worker labels longer than this are cut in the terminal line.
constexpr size_t kMaxWorkerLabel = 16;

std::string Counts(const v1::SweepStatus& s) { return absl::StrCat(s.done(), "/", s.total()); }

bool Finished(const v1::SweepStatus& s) { return s.state() == v1::DONE || s.state() == v1::CANCELLED; }

std::string EtaText(const v1::SweepStatus& s) {
  if (Finished(s) || s.state() == v1::PAUSED) return "";
  if (s.eta_seconds() > 0) return "ETA " + FormatDuration(s.eta_seconds());
  return "ETA --";
}

// "rendering 4 (step 12/20)" or "rendering 8 in 2 jobs (55%)"; "" when nothing is.
std::string RenderingText(const v1::SweepStatus& s) {
  if (Finished(s) || s.active().empty()) return "";
  int64_t images = 0;
  for (const v1::ActiveJob& a : s.active()) images += a.images();
  if (s.active().size() == 1) {
    const v1::ActiveJob& a = s.active(0);
    if (a.total_steps() <= 0) return absl::StrCat("rendering ", images);
    return absl::StrCat("rendering ", images, " (step ", a.step(), "/", a.total_steps(), ")");
  }
  const int percent = images > 0 ? static_cast<int>(std::floor(100 * s.rendering_images() / images)) : 0;
  return absl::StrCat("rendering ", images, " in ", s.active().size(), " jobs (", percent, "%)");
}

}  // namespace

const char* StateName(v1::SweepState state) {
  switch (state) {
    case v1::QUEUED:
      return "QUEUED";
    case v1::RUNNING:
      return "RUNNING";
    case v1::PAUSED:
      return "PAUSED";
    case v1::DONE:
      return "DONE";
    case v1::CANCELLED:
      return "CANCELLED";
    default:
      return "UNKNOWN";
  }
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--";
  const int64_t s = static_cast<int64_t>(std::llround(std::min(seconds, 1e12)));
  char buf[48];
  if (s < 60) {
    std::snprintf(buf, sizeof(buf), "%llds", static_cast<long long>(s));
  } else if (s < 3600) {
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  } else if (s < 86400) {
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%lldd%02lldh", static_cast<long long>(s / 86400),
                  static_cast<long long>(s % 86400 / 3600));
  }
  return buf;
}

std::string FormatRate(double per_second) {
  if (!std::isfinite(per_second) || per_second <= 0) return "0";
  char buf[48];
  const char* format = per_second < 0.1 ? "%.3f" : per_second < 10 ? "%.2f" : per_second < 100 ? "%.1f" : "%.0f";
  std::snprintf(buf, sizeof(buf), format, per_second);
  return buf;
}

std::string ProgressBar(int64_t done, int64_t failed, int64_t total, int width, double rendering) {
  width = std::max(width, 1);
  std::string bar(static_cast<size_t>(width), '.');
  if (total > 0) {
    auto cells = [&](int64_t n) {
      const double f = std::clamp(static_cast<double>(n) / static_cast<double>(total), 0.0, 1.0);
      return static_cast<int>(std::floor(f * width));
    };
    const int done_cells = cells(done);
    // Any failure shows at least one cell: a failed item must not go unseen.
    int failed_cells = cells(done + failed) - done_cells;
    if (failed > 0) failed_cells = std::max(failed_cells, 1);
    failed_cells = std::min(failed_cells, width - done_cells);
    std::fill_n(bar.begin(), done_cells, '#');
    std::fill_n(bar.begin() + done_cells, failed_cells, 'x');
    // Images in progress, by their steps: '>' cells after the finished ones.
    const double f = std::clamp((static_cast<double>(done + failed) + std::max(0.0, rendering)) /
                                    static_cast<double>(total), 0.0, 1.0);
    const int progress_cells = std::min(width, static_cast<int>(std::floor(f * width)));
    for (int i = done_cells + failed_cells; i < progress_cells; ++i) bar[static_cast<size_t>(i)] = '>';
  }
  return "[" + bar + "]";
}

std::string FormatProgressLine(const v1::SweepStatus& status, int width) {
  const size_t limit = static_cast<size_t>(std::max(width - 1, 10));
  std::string core = "  " + Counts(status);
  if (status.failed() > 0) absl::StrAppend(&core, "  ", status.failed(), " failed");
  if (const std::string r = RenderingText(status); !r.empty()) absl::StrAppend(&core, "  ", r);
  if (status.state() == v1::RUNNING) {
    absl::StrAppend(&core, "  ", FormatRate(status.images_per_second()), " img/s");
  }
  if (const std::string eta = EtaText(status); !eta.empty()) absl::StrAppend(&core, "  ", eta);
  if (status.state() != v1::RUNNING) absl::StrAppend(&core, "  ", StateName(status.state()));

  std::vector<std::string> workers;
  if (status.state() == v1::RUNNING) {
    for (const v1::WorkerRate& w : status.workers()) {
      std::string label = w.worker_id().empty() ? w.host() : w.worker_id();
      if (label.size() > kMaxWorkerLabel) label = label.substr(0, kMaxWorkerLabel - 1) + "~";
      workers.push_back(label + " " + FormatRate(w.images_per_second()));
    }
  }
  // "  | a 1.60 b 1.61", or as many as fit in `room` followed by "+N".
  auto worker_tail = [&](size_t room) {
    if (workers.empty()) return std::string();
    std::string tail = "  | img/s:";
    size_t shown = 0;
    for (; shown < workers.size(); ++shown) {
      const size_t more = workers.size() - shown - 1;
      const size_t reserve = more > 0 ? 2 + std::to_string(more).size() : 0;  // " +N" after it
      if (tail.size() + 1 + workers[shown].size() + reserve > room) break;
      absl::StrAppend(&tail, " ", workers[shown]);
    }
    if (shown < workers.size()) absl::StrAppend(&tail, " +", workers.size() - shown);
    return tail.size() <= room ? tail : std::string();
  };

  // The bar takes 10 to 30 cells, giving way to the workers down to 10;
  // below 10 cells it goes.
  const int room = static_cast<int>(limit) - static_cast<int>(core.size()) - 2;
  if (room < 10) {
    std::string line = core.substr(2);
    return line.size() > limit ? line.substr(0, limit) : line;
  }
  const int full_tail = static_cast<int>(worker_tail(std::string::npos).size());
  const int bar = std::clamp(room - full_tail, 10, 30);
  std::string line =
      ProgressBar(status.done(), status.failed(), status.total(), bar, status.rendering_images()) + core;
  return line + worker_tail(limit - line.size());
}

std::string FormatPlainLine(const v1::SweepStatus& status) {
  std::string line = absl::StrCat(status.name().empty() ? status.sweep_id() : status.name(), " ",
                                  StateName(status.state()), " ", Counts(status), " done");
  if (status.failed() > 0) absl::StrAppend(&line, ", ", status.failed(), " failed");
  if (const std::string r = RenderingText(status); !r.empty()) absl::StrAppend(&line, ", ", r);
  if (status.state() == v1::RUNNING) {
    absl::StrAppend(&line, ", ", FormatRate(status.images_per_second()), " images/s, ", EtaText(status));
  }
  return line;
}

nlohmann::json StatusJson(const v1::SweepStatus& s) {
  nlohmann::json workers = nlohmann::json::array();
  for (const v1::WorkerRate& w : s.workers()) {
    workers.push_back({{"worker_id", w.worker_id()}, {"host", w.host()}, {"images_per_second", w.images_per_second()}});
  }
  nlohmann::json active = nlohmann::json::array();
  for (const v1::ActiveJob& a : s.active()) {
    active.push_back({{"worker_id", a.worker_id()},
                      {"job_id", a.job_id()},
                      {"images", a.images()},
                      {"step", a.step()},
                      {"total_steps", a.total_steps()}});
  }
  nlohmann::json warnings = nlohmann::json::array();
  for (const std::string& w : s.warnings()) warnings.push_back(w);
  return {{"sweep_id", s.sweep_id()},
          {"name", s.name()},
          {"state", std::string(StateName(s.state()))},
          {"total", s.total()},
          {"done", s.done()},
          {"failed", s.failed()},
          {"images_per_second", s.images_per_second()},
          {"eta_seconds", s.eta_seconds()},
          {"workers", std::move(workers)},
          {"output_dir", s.output_dir()},
          {"model", s.model()},
          {"priority", s.priority()},
          {"created_unix_ms", s.created_unix_ms()},
          {"jobs", s.jobs()},
          {"jobs_done", s.jobs_done()},
          {"rendering_images", s.rendering_images()},
          {"active", std::move(active)},
          {"live_workers", s.live_workers()},
          {"warnings", std::move(warnings)},
          {"state_lost", s.state_lost()},
          {"recoveries", s.recoveries()}};
}

nlohmann::json EventJson(const v1::WatchEvent& event) {
  nlohmann::json j = StatusJson(event.status());
  j["new_files"] = nlohmann::json::array();
  for (const std::string& f : event.new_files()) j["new_files"].push_back(f);
  j["failures"] = nlohmann::json::array();
  for (const std::string& f : event.failures()) j["failures"].push_back(f);
  j["new_warnings"] = nlohmann::json::array();
  for (const std::string& w : event.warnings()) j["new_warnings"].push_back(w);
  return j;
}

ProgressMode DetectProgressMode(bool json) {
  if (json) return ProgressMode::kJson;
  return isatty(STDOUT_FILENO) ? ProgressMode::kTerminal : ProgressMode::kPlain;
}

int TerminalWidth() {
  winsize ws{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  if (const char* columns = std::getenv("COLUMNS")) {
    const int n = std::atoi(columns);
    if (n > 0) return n;
  }
  return 80;
}

ProgressPrinter::ProgressPrinter(ProgressMode mode, std::ostream* out, std::ostream* err, int width)
    : mode_(mode), out_(out), err_(err), width_(width) {}

void ProgressPrinter::ClearLocked() {
  if (drawn_.empty()) return;
  *out_ << "\r\x1b[K" << std::flush;
  drawn_.clear();
}

void ProgressPrinter::DrawLocked() {
  if (!have_status_ || finished_) return;
  const std::string line = FormatProgressLine(last_, width_);
  if (line == drawn_) return;
  *out_ << "\r" << line << "\x1b[K" << std::flush;
  drawn_ = line;
}

void ProgressPrinter::PrintFailuresLocked(const v1::WatchEvent& event) {
  for (const std::string& warning : event.warnings()) {
    if (warnings_shown_.insert(warning).second) *err_ << "warning: " << warning << "\n" << std::flush;
  }
  for (const std::string& failure : event.failures()) {
    if (failures_shown_ < kMaxFailureLines) {
      *out_ << "failed: " << failure << "\n";
    } else if (failures_shown_ == kMaxFailureLines) {
      *out_ << "(more failures not shown; sdfarm status " << event.status().sweep_id() << ")\n";
    }
    ++failures_shown_;
  }
}

void ProgressPrinter::OnEvent(const v1::WatchEvent& event, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  const v1::SweepStatus& s = event.status();
  switch (mode_) {
    case ProgressMode::kJson: {
      std::string line = EventJson(event).dump();
      // A reconnect starts with the current status again: no news, no line.
      if (line == json_last_ && event.new_files().empty() && event.failures().empty()) return;
      json_last_ = line;
      *out_ << line << "\n" << std::flush;
      break;
    }
    case ProgressMode::kTerminal:
      if (!event.failures().empty() || !event.warnings().empty()) {
        ClearLocked();
        PrintFailuresLocked(event);
      }
      last_ = s;
      have_status_ = true;
      DrawLocked();
      break;
    case ProgressMode::kPlain: {
      PrintFailuresLocked(event);
      const bool state_changed = !have_status_ || last_.state() != s.state();
      last_ = s;
      have_status_ = true;
      const std::string line = FormatPlainLine(s);
      if (line == plain_printed_) break;
      // Counts may change many times a second; state changes always show.
      if (state_changed || Finished(s) || now - plain_at_ >= kPlainInterval) {
        *out_ << line << "\n" << std::flush;
        plain_printed_ = line;
        plain_at_ = now;
      }
      break;
    }
  }
}

void ProgressPrinter::Note(std::string_view text) {
  absl::MutexLock lock(&mu_);
  const bool redraw = !drawn_.empty();
  ClearLocked();
  *err_ << text << (text.empty() || text.back() != '\n' ? "\n" : "") << std::flush;
  if (redraw) DrawLocked();
}

void ProgressPrinter::Finish() {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  if (mode_ == ProgressMode::kTerminal && have_status_) {
    // Leave the final line on screen, ending it.
    const std::string line = FormatProgressLine(last_, width_);
    if (line == drawn_) {
      *out_ << "\n" << std::flush;
    } else {
      *out_ << "\r" << line << "\x1b[K\n" << std::flush;
    }
    drawn_.clear();
  } else if (mode_ == ProgressMode::kPlain && have_status_) {
    const std::string line = FormatPlainLine(last_);
    if (line != plain_printed_) *out_ << line << "\n" << std::flush;
  }
  finished_ = true;
}

}  // namespace sdfarm::client
