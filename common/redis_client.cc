#include "common/redis_client.h"

#include <hiredis/hiredis.h>
#include <poll.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace sdfarm {
namespace {

using ReplyPtr = std::unique_ptr<redisReply, decltype(&freeReplyObject)>;

timeval AtLeastOneMilli(absl::Duration d) {
  if (d < absl::Milliseconds(1)) d = absl::Milliseconds(1);  // 0 would mean "no timeout"
  return absl::ToTimeval(d);
}

RedisReply Convert(const redisReply* r) {
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      return RedisReply::Integer(r->integer);
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
      return RedisReply::String(std::string(r->str, r->len));
    case REDIS_REPLY_ERROR:
      return RedisReply::Error(std::string(r->str, r->len));
    case REDIS_REPLY_ARRAY: {
      std::vector<RedisReply> elements;
      elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i) elements.push_back(Convert(r->element[i]));
      return RedisReply::Array(std::move(elements));
    }
    case REDIS_REPLY_NIL:
    default:
      return RedisReply::Nil();
  }
}

// Maps a server error reply to a Status code by its first word (see header).
absl::Status ErrorReplyToStatus(absl::string_view command, absl::string_view message) {
  absl::string_view word = message.substr(0, message.find(' '));
  absl::StatusCode code = absl::StatusCode::kUnknown;
  if (word == "NOGROUP") {
    code = absl::StatusCode::kNotFound;
  } else if (word == "BUSYGROUP") {
    code = absl::StatusCode::kAlreadyExists;
  } else if (word == "NOAUTH" || word == "WRONGPASS") {
    code = absl::StatusCode::kUnauthenticated;
  } else if (word == "NOPERM") {
    code = absl::StatusCode::kPermissionDenied;
  } else if (word == "WRONGTYPE" || word == "READONLY" || word == "NOSCRIPT") {
    code = absl::StatusCode::kFailedPrecondition;
  } else if (word == "OOM") {
    code = absl::StatusCode::kResourceExhausted;
  } else if (word == "LOADING" || word == "BUSY" || word == "MASTERDOWN" || word == "TRYAGAIN") {
    code = absl::StatusCode::kUnavailable;
  } else if (word == "ERR") {
    code = absl::StatusCode::kInvalidArgument;
  }
  return absl::Status(code, absl::StrCat("redis ", command, ": ", message));
}

std::string CommandName(const std::vector<std::string>& argv) {
  return argv.empty() ? std::string("(empty)") : absl::AsciiStrToUpper(argv[0]);
}

// Milliseconds left until `deadline`, clamped for poll().
int PollMillis(absl::Time deadline) {
  absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1 << 30));
}

// Waits until `fd` has `events` or the deadline passes; false on deadline.
absl::StatusOr<bool> WaitFd(int fd, short events, absl::Time deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = poll(&p, 1, PollMillis(deadline));
    if (n > 0) return true;
    if (n == 0) {
      if (absl::Now() >= deadline) return false;
      continue;
    }
    if (errno == EINTR) continue;
    return absl::UnavailableError(absl::StrCat("redis: poll: ", std::strerror(errno)));
  }
}

}  // namespace

// ---- ParseRedisUrl ----

bool IsRedisAuthError(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnauthenticated || s.code() == absl::StatusCode::kPermissionDenied;
}

absl::StatusOr<RedisOptions> ParseRedisUrl(std::string_view std_url) {
  const absl::string_view url(std_url.data(), std_url.size());
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad Redis URL \"", url, "\": ", why,
        " (expected redis://[[user]:password@]host[:port][/db])"));
  };
  constexpr absl::string_view kScheme = "redis://";
  if (!absl::StartsWith(url, kScheme)) return bad("must start with redis://");
  absl::string_view rest = url.substr(kScheme.size());
  RedisOptions opts;

  // Userinfo ends at the last '@' so that passwords may contain '@'.
  if (size_t at = rest.rfind('@'); at != absl::string_view::npos) {
    absl::string_view userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    size_t colon = userinfo.find(':');
    if (colon == absl::string_view::npos) {
      // redis://password@host is a common mistake for redis://:password@host;
      // accepting it would AUTH as a user named like the password.
      return bad("credentials must be :password or user:password");
    }
    opts.username = std::string(userinfo.substr(0, colon));
    opts.password = std::string(userinfo.substr(colon + 1));
    if (opts.password.empty()) return bad("empty password");
  }

  absl::string_view hostport = rest;
  if (size_t slash = rest.find('/'); slash != absl::string_view::npos) {
    hostport = rest.substr(0, slash);
    absl::string_view db = rest.substr(slash + 1);
    if (!db.empty()) {
      if (!absl::SimpleAtoi(db, &opts.db) || opts.db < 0 ||
          !std::all_of(db.begin(), db.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return bad("db must be a non-negative integer");
      }
    }
  }
  if (hostport.find_first_of("?#") != absl::string_view::npos) return bad("query strings are not supported");

  absl::string_view host = hostport;
  absl::string_view port;
  if (absl::StartsWith(hostport, "[")) {
    size_t close = hostport.find(']');
    if (close == absl::string_view::npos) return bad("unterminated [IPv6] host");
    host = hostport.substr(1, close - 1);
    absl::string_view after = hostport.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return bad("junk after ]");
      port = after.substr(1);
      if (port.empty()) return bad("empty port");
    }
  } else if (size_t colon = hostport.rfind(':'); colon != absl::string_view::npos) {
    host = hostport.substr(0, colon);
    port = hostport.substr(colon + 1);
    if (port.empty()) return bad("empty port");
  }
  if (host.empty()) return bad("missing host");
  opts.host = std::string(host);
  if (!port.empty()) {
    if (!std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        !absl::SimpleAtoi(port, &opts.port) || opts.port < 1 || opts.port > 65535) {
      return bad("port must be 1-65535");
    }
  }
  return opts;
}

