// FUZZ_CHECK: an invariant the code under test promises. A failure prints the
// condition and aborts, which libFuzzer reports as a crash (with the input
// saved), like any sanitizer finding.
#ifndef SDFARM_TESTS_FUZZ_FUZZ_CHECK_H_
#define SDFARM_TESTS_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)

#endif  // SDFARM_TESTS_FUZZ_FUZZ_CHECK_H_
