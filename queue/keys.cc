// The farm's Redis key schema (see keys.h).
#include "queue/keys.h"

#include "absl/strings/str_cat.h"

namespace sdfarm::queue {

std::string KeySchema::Stream(const std::string& model) const { return absl::StrCat(prefix_, ":jobs:", model); }
std::string KeySchema::DeadLetters(const std::string& model) const { return absl::StrCat(prefix_, ":dead:", model); }
std::string KeySchema::Sweeps() const { return absl::StrCat(prefix_, ":sweeps"); }
std::string KeySchema::SweepPrefix() const { return absl::StrCat(prefix_, ":sweep:"); }
std::string KeySchema::Sweep(const std::string& id) const { return absl::StrCat(SweepPrefix(), id); }
std::string KeySchema::InFlight(const std::string& id) const { return absl::StrCat(Sweep(id), ":inflight"); }
std::string KeySchema::Failures(const std::string& id) const { return absl::StrCat(Sweep(id), ":failures"); }
std::string KeySchema::FailedItems(const std::string& id) const { return absl::StrCat(Sweep(id), ":failed"); }
std::string KeySchema::Request(const std::string& request_id) const { return absl::StrCat(prefix_, ":request:", request_id); }
std::string KeySchema::Name(const std::string& name) const { return absl::StrCat(prefix_, ":name:", name); }
std::string KeySchema::Leader() const { return absl::StrCat(prefix_, ":leader"); }

}  // namespace sdfarm::queue
