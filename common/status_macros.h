// RETURN_IF_ERROR and ASSIGN_OR_RETURN, which Debian's Abseil (20220623)
// does not ship. Header-only and dependency-free: they work with any type that
// has the absl::Status / absl::StatusOr shape (ok(), status()), so both
// absl::Status and the engine's sdfarm::engine::Status use them.
//
//   RETURN_IF_ERROR(file.Validate());
//   ASSIGN_OR_RETURN(SweepSpec spec, SweepSpec::FromProto(request));
#ifndef SDFARM_COMMON_STATUS_MACROS_H_
#define SDFARM_COMMON_STATUS_MACROS_H_

#include <utility>

#define SDFARM_STATUS_CONCAT_INNER_(a, b) a##b
#define SDFARM_STATUS_CONCAT_(a, b) SDFARM_STATUS_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                       \
  do {                                              \
    auto sdfarm_status_ = (expr);                   \
    if (!sdfarm_status_.ok()) return sdfarm_status_; \
  } while (0)

#define SDFARM_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                  \
  if (!tmp.ok()) return std::move(tmp).status();       \
  lhs = std::move(tmp).value()

#define ASSIGN_OR_RETURN(lhs, rexpr) \
  SDFARM_ASSIGN_OR_RETURN_IMPL_(SDFARM_STATUS_CONCAT_(sdfarm_statusor_, __LINE__), lhs, rexpr)

#endif  // SDFARM_COMMON_STATUS_MACROS_H_
