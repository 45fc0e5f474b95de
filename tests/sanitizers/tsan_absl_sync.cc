// ThreadSanitizer builds only (SDFARM_SANITIZE=thread): tells TSan about
// absl::Mutex, absl::CondVar and (through its Mutex) absl::Notification.
//
// Debian's Abseil is not built with -fsanitize=thread, so its Mutex::Lock and
// Unlock carry no TSan annotations: TSan sees no happens-before edge between a
// Mutex's critical sections and reports every access to data it guards as a
// race. This file defines the out-of-line Mutex and CondVar entry points in the
// executable (which interposes them for our code, gRPC and Abseil itself), wraps
// each real one (dlsym RTLD_NEXT) in the annotations Abseil's own TSan build
// uses (absl/base/internal/tsan_mutex_interface.h), and forwards.
//
// CondVar waits and Mutex::Await are annotated as writer-mode waits (what this
// project uses). While the real function runs, TSan ignores memory accesses
// (pre_lock / pre_unlock begin an ignore region), as in Abseil's own build:
// Conditions are evaluated there, by whichever thread holds the real lock.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#ifndef __SANITIZE_THREAD__
#error "tsan_absl_sync.cc belongs in ThreadSanitizer builds only"
#endif

namespace {

#define SDFARM_STR2(x) #x
#define SDFARM_STR(x) SDFARM_STR2(x)

// The real definition of an absl::<ns>:: member: `nested` is the mangled name
// after the namespace, e.g. "5Mutex4LockEv".
void* Real(const char* nested) {
  const char* ns = SDFARM_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  const std::string name = std::string("_ZN4absl") + std::to_string(std::strlen(ns)) + ns + nested;
  void* f = dlsym(RTLD_NEXT, name.c_str());
  if (f == nullptr) {
    std::fprintf(stderr, "tsan_absl_sync: %s not found in the Abseil libraries\n", name.c_str());
    std::abort();
  }
  return f;
}

// (A reference parameter is passed as a pointer: `const Condition&` is declared
// `const Condition*` here.)
template <typename F>
F RealFn(const char* nested) {
  return reinterpret_cast<F>(Real(nested));
}

// Abseil's entry points call each other through the PLT, so through these
// wrappers (CondVar::WaitWithTimeout calls WaitWithDeadline, Mutex::LockWhen*
// and Await* share code): only the outermost call on a thread is annotated.
thread_local int t_depth = 0;
struct Outer {
  Outer() : outer(t_depth++ == 0) {}
  ~Outer() { --t_depth; }
  const bool outer;
};

// Runs real(args...) as a lock of mu (held on return, whatever it returns).
template <typename R, typename... A>
R AsLock(absl::Mutex* mu, unsigned flags, R (*real)(A...), A... args) {
  Outer o;
  if (o.outer) __tsan_mutex_pre_lock(mu, flags);
  if constexpr (std::is_void_v<R>) {
    real(args...);
    if (o.outer) __tsan_mutex_post_lock(mu, flags, 0);
  } else {
    R r = real(args...);
    if (o.outer) __tsan_mutex_post_lock(mu, flags, 0);
    return r;
  }
}

// Runs real(args...) as a wait that releases mu (held in writer mode) and holds
// it again on return.
template <typename R, typename... A>
R AsWait(absl::Mutex* mu, R (*real)(A...), A... args) {
  Outer o;
  if (o.outer) {
    __tsan_mutex_pre_unlock(mu, 0);
    __tsan_mutex_post_unlock(mu, 0);
    __tsan_mutex_pre_lock(mu, 0);
  }
  if constexpr (std::is_void_v<R>) {
    real(args...);
    if (o.outer) __tsan_mutex_post_lock(mu, 0, 0);
  } else {
    R r = real(args...);
    if (o.outer) __tsan_mutex_post_lock(mu, 0, 0);
    return r;
  }
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

using absl::Duration;
using absl::Time;

// A Mutex destroyed by our code is checked against its last use on another
// thread; one destroyed inside gRPC is not (gRPC frees objects after dropping
// the last reference through its own uninstrumented atomics: TSan would see no
// ordering and report the destruction).
Mutex::~Mutex() {
  static auto real = RealFn<void (*)(Mutex*)>("5MutexD2Ev");
  static const void* const executable = [] {
    Dl_info info;
    return dladdr(reinterpret_cast<void*>(&Real), &info) ? info.dli_fbase : nullptr;
  }();
  Dl_info caller;
  if (dladdr(__builtin_return_address(0), &caller) && caller.dli_fbase == executable) __tsan_mutex_destroy(this, 0);
  real(this);
}

void Mutex::Lock() {
  static auto real = RealFn<void (*)(Mutex*)>("5Mutex4LockEv");
  AsLock(this, 0, real, this);
}

void Mutex::ReaderLock() {
  static auto real = RealFn<void (*)(Mutex*)>("5Mutex10ReaderLockEv");
  AsLock(this, __tsan_mutex_read_lock, real, this);
}

bool Mutex::TryLock() {
  static auto real = RealFn<bool (*)(Mutex*)>("5Mutex7TryLockEv");
  Outer o;
  if (o.outer) __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool locked = real(this);
  if (o.outer) __tsan_mutex_post_lock(this, locked ? __tsan_mutex_try_lock : __tsan_mutex_try_lock_failed, 0);
  return locked;
}

bool Mutex::ReaderTryLock() {
  static auto real = RealFn<bool (*)(Mutex*)>("5Mutex13ReaderTryLockEv");
  Outer o;
  if (o.outer) __tsan_mutex_pre_lock(this, __tsan_mutex_try_read_lock);
  const bool locked = real(this);
  if (o.outer) {
    __tsan_mutex_post_lock(this, locked ? __tsan_mutex_try_read_lock : __tsan_mutex_try_read_lock_failed, 0);
  }
  return locked;
}

void Mutex::Unlock() {
  static auto real = RealFn<void (*)(Mutex*)>("5Mutex6UnlockEv");
  Outer o;
  if (o.outer) __tsan_mutex_pre_unlock(this, 0);
  real(this);
  if (o.outer) __tsan_mutex_post_unlock(this, 0);
}

void Mutex::ReaderUnlock() {
  static auto real = RealFn<void (*)(Mutex*)>("5Mutex12ReaderUnlockEv");
  Outer o;
  if (o.outer) __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  real(this);
  if (o.outer) __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

// Lock*When*: the lock is held on return whatever they return.
void Mutex::LockWhen(const Condition& cond) {
  static auto real = RealFn<void (*)(Mutex*, const Condition*)>("5Mutex8LockWhenERKNS0_9ConditionE");
  AsLock(this, 0, real, this, &cond);
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  static auto real = RealFn<void (*)(Mutex*, const Condition*)>("5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  AsLock(this, __tsan_mutex_read_lock, real, this, &cond);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = RealFn<bool (*)(Mutex*, const Condition*, Duration)>(
      "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return AsLock(this, 0, real, this, &cond, timeout);
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  static auto real = RealFn<bool (*)(Mutex*, const Condition*, Time)>(
      "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return AsLock(this, 0, real, this, &cond, deadline);
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = RealFn<bool (*)(Mutex*, const Condition*, Duration)>(
      "5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return AsLock(this, __tsan_mutex_read_lock, real, this, &cond, timeout);
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  static auto real = RealFn<bool (*)(Mutex*, const Condition*, Time)>(
      "5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return AsLock(this, __tsan_mutex_read_lock, real, this, &cond, deadline);
}

// Waits: the lock is released while waiting and held again on return.
void Mutex::Await(const Condition& cond) {
  static auto real = RealFn<void (*)(Mutex*, const Condition*)>("5Mutex5AwaitERKNS0_9ConditionE");
  AsWait(this, real, this, &cond);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static auto real = RealFn<bool (*)(Mutex*, const Condition*, Duration)>(
      "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return AsWait(this, real, this, &cond, timeout);
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static auto real = RealFn<bool (*)(Mutex*, const Condition*, Time)>(
      "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return AsWait(this, real, this, &cond, deadline);
}

void CondVar::Wait(Mutex* mu) {
  static auto real = RealFn<void (*)(CondVar*, Mutex*)>("7CondVar4WaitEPNS0_5MutexE");
  AsWait(mu, real, this, mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static auto real = RealFn<bool (*)(CondVar*, Mutex*, Duration)>(
      "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  return AsWait(mu, real, this, mu, timeout);
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  static auto real = RealFn<bool (*)(CondVar*, Mutex*, Time)>(
      "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  return AsWait(mu, real, this, mu, deadline);
}

ABSL_NAMESPACE_END
}  // namespace absl
