/*
 * The monotonic clock every timer and latency figure reads (see slclock.h). Split from
 * the bridge because it has nothing to do with Lua.
 */
#include "slclock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t clock_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- calibration arithmetic (any architecture: tests feed it readings) ----------- */

static uint64_t width(const sl_ClockSample *s) {
  return s->tsc_after >= s->tsc_before ? s->tsc_after - s->tsc_before : UINT64_MAX;
}

static uint64_t midpoint(const sl_ClockSample *s) {
  return s->tsc_before + (s->tsc_after - s->tsc_before) / 2;
}

/* Why: a kernel clock reading is only as good as the bracket around it, and one pair
 * of readings can still be off (a reading delayed inside the kernel, a clock step):
 * wide brackets are dropped and the median of the rest is taken. */
uint64_t sl_clock_rate(const sl_ClockSample *start, const sl_ClockSample *end, int n) {
  if (n <= 0 || n > SL_CLOCK_MAXPAIRS) return 0;
  uint64_t widths[2 * SL_CLOCK_MAXPAIRS];
  for (int i = 0; i < 2 * n; i++) {
    uint64_t w = width(i < n ? &start[i] : &end[i - n]);
    int j = i;
    while (j > 0 && widths[j - 1] > w) {
      widths[j] = widths[j - 1];
      j--;
    }
    widths[j] = w;
  }
  uint64_t typical = widths[n];  /* the median (the upper one of the middle two) */
  if (typical > UINT64_MAX / 4) return 0;
  uint64_t limit = 2 * typical + 64;
  uint64_t rates[SL_CLOCK_MAXPAIRS];
  int k = 0;
  for (int i = 0; i < n; i++) {
    if (width(&start[i]) > limit || width(&end[i]) > limit) continue;
    uint64_t a = midpoint(&start[i]), b = midpoint(&end[i]);
    if (b <= a || end[i].ns <= start[i].ns) continue;
    unsigned __int128 rate = ((unsigned __int128)(end[i].ns - start[i].ns) << 32) / (b - a);
    if (rate > UINT64_MAX) continue;
    /* insertion sort: at most 16 values */
    int j = k++;
    while (j > 0 && rates[j - 1] > (uint64_t)rate) {
      rates[j] = rates[j - 1];
      j--;
    }
    rates[j] = (uint64_t)rate;
  }
  if (k * 2 <= n) return 0;
  if (k % 2 == 1) return rates[k / 2];
  return rates[k / 2 - 1] + (rates[k / 2] - rates[k / 2 - 1]) / 2;
}

/* Why: the one conversion every TSC reading goes through (inline in this file). */
static inline uint64_t tsc_ns(const sl_Clock *clk, uint64_t tsc) {
  if (tsc < clk->tsc0) return clk->ns0;
  return clk->ns0 + (uint64_t)(((unsigned __int128)(tsc - clk->tsc0) * clk->mult) >> 32);
}

uint64_t sl_clock_tsc_ns(const sl_Clock *clk, uint64_t tsc) { return tsc_ns(clk, tsc); }

/* Checks are scheduled 1 s after calibration, then twice as far apart each time, up
 * to 2^10 s: a service that runs for weeks still checks a few times an hour. */
enum { CHECK_FIRST_NS = 1000000000, CHECK_DOUBLINGS = 10 };

/* Why: a calibration can be wrong in ways no bracket shows (a frequency change under a
 * hypervisor, the kernel deciding later that the TSC is unstable, suspend), and then
 * every timer is wrong: the TSC must keep agreeing with the kernel to stay in use. */
