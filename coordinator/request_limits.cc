#include "coordinator/request_limits.h"

#include "absl/strings/str_cat.h"
#include "worker/engine/sha256.h"

namespace sdfarm::coordinator {

grpc::Status CheckRegisterRequest(const sdfarm::v1::RegisterRequest& req) {
  const size_t n = req.ByteSizeLong();
  if (n > kMaxRegisterBytes) {
    return {grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("a registration of ", n, " bytes; the limit is ", kMaxRegisterBytes, " bytes")};
  }
  return grpc::Status::OK;
}

grpc::Status CheckHeartbeatRequest(const sdfarm::v1::HeartbeatRequest& req) {
  const size_t n = req.ByteSizeLong();
  if (n > kMaxHeartbeatBytes) {
    return {grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("a heartbeat of ", n, " bytes; the limit is ", kMaxHeartbeatBytes, " bytes")};
  }
  if (req.jobs_size() > kMaxHeldJobs) {
    return {grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("a heartbeat listing ", req.jobs_size(), " held jobs; the limit is ", kMaxHeldJobs)};
  }
  return grpc::Status::OK;
}

grpc::Status CheckReportMessage(const sdfarm::v1::JobReport& msg) {
  if (msg.event_case() != sdfarm::v1::JobReport::kStep) return grpc::Status::OK;
  const size_t n = msg.ByteSizeLong();
  if (msg.step().preview_png().size() > kMaxPreviewBytes || n > kMaxTelemetryBytes) {
    return {grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("a telemetry message of ", n, " bytes; the limit is ", kMaxTelemetryBytes,
                         " bytes (previews at most ", kMaxPreviewBytes, ")")};
  }
  return grpc::Status::OK;
}

std::string TokenOwner(const std::string& token) {
  if (token.empty()) return "-";
  engine::Sha256 h;
  h.Update(token);
  return "t" + h.HexDigest().substr(0, 16);
}

}  // namespace sdfarm::coordinator
