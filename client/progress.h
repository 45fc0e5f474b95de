// How `sdfarm watch`, `submit --watch` and `local` show a sweep's progress:
// on a terminal one line redrawn in place (bar, done/failed/total, images/s,
// ETA, per-worker rates), elsewhere a plain line per change at most every
// ~2 s (state changes and the end always), and with --json one JSON object
// per watch event per line.
//
//   ProgressPrinter printer(DetectProgressMode(json), &std::cout, &std::cerr, TerminalWidth());
//   printer.OnEvent(event, absl::Now());   // from the Watch stream, any thread
//   printer.Note("worker 2 exited ...");   // a message that must not garble the line
//   printer.Finish();                      // ends the terminal line
//
// The Format* functions are pure so that tests pin the exact text.
#ifndef SDFARM_CLIENT_PROGRESS_H_
#define SDFARM_CLIENT_PROGRESS_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <ostream>
#include <set>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "sdfarm.pb.h"

namespace sdfarm::client {

// "RUNNING", "DONE", ...
const char* StateName(v1::SweepState state);

// A duration for people: "45s", "3m05s", "2h05m", "3d04h"; "--" when unknown
// (negative, NaN or infinite).
std::string FormatDuration(double seconds);

// A rate with about three significant digits: "0.052", "3.21", "12.5", "140".
std::string FormatRate(double per_second);

// "[#####xx>>...]": `width` cells between the brackets; '#' done, 'x'
// failed, '>' images in progress counted by their steps (`rendering`), '.'
// still to do. An empty total draws an empty bar.
std::string ProgressBar(int64_t done, int64_t failed, int64_t total, int width, double rendering = 0);

// The terminal line, at most width - 1 characters (so it never wraps):
//   [########>.........]  42/100  1 failed  rendering 4 (step 12/20)  3.21 img/s  ETA 18s  | img/s: w1 1.60 w2 1.61
// The state is shown when it is not RUNNING (a paused sweep has no rate or
// ETA); workers that do not fit are counted ("+3").
std::string FormatProgressLine(const v1::SweepStatus& status, int width);

// The line for logs and pipes:
//   fox-study RUNNING 42/100 done, 1 failed, rendering 4 (step 12/20), 3.21 images/s, ETA 18s
std::string FormatPlainLine(const v1::SweepStatus& status);

// JSON with plain numbers (not protobuf's int64-as-string) and the state by
// name; what `status --json`, `ls --json` and the event stream print.
nlohmann::json StatusJson(const v1::SweepStatus& status);
// The status fields plus "new_files", "failures" and "new_warnings".
nlohmann::json EventJson(const v1::WatchEvent& event);

enum class ProgressMode { kTerminal, kPlain, kJson };

// kJson when asked; otherwise kTerminal when stdout is a terminal, else kPlain.
ProgressMode DetectProgressMode(bool json);
// Columns of the terminal on stdout; $COLUMNS or 80 when unknown.
int TerminalWidth();

class ProgressPrinter {
 public:
  // Failure lines beyond this many are summarised (the rest: `sdfarm status`).
  static constexpr int kMaxFailureLines = 20;
  static constexpr absl::Duration kPlainInterval = absl::Seconds(2);

  // Progress goes to `out`; notes to `err`.
  ProgressPrinter(ProgressMode mode, std::ostream* out, std::ostream* err, int width = 80);

  // Thread-safe.
  void OnEvent(const v1::WatchEvent& event, absl::Time now);
  // Prints a message line without garbling the terminal line. Thread-safe.
  void Note(std::string_view text);
  // Ends the terminal line (and prints the last plain line when it was held
  // back by the rate limit). Idempotent.
  void Finish();

 private:
  void DrawLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClearLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PrintFailuresLocked(const v1::WatchEvent& event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ProgressMode mode_;
  std::ostream* const out_;
  std::ostream* const err_;
  const int width_;

  absl::Mutex mu_;
  bool have_status_ ABSL_GUARDED_BY(mu_) = false;
  v1::SweepStatus last_ ABSL_GUARDED_BY(mu_);
  std::string drawn_ ABSL_GUARDED_BY(mu_);          // terminal: the line on screen, "" when none
  std::string plain_printed_ ABSL_GUARDED_BY(mu_);  // plain: the last line printed
  absl::Time plain_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::string json_last_ ABSL_GUARDED_BY(mu_);  // json: to drop repeats after a reconnect
  int failures_shown_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<std::string> warnings_shown_ ABSL_GUARDED_BY(mu_);  // each warning once, across reconnects
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace sdfarm::client

#endif  // SDFARM_CLIENT_PROGRESS_H_