int sl_clock_check(sl_Clock *clk, const sl_ClockSample *s, int kernel_tsc) {
  uint64_t predicted = tsc_ns(clk, midpoint(s));
  uint64_t since = s->ns > clk->ns0 ? s->ns - clk->ns0 : 0;
  uint64_t error = predicted > s->ns ? predicted - s->ns : s->ns - predicted;
  if (kernel_tsc && error <= since / 1000 + 20000) {
    uint64_t next = clk->checkticks;
    uint64_t cap = clk->mult > 0 ? (uint64_t)((((unsigned __int128)CHECK_FIRST_NS << CHECK_DOUBLINGS) << 32) / clk->mult) : next;
    if (next < cap) next = next * 2 < cap ? next * 2 : cap;
    __atomic_store_n(&clk->checkticks, next, __ATOMIC_RELAXED);
    __atomic_store_n(&clk->checkat, s->tsc_after + next, __ATOMIC_RELAXED);
    return 1;
  }
  /* Everything the TSC gave before this sample is at most its reading at tsc_after;
   * every kernel reading from now on is at least s->ns. */
  uint64_t last = tsc_ns(clk, s->tsc_after);
  clk->offset = last > s->ns ? last - s->ns : 0;
  __atomic_store_n(&clk->state, SL_CLOCK_FALLBACK, __ATOMIC_RELEASE);  /* publishes offset */
  return 0;
}

/* ---- the process's clock --------------------------------------------------------- */

static sl_Clock clk;

/* Why: tests and diagnostics ask which clock the process ended up with. */
int sl_clock_state(void) {
  sl_monotonic_ns();  /* chooses the clock if no reading has yet */
  return __atomic_load_n(&clk.state, __ATOMIC_ACQUIRE);
}

/* Why: a timer pair reads the clock twice, and clock_gettime costs about 30 ns even
 * through the vDSO (40 ns on the development machine), a fifth of a timer.measure pair. When the kernel itself keeps
 * CLOCK_MONOTONIC with the TSC (it checked at boot that the TSC is invariant and in step
 * across CPUs), reading the TSC directly gives the same clock for less: the tick rate is
 * calibrated against CLOCK_MONOTONIC on the first reading (half a millisecond), checked
 * again later in the run (sl_clock_check), and readings are converted from a common
 * origin. Elsewhere (other architectures, other clock sources) clock_gettime is used. */
#if defined(__x86_64__)
#include <x86intrin.h>

static pthread_once_t clkonce = PTHREAD_ONCE_INIT;

/* This thread's last reading, kept where a switch of the clock could make a later
 * reading smaller: after a fall back from the TSC, readings never go below it. */
static __thread uint64_t lastread __attribute__((tls_model("initial-exec")));

/* Why: after a fall back, the kernel's clock moved forward by the offset, and held at
 * this thread's last reading (another thread may have switched the clock between this
 * thread's last TSC reading and now). */
static uint64_t fallback_ns(void) {
  uint64_t v = clock_ns() + clk.offset;
  if (v < lastread) v = lastread;
  lastread = v;
  return v;
}

/* Why: the TSC is only CLOCK_MONOTONIC's own source while the kernel says so; it
 * switches away when it finds the TSC unstable (asked at calibration and each check). */
static int kernel_clock_is_tsc(void) {
  FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
  if (f == NULL) return 0;
  char buf[16] = {0};
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  return n >= 3 && strncmp(buf, "tsc", 3) == 0 && (buf[3] == '\n' || buf[3] == '\0');
}

/* Why: a bracket is only a bracket if neither TSC read moves across the kernel's own
 * read; lfence keeps them in order (this is not the hot path). Not inlined: every
 * sample takes the same code, so their widths compare. */
__attribute__((noinline)) static void take_sample(sl_ClockSample *s) {
  _mm_lfence();
  s->tsc_before = __rdtsc();
  _mm_lfence();
  s->ns = clock_ns();
  _mm_lfence();
  s->tsc_after = __rdtsc();
  _mm_lfence();
}

/* Why: one check decides whether the TSC stays in use, so it takes the narrowest of a
 * few samples taken back to back. */
static void best_sample(sl_ClockSample *s, int tries) {
  take_sample(s);
  for (int i = 1; i < tries; i++) {
    sl_ClockSample t;
    take_sample(&t);
    if (width(&t) < width(s)) *s = t;
  }
}

enum { PAIRS = 7, CALIBRATION_NS = 500000 };

