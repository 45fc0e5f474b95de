/* A test shim (LD_PRELOAD) that steps the wall clock of one process back by
 * an hour while the file named by SDFARM_TEST_CLOCK_STEP_FILE exists: what
 * NTP or `date -s` does to a running coordinator, without touching the
 * machine's clock. CLOCK_MONOTONIC and every other clock pass through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec*);

int clock_gettime(clockid_t id, struct timespec* ts) {
  static clock_gettime_fn real = NULL;
  if (!real) real = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
  const int rc = real(id, ts);
  if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
    const char* file = getenv("SDFARM_TEST_CLOCK_STEP_FILE");
    if (file && access(file, F_OK) == 0) ts->tv_sec -= 3600;
  }
  return rc;
}
