/*
 * How many CPUs this process may use (`--workers auto`).
 */
#define _GNU_SOURCE
#include "pipeio.h"

#include <sched.h>
#include <unistd.h>

/* Why C: CPU_COUNT is a macro Swift cannot call, and a container's CPU limit shows in the
 * affinity mask, not in the count of CPUs online. */
int sl_usable_cpus(void) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 && online < 1 << 20 ? (int)online : 1;
}
