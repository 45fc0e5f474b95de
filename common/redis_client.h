// A small synchronous Redis client over hiredis, for the farm's queue and
// state (see coordinator/job_queue.h).
//
//   ASSIGN_OR_RETURN(RedisOptions opts, ParseRedisUrl("redis://:secret@10.0.0.5:6379/2"));
//   ASSIGN_OR_RETURN(std::unique_ptr<RedisClient> redis, RedisClient::Connect(opts));
//   ASSIGN_OR_RETURN(RedisReply r, redis->Command({"HGET", "sweep:42", "state"}));
//   if (!r.is_nil()) { ASSIGN_OR_RETURN(std::string state, r.AsString()); ... }
//
// Threading: a RedisClient is one connection and is NOT thread-safe. Use one
// client per thread (connections are cheap for Redis); never share one.
//
// Errors:
//   - An error reply from the server becomes a Status carrying the server's
//     message, with a code chosen from its prefix: NOGROUP -> NotFound,
//     BUSYGROUP -> AlreadyExists, NOAUTH/WRONGPASS -> Unauthenticated,
//     NOPERM -> PermissionDenied, WRONGTYPE/READONLY -> FailedPrecondition,
//     OOM -> ResourceExhausted, LOADING/BUSY/MASTERDOWN/TRYAGAIN ->
//     Unavailable, other "ERR ..." -> InvalidArgument, anything else -> Unknown.
//     Error replies nested inside arrays (EXEC, scripts returning tables) are
//     kept as RedisReply values of kind kError instead.
//   - A broken connection (server restarted, network error) fails the call
//     with Unavailable. The call is never retried by the client: the command
//     may already have run, and XREADGROUP, INCR, XADD are not idempotent.
//     The next call reconnects (one attempt) before sending. Before sending,
//     an idle connection that the server has closed (EOF pending) is detected
//     and replaced, so a server restart between two calls is usually
//     invisible.
//   - Every call has a deadline: RedisOptions::command_timeout, or the one
//     given to CommandWithTimeout. When it passes the call returns
//     DeadlineExceeded and the connection is dropped (a late reply would
//     otherwise be read as the answer to the next command); the next call
//     reconnects.
//
// Blocking commands (XREADGROUP BLOCK, BLPOP): pass a deadline longer than the
// server-side block time to CommandWithTimeout. When the server-side block
// time runs out first the reply is nil (is_nil()); when the client deadline
// runs out first the result is DeadlineExceeded.
#ifndef SDFARM_COMMON_REDIS_CLIENT_H_
#define SDFARM_COMMON_REDIS_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

struct redisContext;

namespace sdfarm {

struct RedisOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string username;  // Redis 6 ACL user; empty: AUTH with the password only.
  std::string password;  // empty: no AUTH.
  int db = 0;
  absl::Duration connect_timeout = absl::Seconds(2);
  absl::Duration command_timeout = absl::Seconds(5);
};

// Parses redis://[[user]:password@]host[:port][/db]. The port defaults to
// 6379 and the db to 0. IPv6 hosts go in brackets: redis://[::1]:6380.
// Percent-escapes are not decoded. rediss:// (TLS) and unix sockets are
// InvalidArgument: hiredis 0.14 has no TLS.
absl::StatusOr<RedisOptions> ParseRedisUrl(std::string_view url);

// True for the errors of a server that refuses our credentials (NOAUTH,
// WRONGPASS, NOPERM): retrying cannot cure them, the configuration must change.
bool IsRedisAuthError(const absl::Status& s);

// One reply, converted and owned (the hiredis reply object is freed as soon as
// it has been converted). Status replies (+OK) and bulk strings are both
// strings.
class RedisReply {
 public:
  enum class Kind { kNil, kInteger, kString, kArray, kError };

  RedisReply() = default;  // nil
  static RedisReply Nil() { return RedisReply(); }
  static RedisReply Integer(int64_t v);
  static RedisReply String(std::string s);
  static RedisReply Array(std::vector<RedisReply> elements);
  static RedisReply Error(std::string message);  // only nested in arrays

  Kind kind() const;
  bool is_nil() const { return kind() == Kind::kNil; }
  bool is_integer() const { return kind() == Kind::kInteger; }
  bool is_string() const { return kind() == Kind::kString; }
  bool is_array() const { return kind() == Kind::kArray; }
  bool is_error() const { return kind() == Kind::kError; }

  // The string (binary-safe); FailedPrecondition for other kinds.
  absl::StatusOr<std::string> AsString() const;
  // The integer, or a string holding a decimal integer (Redis sends numbers
  // as strings in many replies, e.g. CONFIG GET, XINFO); FailedPrecondition
  // otherwise.
  absl::StatusOr<int64_t> AsInt() const;
  // The elements of an array; empty for every other kind, so that loops over
  // "array or nil" replies need no special case.
  const std::vector<RedisReply>& array() const;
  // For kString and kError: the bytes; empty otherwise.
  const std::string& str() const;

  // For logs and test failures; long strings are shortened.
  std::string DebugString() const;

 private:
  struct ErrorText {
    std::string message;
  };
  std::variant<std::monostate, int64_t, std::string, std::vector<RedisReply>, ErrorText> value_;
};

class RedisClient {
 public:
  // Connects (bounded by connect_timeout), then AUTH and SELECT as the options
  // say (PING when neither, so every connect talks to the server once).
  // Unavailable when the server cannot be reached, Unauthenticated when the
  // password is wrong or missing.
  static absl::StatusOr<std::unique_ptr<RedisClient>> Connect(const RedisOptions& options);

  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Sends argv as one command (binary-safe: arguments may hold any bytes) and
  // returns its reply, with options().command_timeout as the deadline.
  absl::StatusOr<RedisReply> Command(const std::vector<std::string>& argv);
  // The same with an explicit deadline, for blocking commands.
  absl::StatusOr<RedisReply> CommandWithTimeout(const std::vector<std::string>& argv,
                                                absl::Duration timeout);

  // FailedPrecondition unless the server's maxmemory-policy is "noeviction".
  // Any other policy lets Redis silently delete queued jobs under memory
  // pressure; callers should warn loudly (or refuse to start).
  absl::Status CheckNoEviction();

  const RedisOptions& options() const { return options_; }
  // True while a connection is open (it may still turn out to be dead).
  bool connected() const { return context_ != nullptr; }
  // How many times the connection has been (re)established; for tests/metrics.
  int connects() const { return connects_; }

 private:
  explicit RedisClient(RedisOptions options) : options_(std::move(options)) {}

  absl::Status Reconnect();
  void Disconnect();
  // Replaces a connection the server has closed since the last call.
  void DropIfClosedByPeer();

  RedisOptions options_;
  redisContext* context_ = nullptr;
  int connects_ = 0;
};

}  // namespace sdfarm

#endif  // SDFARM_COMMON_REDIS_CLIENT_H_