// ---- RedisReply ----

RedisReply RedisReply::Integer(int64_t v) {
  RedisReply r;
  r.value_ = v;
  return r;
}
RedisReply RedisReply::String(std::string s) {
  RedisReply r;
  r.value_ = std::move(s);
  return r;
}
RedisReply RedisReply::Array(std::vector<RedisReply> elements) {
  RedisReply r;
  r.value_ = std::move(elements);
  return r;
}
RedisReply RedisReply::Error(std::string message) {
  RedisReply r;
  r.value_ = ErrorText{std::move(message)};
  return r;
}

RedisReply::Kind RedisReply::kind() const {
  switch (value_.index()) {
    case 1:
      return Kind::kInteger;
    case 2:
      return Kind::kString;
    case 3:
      return Kind::kArray;
    case 4:
      return Kind::kError;
    default:
      return Kind::kNil;
  }
}

absl::StatusOr<std::string> RedisReply::AsString() const {
  if (const auto* s = std::get_if<std::string>(&value_)) return *s;
  return absl::FailedPreconditionError(absl::StrCat("redis reply is not a string: ", DebugString()));
}

absl::StatusOr<int64_t> RedisReply::AsInt() const {
  if (const auto* i = std::get_if<int64_t>(&value_)) return *i;
  if (const auto* s = std::get_if<std::string>(&value_)) {
    int64_t v;
    if (absl::SimpleAtoi(*s, &v)) return v;
  }
  return absl::FailedPreconditionError(absl::StrCat("redis reply is not an integer: ", DebugString()));
}

const std::vector<RedisReply>& RedisReply::array() const {
  static const std::vector<RedisReply> kEmpty;
  if (const auto* a = std::get_if<std::vector<RedisReply>>(&value_)) return *a;
  return kEmpty;
}

const std::string& RedisReply::str() const {
  static const std::string kEmpty;
  if (const auto* s = std::get_if<std::string>(&value_)) return *s;
  if (const auto* e = std::get_if<ErrorText>(&value_)) return e->message;
  return kEmpty;
}

std::string RedisReply::DebugString() const {
  switch (kind()) {
    case Kind::kNil:
      return "(nil)";
    case Kind::kInteger:
      return absl::StrCat("(integer) ", std::get<int64_t>(value_));
    case Kind::kString: {
      const std::string& s = std::get<std::string>(value_);
      std::string shown = s.size() > 64 ? absl::StrCat(s.substr(0, 64), "...") : s;
      return absl::StrCat("\"", absl::CEscape(shown), "\"");
    }
    case Kind::kError:
      return absl::StrCat("(error) ", std::get<ErrorText>(value_).message);
    case Kind::kArray: {
      std::vector<std::string> parts;
      for (const RedisReply& e : array()) parts.push_back(e.DebugString());
      return absl::StrCat("[", absl::StrJoin(parts, ", "), "]");
    }
  }
  return "?";
}

// ---- RedisClient ----

absl::StatusOr<std::unique_ptr<RedisClient>> RedisClient::Connect(const RedisOptions& options) {
  std::unique_ptr<RedisClient> client(new RedisClient(options));
  RETURN_IF_ERROR(client->Reconnect());
  return client;
}

RedisClient::~RedisClient() { Disconnect(); }

void RedisClient::Disconnect() {
  if (context_ != nullptr) redisFree(context_);
  context_ = nullptr;
}

