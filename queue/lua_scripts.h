// The queue's Lua scripts (queue/lua/<name>.lua), compiled in as string
// constants by queue/embed_lua.cmake: one per transition of the Redis queue,
// plus kBinding, the binding check as a Lua function that check_binding,
// renew, finish and fail are prefixed with. Each script's first lines say its
// KEYS, ARGV and reply. Only redis_job_queue.cc uses them.
//
//   redis->Command({"EVAL", absl::StrCat(lua::kBinding, lua::kFinish), "3", ...});
#ifndef SDFARM_QUEUE_LUA_SCRIPTS_H_
#define SDFARM_QUEUE_LUA_SCRIPTS_H_

namespace sdfarm::queue::lua {

extern const char kBinding[];
extern const char kCheckBinding[];
extern const char kRenew[];
extern const char kEnqueue[];
extern const char kSkipRecorded[];
extern const char kRedeliverOwn[];
extern const char kReclaimExpired[];
extern const char kClaimNew[];
extern const char kFinish[];
extern const char kFail[];
extern const char kHoldForStorage[];
extern const char kCancel[];
extern const char kPause[];
extern const char kResume[];
extern const char kRemoveSweep[];
extern const char kFindLost[];
extern const char kRequeueLost[];

}  // namespace sdfarm::queue::lua

#endif  // SDFARM_QUEUE_LUA_SCRIPTS_H_
