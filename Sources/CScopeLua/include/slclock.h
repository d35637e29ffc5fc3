/*
 * The monotonic clock every timer and latency figure reads (clock.c): CLOCK_MONOTONIC,
 * read through the TSC where the kernel keeps that clock with the TSC.
 */
#ifndef SLCLOCK_H
#define SLCLOCK_H

#include <stdint.h>

/* Monotonic clock in nanoseconds: CLOCK_MONOTONIC, read through the TSC when the kernel
 * keeps it with the TSC (calibrated at the first reading, checked against the kernel
 * again during the run). SCOPELUA_CLOCK=monotonic forces clock_gettime. Readings of
 * one thread never go backwards. */
uint64_t sl_monotonic_ns(void);
/* Nanoseconds since `start` (a reading of sl_monotonic_ns); never negative. */
uint64_t sl_elapsed_ns(uint64_t start);

/* How the process's clock is read: not chosen yet, the TSC, clock_gettime, or
 * clock_gettime after the TSC disagreed with the kernel during the run. */
enum { SL_CLOCK_UNSET = 0, SL_CLOCK_TSC = 1, SL_CLOCK_SYSTEM = 2, SL_CLOCK_FALLBACK = 3 };
int sl_clock_state(void);

/* ---- TSC calibration, apart from the clocks so that tests can feed it readings ---- */

/* One kernel clock reading (ns) between two TSC reads: it happened at the bracket's
 * midpoint, give or take half its width. */
typedef struct sl_ClockSample {
  uint64_t tsc_before, ns, tsc_after;
} sl_ClockSample;

enum { SL_CLOCK_MAXPAIRS = 16 };

/* The TSC rate, nanoseconds per tick in 32.32 fixed point, from `n` pairs of samples
 * (start[i] taken before end[i]): each pair whose two brackets are narrow (at most
 * twice the median width of all 2n brackets, plus 64 ticks: a wider one was
 * interrupted) gives a rate, and the median of those is the result. 0 when no more
 * than half the pairs are usable (the machine was too busy to trust any of them). */
uint64_t sl_clock_rate(const sl_ClockSample *start, const sl_ClockSample *end, int n);

/* A clock reading the TSC: ns = ns0 + (tsc - tsc0) * mult / 2^32. */
typedef struct sl_Clock {
  int state;             /* SL_CLOCK_* (atomic in the process's clock) */
  uint64_t ns0, tsc0, mult;
  uint64_t checkat;      /* the TSC count at which to check against the kernel again */
  uint64_t checkticks;   /* ticks from that check to the one after (doubling, capped) */
  uint64_t offset;       /* SL_CLOCK_FALLBACK: added to clock_gettime's nanoseconds */
} sl_Clock;

/* The clock's nanoseconds at TSC count `tsc`. */
uint64_t sl_clock_tsc_ns(const sl_Clock *clk, uint64_t tsc);

/* Checks a TSC clock against a fresh sample. It agrees when, at the sample's midpoint,
 * it is within a thousandth of the time since calibration (plus 20 us) of the kernel's
 * reading, and `kernel_tsc` says the kernel still keeps its clock with the TSC: then
 * the next check is scheduled (twice as far ahead, at most about 17 minutes) and 1 is
 * returned. Otherwise the clock switches to SL_CLOCK_FALLBACK with an offset that puts
 * the kernel's clock at or after everything the TSC gave before, and 0 is returned. */
int sl_clock_check(sl_Clock *clk, const sl_ClockSample *s, int kernel_tsc);

#endif
