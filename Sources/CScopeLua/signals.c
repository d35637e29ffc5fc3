/*
 * Interrupting Lua from outside: the hook lua.c uses on Ctrl-C (the REPL), and the stop
 * signals of a run (SIGINT / SIGTERM, grace period, forced stop, last resort).
 * Everything a signal handler touches here is async-signal-safe.
 */
#include "cscopelua.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* The hook lua.c installs on Ctrl-C: raises inside Lua, at a safe point. */
static void stophook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

void sl_clearinterrupt(lua_State *L) {
  lua_sethook(L, NULL, 0, 0);
}

void sl_interrupt(lua_State *L) {
  lua_sethook(L, stophook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
}

/* ---- stopping a run ----------------------------------------------------------------
 *
 * The first SIGINT / SIGTERM is a graceful stop: the run's Lua code gets an error
 * ("stopped by SIGTERM") at its next instruction, which it may catch, so that every scope
 * unwinds with it; a pipeline's event loop instead polls the flag and stops between
 * events (a "pipeline hold"), and release code (deferred functions) is not interrupted
 * (a "release hold": the error is owed until the hold ends).
 *
 * A second signal, or the grace period running out, forces the stop: from then on every
 * Lua instruction raises the error, whatever the script does: pcall catches it at one
 * level only, and the SIGALRM tick re-arms the hook every 100 ms (and debug.sethook
 * re-arms it at once) so that no script can remove it. Release code may still run Lua
 * for one more grace period, then it fails at once too. If the run has still not ended
 * one grace period after that (it is stuck outside Lua: a blocking read, os.execute, a
 * finalizer), a third signal or the next tick is the last resort: a helper thread
 * flushes the C library's output streams (the runtime's files among them) and the
 * process exits at once with 128 + the signal. */

static volatile sig_atomic_t stop_signal = 0;
static volatile sig_atomic_t stop_forced = 0;
static lua_State *volatile stop_state = NULL;     /* the run's main thread */
static sl_StateInfo *volatile stop_info = NULL;   /* its per-state data (any thread of it) */
static lua_State *volatile stop_running = NULL;   /* the coroutine running now, if any */
static volatile sig_atomic_t hold_pipeline = 0;
static volatile sig_atomic_t hold_release = 0;
static volatile sig_atomic_t owed = 0;            /* a graceful stop waits for a hold to end */
static volatile uint64_t forced_at = 0;           /* monotonic ns */
static volatile uint64_t grace_ns = 10000000000u;
static int stop_pipe[2] = {-1, -1};
enum { TICK_MS = 100 };

static uint64_t now_ns(void) {  /* clock_gettime is async-signal-safe */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ITIMER_REAL (SIGALRM) after `first_ns`, then every `every_ns` (0: once); 0, 0 stops
 * it. Why not alarm(): the grace period may be a fraction of a second, and the forced
 * stop needs a tick. */
static void settimer(uint64_t first_ns, uint64_t every_ns) {
  struct itimerval t;
  t.it_value.tv_sec = (time_t)(first_ns / 1000000000u);
  t.it_value.tv_usec = (suseconds_t)(first_ns % 1000000000u / 1000u);
  if (first_ns != 0 && t.it_value.tv_sec == 0 && t.it_value.tv_usec == 0) t.it_value.tv_usec = 1;
  t.it_interval.tv_sec = (time_t)(every_ns / 1000000000u);
  t.it_interval.tv_usec = (suseconds_t)(every_ns % 1000000000u / 1000u);
  setitimer(ITIMER_REAL, &t, NULL);
}

/* The signal's name for messages (only stop signals are ever recorded). */
static const char *signame(int sig) {
  return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal";
}

void sl_stop_pusherror(lua_State *L) {
  lua_pushfstring(L, "stopped by %s%s", signame(stop_signal), stop_forced ? " (forced)" : "");
}

/* Raises the stop error positioned at the function running (level 0: a hook runs inside
 * the function it interrupts). */
static int raisestop(lua_State *L) {
  luaL_where(L, 0);
  sl_stop_pusherror(L);
  lua_concat(L, 2);
  return lua_error(L);
}

/* The graceful stop: once, unless a hold began after it was armed (then it is owed). */
static void interrupthook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  if (!stop_forced && (hold_pipeline > 0 || hold_release > 0)) {
    owed = hold_pipeline == 0;  /* a pipeline notices the stop itself */
    return;
  }
  owed = 0;
  raisestop(L);
}

/* The forced stop: every instruction, except in release code during its last grace. */
static void forcedhook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  if (hold_release > 0 && now_ns() - forced_at < grace_ns) return;
  raisestop(L);
}

static const int hookmask = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;

/* Sets `hook` on the run's main thread and on the coroutine running, if any (a hook
 * belongs to one thread; coroutines created later inherit it). */
