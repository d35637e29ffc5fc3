/*
 * The monotonic clock every timer and latency figure reads (see sl_monotonic_ns in
 * cscopelua.h). Split from the bridge because it has nothing to do with Lua.
 */
#include "cscopelua.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>


static uint64_t clock_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Why: a timer pair reads the clock twice, and clock_gettime costs about 30 ns even
 * through the vDSO, a fifth of a timer.measure pair. When the kernel itself keeps
 * CLOCK_MONOTONIC with the TSC (it checked at boot that the TSC is invariant and in step
 * across CPUs), reading the TSC directly gives the same clock for less than half that:
 * the tick rate is calibrated once against CLOCK_MONOTONIC (half a millisecond, on the
 * first use), and readings are converted from a common origin. Elsewhere (other
 * architectures, other clock sources) clock_gettime is used as is. */
#if defined(__x86_64__)
#include <x86intrin.h>
#include <pthread.h>

static struct {
  uint64_t ns0, tsc0;
  uint64_t mult;  /* nanoseconds per tick, 32.32 fixed point */
} clk;
/* 0: not chosen yet; CLOCK_TSC or CLOCK_SYSTEM once calibrate has run (published with
 * release order, so a reader that sees CLOCK_TSC sees `clk`). */
enum { CLOCK_TSC = 1, CLOCK_SYSTEM = 2 };
static int clkstate;
static pthread_once_t clkonce = PTHREAD_ONCE_INIT;

static int kernel_clock_is_tsc(void) {
  FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
  if (f == NULL) return 0;
  char buf[16] = {0};
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  return n >= 3 && strncmp(buf, "tsc", 3) == 0 && (buf[3] == '\n' || buf[3] == '\0');
}

static int calibrated(void) {
  const char *env = getenv("SCOPELUA_CLOCK");  /* "monotonic": always clock_gettime */
  if ((env != NULL && strcmp(env, "monotonic") == 0) || !kernel_clock_is_tsc()) return 0;
  uint64_t t0 = clock_ns(), c0 = __rdtsc(), t1, c1;
  do {
    t1 = clock_ns();
    c1 = __rdtsc();
  } while (t1 - t0 < 500000);
  if (c1 <= c0) return 0;
  uint64_t mult = (uint64_t)(((unsigned __int128)(t1 - t0) << 32) / (c1 - c0));
  /* A plausible tick rate (50 MHz to 20 GHz), or the calibration went wrong. */
  if (mult < ((uint64_t)1 << 32) / 20 || mult > ((uint64_t)20 << 32)) return 0;
  clk.ns0 = t1;
  clk.tsc0 = c1;
  clk.mult = mult;
  return 1;
}

static void calibrate(void) {
  __atomic_store_n(&clkstate, calibrated() ? CLOCK_TSC : CLOCK_SYSTEM, __ATOMIC_RELEASE);
}

uint64_t sl_monotonic_ns(void) {
  int state = __atomic_load_n(&clkstate, __ATOMIC_ACQUIRE);
  if (state == 0) {
    pthread_once(&clkonce, calibrate);
    state = __atomic_load_n(&clkstate, __ATOMIC_ACQUIRE);
  }
  if (state == CLOCK_TSC) {
    uint64_t c = __rdtsc();
    if (c < clk.tsc0) return clk.ns0;
    return clk.ns0 + (uint64_t)(((unsigned __int128)(c - clk.tsc0) * clk.mult) >> 32);
  }
  return clock_ns();
}
#else
uint64_t sl_monotonic_ns(void) { return clock_ns(); }
#endif

uint64_t sl_elapsed_ns(uint64_t start) {
  uint64_t now = sl_monotonic_ns();
  return now > start ? now - start : 0;
}

