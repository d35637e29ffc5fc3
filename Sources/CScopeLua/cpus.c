/*
 * The process's CPUs and threads: how many CPUs it may use (`--workers auto`), and the
 * names its threads show to top, ps, perf and gdb.
 */
#define _GNU_SOURCE
#include "pipeio.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>
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

/* Why C: pthread_setname_np is a GNU extension Swift's Glibc module does not export.
 * The kernel keeps 15 bytes of a name; a longer one is cut here rather than refused. */
int sl_name_thread(pthread_t thread, const char *name) {
  char cut[16];
  strncpy(cut, name, sizeof cut - 1);
  cut[sizeof cut - 1] = '\0';
  return pthread_setname_np(thread, cut);
}