static void arm(lua_Hook hook) {
  lua_State *L = stop_state, *co = stop_running;
  if (L != NULL) lua_sethook(L, hook, hookmask, 1);
  if (co != NULL && co != L) lua_sethook(co, hook, hookmask, 1);
}

/* Removes a stop hook from `L`, and only a stop hook (a script may have its own). */
static void disarm(lua_State *L) {
  lua_Hook h = lua_gethook(L);
  if (h == interrupthook || h == forcedhook) lua_sethook(L, NULL, 0, 0);
}

/* The last resort runs on this thread: a signal handler may not touch stdio. */
static sem_t lastresort_sem;
static volatile sig_atomic_t lastresort_posted = 0;
static volatile uint64_t lastresort_at = 0;

static void *lastresort_main(void *arg) {
  (void)arg;
  while (sem_wait(&lastresort_sem) != 0) {}
  static const char msg[] =
      "scopelua: stop forced, but the run did not end within the grace period (stuck outside Lua): "
      "output flushed, exiting without releasing the rest\n";
  (void)!write(2, msg, sizeof msg - 1);
  fflush(NULL);  /* if a stream's lock is held for good, the tick exits without it */
  _exit(128 + stop_signal);
}

/* From the handler: wakes the helper thread; if it is still not done a second later (a
 * stream's lock held for good by the stuck main thread), exits without it. */
static void lastresort(void) {
  if (!lastresort_posted) {
    lastresort_posted = 1;
    lastresort_at = now_ns();
    sem_post(&lastresort_sem);
  } else if (now_ns() - lastresort_at > 1000000000u) {
    _exit(128 + stop_signal);
  }
}

/* Makes the stop pipe readable: an event loop waiting in poll() sees the stop at once. */
static void wake(void) {
  if (stop_pipe[1] >= 0) { char c = 1; (void)!write(stop_pipe[1], &c, 1); }
}

/* The second step: every Lua instruction raises from now on (see forcedhook). */
static void force(void) {
  stop_forced = 1;
  owed = 0;
  forced_at = now_ns();
  arm(forcedhook);
  settimer((uint64_t)TICK_MS * 1000000u, (uint64_t)TICK_MS * 1000000u);
  wake();
}

/* SIGINT / SIGTERM: the first starts the graceful stop and its grace period, the second
 * forces it, a third is the last resort. SIGALRM: the grace period ran out (force), or
 * the forced stop's tick (re-arm the hook; the last resort when its time has come). */
static void on_stop_signal(int sig) {
  int saved = errno;
  if (sig == SIGALRM) {
    if (!stop_forced) {
      if (stop_signal != 0) force();  /* the grace period ran out */
    } else if (now_ns() - forced_at >= 2 * grace_ns || lastresort_posted) {
      lastresort();
    } else {
      arm(forcedhook);  /* whatever the script did to the hook */
    }
  } else if (stop_signal == 0) {
    stop_signal = sig;
    settimer(grace_ns, 0);
    wake();
    if (hold_pipeline == 0 && hold_release == 0) arm(interrupthook);
    else owed = hold_pipeline == 0;
  } else if (!stop_forced) {
    force();
  } else {
    lastresort();  /* a third signal: no more waiting */
  }
  errno = saved;
}

/* ---- knowing which coroutine runs ----------------------------------------------------
 * Why: a hook belongs to one thread, so a stop must also be set on the coroutine that is
 * running when the signal comes. coroutine.resume and coroutine.wrap are lcorolib's
 * (Lua 5.4), except that they record the coroutine they run while it runs. */

static int auxresume(lua_State *L, lua_State *co, int narg) {
  int status, nres;
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  stop_running = co;
  if (stop_forced) lua_sethook(co, forcedhook, hookmask, 1);
  status = lua_resume(co, L, narg, &nres);
  stop_running = L == stop_state ? NULL : L;  /* back to the resumer, before anything can raise */
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);  /* the error */
  return -1;
}

/* Upvalue 1: the stock coroutine.resume, for its argument error. */
static int coresume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  if (co == NULL) return lua_tocfunction(L, lua_upvalueindex(1))(L);
  int r = auxresume(L, co, lua_gettop(L) - 1);
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static int auxwrap(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int r = auxresume(L, co, lua_gettop(L));
  if (r < 0) {
    int stat = lua_status(co);
    if (stat != LUA_OK && stat != LUA_YIELD) {  /* an error in the coroutine: close its tbc variables */
#if LUA_VERSION_RELEASE_NUM >= 50406
      stat = lua_closethread(co, L);
#else
      stat = lua_resetthread(co);
#endif
      lua_xmove(co, L, 1);
    }
    if (stat != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return r;
}

/* Upvalue 1: the stock coroutine.create (its argument check, in this frame). */
static int cowrap(lua_State *L) {
  lua_tocfunction(L, lua_upvalueindex(1))(L);
  lua_pushcclosure(L, auxwrap, 1);
  return 1;
}

/* debug.sethook (upvalue 1, in this frame), except that it cannot lift a forced stop. */
static int sethook(lua_State *L) {
  int n = lua_tocfunction(L, lua_upvalueindex(1))(L);
  if (stop_forced) {
    arm(forcedhook);
    if (lua_type(L, 1) == LUA_TTHREAD) lua_sethook(lua_tothread(L, 1), forcedhook, hookmask, 1);
  }
  return n;
}

/* Sets lib[name] to `fn` with lib[from] (a C function) as upvalue 1. */
static void replace(lua_State *L, const char *lib, const char *name, const char *from, lua_CFunction fn) {
  int top = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, lib) == LUA_TTABLE && lua_getfield(L, -1, from) == LUA_TFUNCTION
      && lua_tocfunction(L, -1) != NULL) {
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, name);
  }
  lua_settop(L, top);
}