/* Why: the rate and the origin of TSC readings; 0 when the TSC is not to be used. */
static int calibrated(void) {
  const char *env = getenv("SCOPELUA_CLOCK");  /* "monotonic": always clock_gettime */
  if ((env != NULL && strcmp(env, "monotonic") == 0) || !kernel_clock_is_tsc()) return 0;
  sl_ClockSample start[PAIRS], end[PAIRS];
  for (int i = 0; i < 16; i++) take_sample(&start[0]);  /* warm: the first reads are slow */
  for (int i = 0; i < PAIRS; i++) take_sample(&start[i]);
  do {
    take_sample(&end[0]);
  } while (end[0].ns - start[0].ns < CALIBRATION_NS);
  for (int i = 1; i < PAIRS; i++) take_sample(&end[i]);
  uint64_t mult = sl_clock_rate(start, end, PAIRS);
  /* A plausible tick rate (50 MHz to 20 GHz), or the calibration went wrong. */
  if (mult < ((uint64_t)1 << 32) / 20 || mult > ((uint64_t)20 << 32)) return 0;
  const sl_ClockSample *anchor = &end[0];
  for (int i = 1; i < PAIRS; i++)
    if (width(&end[i]) < width(anchor)) anchor = &end[i];
  clk.ns0 = anchor->ns;
  clk.tsc0 = midpoint(anchor);
  clk.mult = mult;
  clk.checkticks = (uint64_t)(((unsigned __int128)CHECK_FIRST_NS << 32) / mult);
  clk.checkat = clk.tsc0 + clk.checkticks;
  return 1;
}

static void calibrate(void) {
  __atomic_store_n(&clk.state, calibrated() ? SL_CLOCK_TSC : SL_CLOCK_SYSTEM, __ATOMIC_RELEASE);
}

/* Why: the check against the kernel, at the reading that reached `checkat`. One thread
 * checks (the others go on reading the TSC meanwhile). A check on a sample whose
 * bracket is wide (this thread was interrupted) is postponed, not decided. Returns 0
 * when the clock fell back to the kernel's. */
static int recheck(void) {
  static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
  if (pthread_mutex_trylock(&lock) != 0) return 1;
  int keep = 1;
  uint64_t now = __rdtsc();
  if (__atomic_load_n(&clk.state, __ATOMIC_RELAXED) == SL_CLOCK_TSC
      && now >= __atomic_load_n(&clk.checkat, __ATOMIC_RELAXED)) {
    sl_ClockSample s;
    best_sample(&s, 5);
    if (tsc_ns(&clk, s.tsc_after) - tsc_ns(&clk, s.tsc_before) > 50000) {
      __atomic_store_n(&clk.checkat, s.tsc_after + clk.checkticks / 8, __ATOMIC_RELAXED);
    } else {
      keep = sl_clock_check(&clk, &s, kernel_clock_is_tsc());
    }
  }
  pthread_mutex_unlock(&lock);
  return keep;
}

/* Why: everything but the common case, out of line so that the common case (a TSC
 * reading before the next check) stays a handful of instructions. */
__attribute__((noinline)) static uint64_t slow_ns(int state) {
  if (state == SL_CLOCK_UNSET) {
    pthread_once(&clkonce, calibrate);
    return sl_monotonic_ns();
  }
  if (state == SL_CLOCK_TSC) {
    uint64_t c = __rdtsc();
    if (c < __atomic_load_n(&clk.checkat, __ATOMIC_RELAXED) || recheck()) {
      uint64_t v = tsc_ns(&clk, c);
      lastread = v;
      return v;
    }
    state = SL_CLOCK_FALLBACK;
  }
  if (state == SL_CLOCK_FALLBACK) return fallback_ns();
  return clock_ns();
}

uint64_t sl_monotonic_ns(void) {
  int state = __atomic_load_n(&clk.state, __ATOMIC_ACQUIRE);
  if (__builtin_expect(state == SL_CLOCK_TSC, 1)) {
    uint64_t c = __rdtsc();
    if (__builtin_expect(c < __atomic_load_n(&clk.checkat, __ATOMIC_RELAXED), 1)) {
      uint64_t v = tsc_ns(&clk, c);
      lastread = v;
      return v;
    }
  }
  return slow_ns(state);
}
#else
uint64_t sl_monotonic_ns(void) {
  if (__atomic_load_n(&clk.state, __ATOMIC_RELAXED) == SL_CLOCK_UNSET)
    __atomic_store_n(&clk.state, SL_CLOCK_SYSTEM, __ATOMIC_RELAXED);
  return clock_ns();
}
#endif

uint64_t sl_elapsed_ns(uint64_t start) {
  uint64_t now = sl_monotonic_ns();
  return now > start ? now - start : 0;
}