absl::Status RedisClient::Reconnect() {
  Disconnect();
  redisContext* c = redisConnectWithTimeout(options_.host.c_str(), options_.port,
                                            AtLeastOneMilli(options_.connect_timeout));
  std::string where = absl::StrCat(options_.host, ":", options_.port);
  if (c == nullptr) return absl::UnavailableError(absl::StrCat("redis: cannot connect to ", where));
  if (c->err != 0) {
    absl::Status s = absl::UnavailableError(absl::StrCat("redis: cannot connect to ", where, ": ", c->errstr));
    redisFree(c);
    return s;
  }
  // The send timeout bounds a write into a full socket buffer; reads are
  // bounded by poll() against each call's own deadline.
  redisSetTimeout(c, AtLeastOneMilli(options_.command_timeout));
  redisEnableKeepAlive(c);
  context_ = c;
  ++connects_;

  auto handshake = [&](std::vector<std::string> argv) -> absl::Status {
    absl::StatusOr<RedisReply> r = CommandWithTimeout(argv, options_.command_timeout);
    if (!r.ok()) {
      Disconnect();
      // The server's messages never echo the password, so they are safe to pass on.
      return absl::Status(r.status().code(), absl::StrCat("redis ", where, ": ", r.status().message()));
    }
    return absl::OkStatus();
  };
  if (!options_.password.empty()) {
    std::vector<std::string> argv = {"AUTH"};
    if (!options_.username.empty()) argv.push_back(options_.username);
    argv.push_back(options_.password);
    RETURN_IF_ERROR(handshake(std::move(argv)));
  }
  if (options_.db != 0) {
    RETURN_IF_ERROR(handshake({"SELECT", absl::StrCat(options_.db)}));
  } else if (options_.password.empty()) {
    // A server that wants a password accepts the connection and refuses each
    // command (NOAUTH): find out now, as a connect error, not at the first use.
    RETURN_IF_ERROR(handshake({"PING"}));
  }
  return absl::OkStatus();
}

void RedisClient::DropIfClosedByPeer() {
  if (context_ == nullptr) return;
  // Between commands nothing should be readable; readable means EOF (server
  // closed or restarted) or garbage, and either way the connection is done.
  pollfd p{context_->fd, POLLIN, 0};
  if (poll(&p, 1, 0) > 0) Disconnect();
}

absl::StatusOr<RedisReply> RedisClient::Command(const std::vector<std::string>& argv) {
  return CommandWithTimeout(argv, options_.command_timeout);
}

absl::StatusOr<RedisReply> RedisClient::CommandWithTimeout(const std::vector<std::string>& argv,
                                                           absl::Duration timeout) {
  if (argv.empty()) return absl::InvalidArgumentError("redis: empty command");
  const absl::Time deadline = absl::Now() + timeout;
  const std::string name = CommandName(argv);
  DropIfClosedByPeer();
  if (context_ == nullptr) RETURN_IF_ERROR(Reconnect());

  // Any failure below leaves the connection in an unknown state (a reply may
  // still be on its way), so it is dropped and the next call reconnects.
  auto fail = [&](absl::StatusCode code, absl::string_view why) {
    Disconnect();
    return absl::Status(code, absl::StrCat("redis ", name, ": ", why));
  };
  auto io_error = [&]() {
    std::string why = context_->errstr[0] != '\0' ? context_->errstr : "connection lost";
    return fail(absl::StatusCode::kUnavailable, why);
  };

  std::vector<const char*> ptrs;
  std::vector<size_t> lens;
  ptrs.reserve(argv.size());
  lens.reserve(argv.size());
  for (const std::string& a : argv) {
    ptrs.push_back(a.data());
    lens.push_back(a.size());
  }
  if (redisAppendCommandArgv(context_, static_cast<int>(argv.size()), ptrs.data(), lens.data()) != REDIS_OK) {
    return io_error();
  }
  for (int done = 0; !done;) {
    if (redisBufferWrite(context_, &done) != REDIS_OK) return io_error();
    if (!done) {
      ASSIGN_OR_RETURN(bool ready, WaitFd(context_->fd, POLLOUT, deadline));
      if (!ready) return fail(absl::StatusCode::kDeadlineExceeded, "deadline exceeded while sending");
    }
  }
  void* raw = nullptr;
  for (;;) {
    if (redisGetReplyFromReader(context_, &raw) != REDIS_OK) return io_error();
    if (raw != nullptr) break;
    ASSIGN_OR_RETURN(bool ready, WaitFd(context_->fd, POLLIN, deadline));
    if (!ready) {
      return fail(absl::StatusCode::kDeadlineExceeded,
                  absl::StrCat("no reply within ", absl::FormatDuration(timeout)));
    }
    if (redisBufferRead(context_) != REDIS_OK) return io_error();
  }
  ReplyPtr reply(static_cast<redisReply*>(raw), &freeReplyObject);
  if (reply->type == REDIS_REPLY_ERROR) {
    return ErrorReplyToStatus(name, absl::string_view(reply->str, reply->len));
  }
  return Convert(reply.get());
}

absl::Status RedisClient::CheckNoEviction() {
  ASSIGN_OR_RETURN(RedisReply r, Command({"CONFIG", "GET", "maxmemory-policy"}));
  const auto& a = r.array();
  if (a.size() != 2 || !a[1].is_string()) {
    return absl::UnknownError(absl::StrCat("redis CONFIG GET maxmemory-policy: unexpected reply ", r.DebugString()));
  }
  if (a[1].str() != "noeviction") {
    return absl::FailedPreconditionError(absl::StrCat(
        "Redis at ", options_.host, ":", options_.port, " has maxmemory-policy ", a[1].str(),
        "; the job queue needs \"noeviction\", otherwise Redis may silently delete queued jobs and "
        "their state under memory pressure (set maxmemory-policy noeviction in redis.conf)"));
  }
  return absl::OkStatus();
}

}  // namespace sdfarm