void sl_stop_install(lua_State *L, double grace) {
  grace = grace > 0.001 ? grace : 0.001;
  grace_ns = grace < 1e6 ? (uint64_t)(grace * 1e9) : (uint64_t)1e15;
  if (stop_pipe[0] < 0 && pipe(stop_pipe) == 0) {
    for (int i = 0; i < 2; i++) {
      fcntl(stop_pipe[i], F_SETFL, fcntl(stop_pipe[i], F_GETFL) | O_NONBLOCK);
      fcntl(stop_pipe[i], F_SETFD, FD_CLOEXEC);
    }
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGALRM);
  static int started = 0;
  if (!started && sem_init(&lastresort_sem, 0, 0) == 0) {
    /* The helper thread must never take these signals: block them while creating it. */
    sigset_t old;
    pthread_t t;
    pthread_sigmask(SIG_BLOCK, &set, &old);
    if (pthread_create(&t, NULL, lastresort_main, NULL) == 0) {
      pthread_detach(t);
      started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  replace(L, LUA_COLIBNAME, "resume", "resume", coresume);
  replace(L, LUA_COLIBNAME, "wrap", "create", cowrap);
  replace(L, LUA_DBLIBNAME, "sethook", "sethook", sethook);
  stop_state = L;
  stop_info = sl_info(L);
  stop_running = NULL;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sa.sa_mask = set;            /* one handler at a time */
  sa.sa_flags = SA_RESTART;    /* a signal never turns into a short read or write */
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGALRM, &sa, NULL);
  /* A parent may have started us with these blocked (some process launchers do). */
  sigprocmask(SIG_UNBLOCK, &set, NULL);
}

void sl_stop_uninstall(void) {
  settimer(0, 0);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGALRM, SIG_DFL);
  if (stop_state != NULL) disarm(stop_state);
  stop_state = NULL;
  stop_info = NULL;
  stop_running = NULL;
}

/* Whether `L` is a thread of the run's state: runtimes created in the same process
 * (tests run many, on other threads) neither hold nor see a run's stop. */
static int ours(lua_State *L) {
  return stop_info != NULL && sl_info(L) == stop_info;
}

void sl_stop_pipeline(lua_State *L, int entering) {
  if (!ours(L)) return;
  if (entering) {
    hold_pipeline++;
    if (!stop_forced) {  /* armed but not fired yet: the event loop will see the flag */
      disarm(stop_state);
      if (stop_running != NULL) disarm(stop_running);
    }
  } else {
    hold_pipeline--;
    owed = 0;  /* the pipeline reports the stop itself */
  }
}

void sl_stop_release(lua_State *L, int entering) {
  if (!ours(L)) return;
  if (entering) {
    hold_release++;
  } else if (--hold_release == 0 && hold_pipeline == 0 && owed && !stop_forced) {
    owed = 0;
    arm(interrupthook);
  }
}

int sl_stop_signal(void) { return stop_signal; }
int sl_stop_forced(void) { return stop_forced; }
int sl_stop_fd(void) { return stop_pipe[0]; }

void sl_stop_reset(void) {
  stop_signal = 0;
  stop_forced = 0;
  owed = 0;
  if (stop_pipe[0] >= 0) { char buf[64]; while (read(stop_pipe[0], buf, sizeof buf) > 0) {} }
}

/* ---- REPL interrupts ---------------------------------------------------------------- */

static lua_State *volatile repl_state = NULL;

static void on_repl_sigint(int sig) {
  signal(sig, SIG_DFL);  /* a second Ctrl-C before the hook fires ends the process */
  if (repl_state != NULL) sl_interrupt(repl_state);
}

void sl_repl_interrupt_install(lua_State *L) {
  repl_state = L;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_repl_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_UNBLOCK, &set, NULL);
}

void sl_repl_interrupt_uninstall(void) {
  signal(SIGINT, SIG_IGN);
  if (repl_state != NULL) sl_clearinterrupt(repl_state);
  repl_state = NULL;
}

void sl_repl_interrupt_now(void) {
  if (repl_state != NULL) sl_interrupt(repl_state);
}
