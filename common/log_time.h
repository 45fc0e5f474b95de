// The one timestamp format of every sdfarm log line (coordinator, workers):
// RFC 3339 in UTC with milliseconds, "2026-12-05T07:10:00.123Z", so logs of
// machines in different time zones sort and merge as they are.
#ifndef SDFARM_COMMON_LOG_TIME_H_
#define SDFARM_COMMON_LOG_TIME_H_

#include <string>

#include "absl/time/time.h"

namespace sdfarm {

inline std::string LogTimestamp(absl::Time t = absl::Now()) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

}  // namespace sdfarm

#endif  // SDFARM_COMMON_LOG_TIME_H_
