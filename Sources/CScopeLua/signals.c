/*
 * Interrupting Lua from outside: the hook lua.c uses on Ctrl-C (the REPL), and the stop
 * signals of a run (SIGINT / SIGTERM, grace period, forced stop, last resort).
 * Everything a signal handler touches here is async-signal-safe.
 */
#include "cscopelua.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
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
 * process exits at once with 128 + the signal.
 *
 * Targets (ARCHITECTURE.md, "Stopping a run"). The stop reaches the states in `targets`:
 * the run's state (sl_stop_install) and worker states (sl_stop_attach), each run by one
 * thread of its own. The signal is for the process (stop_signal, stop_forced); the holds,
 * the owed error and the coroutine running are per target. A hook may only be set on a
 * state by its own thread (lua_sethook walks the state's call list), so a handler arms
 * the target of the thread it runs on directly and sends every other target's thread the
 * arm signal (pthread_kill), whose handler arms that thread's target; everything a hook
 * decides (holds, owed) is decided on the target's own thread.
 *
 * A slot's life: FREE -> SETUP (its thread fills it in) -> LIVE (handlers may use it)
 * -> CLOSING -> FREE, and LIVE -> ORPHAN -> CLOSING when sl_stop_uninstall, on another
 * thread, forgets a target still attached (only its owner's detach frees it). A handler
 * uses a slot only between enter() and leave(): `users` counts them, and
 * closing a slot (on its owner's thread, before the state is closed) first takes it out
 * of reach (CLOSING), then waits for `users` to reach 0, then removes its hooks. So no
 * handler ever touches a state being closed, nor signals a thread that has detached. */

enum { SLOT_FREE, SLOT_SETUP, SLOT_LIVE, SLOT_ORPHAN, SLOT_CLOSING };
/* What a target's arm signal asks for, the strongest pending request winning. */
enum { REQ_NONE, REQ_GRACEFUL, REQ_FORCED, REQ_DISARM };

typedef struct StopTarget {
  _Atomic int state;                /* SLOT_* */
  _Atomic int users;                /* handlers on other threads using the slot now */
  _Atomic int req;                  /* REQ_*: what the owner's arm signal is to do */
  _Atomic(sl_StateInfo *) info;     /* whose slot it is (the state's per-state data) */
  pthread_t thread;                 /* the owner: set before LIVE, constant until FREE */
  /* The owner's thread only (its code and its signal handlers): */
  lua_State *L;                     /* the state's main thread */
  lua_State *volatile running;      /* the coroutine running now, if any */
  volatile sig_atomic_t hold_pipeline, hold_release;
  volatile sig_atomic_t owed;       /* stop_gen of a graceful stop waiting for a hold to end */
  volatile sig_atomic_t graced;     /* stop_gen of the graceful stop it was given */
} StopTarget;

static StopTarget targets[SL_STOP_MAXTARGETS];

_Static_assert(ATOMIC_INT_LOCK_FREE == 2 && ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_POINTER_LOCK_FREE == 2,
               "signal handlers may only use lock-free atomics");

static _Atomic int stop_signal = 0;
static _Atomic int stop_forced = 0;
static _Atomic int stop_gen = 1;                  /* a new one after sl_stop_reset */
static _Atomic uint64_t forced_at = 0;            /* monotonic ns */
static _Atomic uint64_t grace_ns = 10000000000u;
static int stop_pipe[2] = {-1, -1};
static _Atomic int stop_wfd = -1;                 /* stop_pipe[1], for the handlers */
static _Atomic int armsig = 0;                    /* the arm signal (see armsig_setup) */
static atomic_flag handling = ATOMIC_FLAG_INIT;   /* one stop handler at a time, process-wide */
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

/* The target of `L` (any thread of its state), if it is one, found through the slot its
 * per-state data names; NULL for a state that is neither installed nor attached (tests
 * run many runtimes), detached, or forgotten by sl_stop_uninstall. For code running on
 * the state's own thread (hooks, wrappers, holds), never for signal handlers. */
static StopTarget *mine(lua_State *L) {
  sl_StateInfo *info = sl_info(L);
  if (info == NULL || info->stopslot <= 0 || info->stopslot > SL_STOP_MAXTARGETS) return NULL;
  StopTarget *t = &targets[info->stopslot - 1];
  if (atomic_load_explicit(&t->info, memory_order_relaxed) != info || atomic_load(&t->state) != SLOT_LIVE) return NULL;
  return t;
}

/* The graceful stop: once, unless a hold began after it was armed (then it is owed). A
 * hook left on a thread of a state that is no target any more sees no hold. */
static void interrupthook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  StopTarget *t = mine(L);
  if (t != NULL && !stop_forced && (t->hold_pipeline > 0 || t->hold_release > 0)) {
    t->owed = t->hold_pipeline == 0 ? stop_gen : 0;  /* a pipeline notices the stop itself */
    return;
  }
  if (t != NULL) t->owed = 0;
  raisestop(L);
}

/* The forced stop: every instruction, except in release code during its last grace. */
static void forcedhook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  StopTarget *t = mine(L);
  if (t != NULL && t->hold_release > 0 && now_ns() - forced_at < grace_ns) return;
  raisestop(L);
}

static const int hookmask = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;

int sl_isstophook(lua_Hook h) {
  return h == interrupthook || h == forcedhook || h == stophook;
}

/* Removes a stop hook from `L`, and only a stop hook (a script may have its own). */
static void disarm(lua_State *L) {
  lua_Hook h = lua_gethook(L);
  if (h == interrupthook || h == forcedhook) lua_sethook(L, NULL, 0, 0);
}

/* On the target's own thread: sets `hook` on its main thread and on the coroutine
 * running, if any (a hook belongs to one thread; coroutines created later inherit it). */
static void sethooks(StopTarget *t, lua_Hook hook) {
  lua_State *co = t->running;
  lua_sethook(t->L, hook, hookmask, 1);
  if (co != NULL && co != t->L) lua_sethook(co, hook, hookmask, 1);
}

static void disarmall(StopTarget *t) {
  lua_State *co = t->running;
  disarm(t->L);
  if (co != NULL && co != t->L) disarm(co);
}

/* On the target's own thread (its code, or a handler interrupting it): does what `req`
 * asks, given the stop as it is now. The graceful stop is given once per stop
 * (`graced`); during a hold it is not armed but owed (release hold) or left to the
 * pipeline, which polls the flag (pipeline hold). */
static void apply(StopTarget *t, int req, int state) {
  if (req == REQ_DISARM) {
    disarmall(t);
    return;
  }
  if (state != SLOT_LIVE || req == REQ_NONE) return;
  if (stop_forced) {
    sethooks(t, forcedhook);
    return;
  }
  int gen = stop_gen;
  if (req != REQ_GRACEFUL || stop_signal == 0 || t->graced == gen) return;
  t->graced = gen;
  if (t->hold_pipeline == 0 && t->hold_release == 0) sethooks(t, interrupthook);
  else t->owed = t->hold_pipeline == 0 ? gen : 0;
}

/* A handler (or sl_stop_uninstall) on another thread may use slot `t` from a successful
 * enter() to leave(); `orphans`: an ORPHAN slot too (only its owner's arm signal does). */
static int enter(StopTarget *t, int orphans) {
  int s = atomic_load(&t->state);
  if (s != SLOT_LIVE && !(orphans && s == SLOT_ORPHAN)) return 0;
  atomic_fetch_add(&t->users, 1);
  s = atomic_load(&t->state);  /* seq_cst both sides: closeslot sees users, or we see CLOSING */
  if (s == SLOT_LIVE || (orphans && s == SLOT_ORPHAN)) return 1;
  atomic_fetch_sub(&t->users, 1);
  return 0;
}

static void leave(StopTarget *t) {
  atomic_fetch_sub(&t->users, 1);
}

/* Asks the owner of the entered slot `t` for `req` (the strongest request pending wins)
 * and signals its thread, which is alive: it cannot have detached while we are entered. */
static void request(StopTarget *t, int req) {
  int old = atomic_load(&t->req);
  while (old < req && !atomic_compare_exchange_weak(&t->req, &old, req)) {}
  pthread_kill(t->thread, armsig);  /* async-signal-safe */
}

/* From a stop handler, on any thread: every target gets `req`, the one of this thread
 * at once, the others through their thread's arm signal. */
static void armall(int req) {
  pthread_t self = pthread_self();
  for (int i = 0; i < SL_STOP_MAXTARGETS; i++) {
    StopTarget *t = &targets[i];
    if (!enter(t, 0)) continue;
    if (pthread_equal(t->thread, self)) apply(t, req, SLOT_LIVE);
    else request(t, req);
    leave(t);
  }
}

/* The arm signal: does what was asked of the targets of the thread it runs on. */
static void on_arm_signal(int sig) {
  (void)sig;
  int saved = errno;
  pthread_t self = pthread_self();
  for (int i = 0; i < SL_STOP_MAXTARGETS; i++) {
    StopTarget *t = &targets[i];
    if (!enter(t, 1)) continue;
    if (pthread_equal(t->thread, self)) {
      int req = atomic_exchange(&t->req, REQ_NONE);
      apply(t, req, atomic_load(&t->state));
    }
    leave(t);
  }
  errno = saved;
}

/* The last resort runs on this thread: a signal handler may not touch stdio. */
static sem_t lastresort_sem;
static volatile sig_atomic_t lastresort_posted = 0;  /* under `handling` */
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
  int fd = stop_wfd;
  if (fd >= 0) { char c = 1; (void)!write(fd, &c, 1); }
}

/* The second step: every Lua instruction raises from now on (see forcedhook). */
static void force(void) {
  forced_at = now_ns();  /* before stop_forced: forcedhook reads it once that is set */
  stop_forced = 1;
  armall(REQ_FORCED);
  settimer((uint64_t)TICK_MS * 1000000u, (uint64_t)TICK_MS * 1000000u);
  wake();
}

/* SIGINT / SIGTERM: the first starts the graceful stop and its grace period, the second
 * forces it, a third is the last resort. SIGALRM: the grace period ran out (force), or
 * the forced stop's tick (re-arm every target's hook; the last resort when its time has
 * come). The kernel gives these to any thread that does not block them, and two threads
 * may take one each at the same moment: `handling` makes the steps one at a time. */
static void on_stop_signal(int sig) {
  int saved = errno;
  while (atomic_flag_test_and_set(&handling)) {}  /* held for a few syscalls at most */
  if (sig == SIGALRM) {
    if (!stop_forced) {
      if (stop_signal != 0) force();  /* the grace period ran out */
    } else if (now_ns() - forced_at >= 2 * grace_ns || lastresort_posted) {
      lastresort();
    } else {
      armall(REQ_FORCED);  /* whatever the scripts did to the hook */
    }
  } else if (stop_signal == 0) {
    stop_signal = sig;
    settimer(grace_ns, 0);
    wake();
    armall(REQ_GRACEFUL);
  } else if (!stop_forced) {
    force();
  } else {
    lastresort();  /* a third signal: no more waiting */
  }
  atomic_flag_clear(&handling);
  errno = saved;
}

/* The signals a stop handler runs with blocked (one handler at a time on a thread) and
 * the last-resort thread never takes. */
static void stopsignals(sigset_t *set) {
  sigemptyset(set);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGALRM);
  sigaddset(set, armsig);
}

/* The real-time signal SIGRTMIN + `offset` (`fallback` where there are none). */
static int rtsig(int offset, int fallback) {
#ifdef SIGRTMIN
  (void)fallback;
  return SIGRTMIN + offset;
#else
  (void)offset;
  return fallback;
#endif
}

/* Picks the arm signal and installs its handler, once per process, before any target
 * exists. Why a real-time signal: it is nobody else's (glibc keeps the first ones for
 * itself, SIGRTMIN is past them). The handler stays installed for good: an arm signal
 * still in flight when the last target goes finds nothing to do instead of taking the
 * default action (terminating the process). */
static void armsig_setup(void) {
  armsig = rtsig(2, SIGUSR2);
  sigset_t mask;
  stopsignals(&mask);  /* the arm signal among them */
  sl_rtsignal(2, SIGUSR2, on_arm_signal, &mask);
}

int sl_rtsignal(int offset, int fallback, void (*handler)(int), const sigset_t *mask) {
  int sig = rtsig(offset, fallback);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler;
  if (mask != NULL) sa.sa_mask = *mask;
  else sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  /* a worker's read or write is not cut short */
  sigaction(sig, &sa, NULL);
  return sig;
}

/* ---- knowing which coroutine runs ----------------------------------------------------
 * Why: a hook belongs to one thread, so a stop must also be set on the coroutine that is
 * running when the signal comes, and a call's limits (limits.c) must reach the coroutines
 * it runs. coroutine.resume and coroutine.wrap are lcorolib's
 * (Lua 5.4), except that they record the coroutine they run in their state's target
 * while it runs. */

static int auxresume(lua_State *L, lua_State *co, int narg) {
  int status, nres;
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  sl_limits_resuming(L, co);  /* may raise: nothing moved yet */
  lua_xmove(L, co, narg);
  sl_StateInfo *info = sl_info(L);
  StopTarget *t = mine(L);
  if (t != NULL) {
    t->running = co;
    if (stop_forced) lua_sethook(co, forcedhook, hookmask, 1);
  }
  info->running = co;
  status = lua_resume(co, L, narg, &nres);
  /* Back to the resumer, before anything can raise. */
  info->running = L == info->mainthread ? NULL : L;
  if (t != NULL) t->running = L == t->L ? NULL : L;
  sl_limits_resumed(L);
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
  StopTarget *t;
  if (stop_forced && (t = mine(L)) != NULL) {
    sethooks(t, forcedhook);
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

void sl_coroutines_install(lua_State *L) {
  replace(L, LUA_COLIBNAME, "resume", "resume", coresume);
  replace(L, LUA_COLIBNAME, "wrap", "create", cowrap);
}

/* Makes `L`'s state a target of the calling thread; `now`: give it the stop under way,
 * if any (a worker attached after the signal). Returns 0 when every slot is taken. */
static int attach(lua_State *L, int now) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, armsig_setup);
  if (mine(L) != NULL) return 1;  /* already one */
  sl_StateInfo *info = sl_info(L);
  if (info == NULL) return 0;
  int i = 0;
  for (; i < SL_STOP_MAXTARGETS; i++) {
    int s = SLOT_FREE;
    if (atomic_compare_exchange_strong(&targets[i].state, &s, SLOT_SETUP)) break;
  }
  if (i == SL_STOP_MAXTARGETS) return 0;
  StopTarget *t = &targets[i];
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);  /* L may be a coroutine */
  t->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  t->thread = pthread_self();
  t->running = NULL;
  t->hold_pipeline = 0;
  t->hold_release = 0;
  t->owed = 0;
  t->graced = 0;
  atomic_store(&t->req, REQ_NONE);
  atomic_store(&t->info, info);
  info->stopslot = i + 1;
  replace(L, LUA_DBLIBNAME, "sethook", "sethook", sethook);
  /* This thread must take its arm signal (a thread inherits its creator's mask). */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, armsig);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  atomic_store(&t->state, SLOT_LIVE);
  if (now) apply(t, stop_forced ? REQ_FORCED : REQ_GRACEFUL, SLOT_LIVE);
  return 1;
}

/* On the owner's thread: takes slot `t` (LIVE or ORPHAN) out of every handler's reach,
 * waits for the handlers on other threads that entered it, removes the stop hooks it
 * set and frees it. */
static void closeslot(StopTarget *t, sl_StateInfo *info) {
  int s = atomic_load(&t->state);
  do {
    if (s != SLOT_LIVE && s != SLOT_ORPHAN) return;
  } while (!atomic_compare_exchange_weak(&t->state, &s, SLOT_CLOSING));
  while (atomic_load(&t->users) != 0) sched_yield();  /* they are a few instructions from leave() */
  disarmall(t);  /* no handler can arm it again: a handler on this thread cannot enter either */
  t->L = NULL;
  t->running = NULL;
  atomic_store(&t->req, REQ_NONE);
  atomic_store(&t->info, NULL);
  info->stopslot = 0;
  atomic_store(&t->state, SLOT_FREE);
}

int sl_stop_attach(lua_State *L) {
  return attach(L, 1);
}

void sl_stop_detach(lua_State *L) {
  sl_StateInfo *info = sl_info(L);
  if (info == NULL) return;
  int slot = info->stopslot;
  if (slot > 0 && slot <= SL_STOP_MAXTARGETS && atomic_load(&targets[slot - 1].info) == info) {
    closeslot(&targets[slot - 1], info);
  } else {
    disarm(L);
  }
  info->stopslot = 0;
}

void sl_stop_install(lua_State *L, double grace) {
  grace = grace > 0.001 ? grace : 0.001;
  grace_ns = grace < 1e6 ? (uint64_t)(grace * 1e9) : (uint64_t)1e15;
  if (stop_pipe[0] < 0 && pipe(stop_pipe) == 0) {
    for (int i = 0; i < 2; i++) {
      fcntl(stop_pipe[i], F_SETFL, fcntl(stop_pipe[i], F_GETFL) | O_NONBLOCK);
      fcntl(stop_pipe[i], F_SETFD, FD_CLOEXEC);
    }
    stop_wfd = stop_pipe[1];
  }
  /* The run's state, without the stop under way: a new run starts clean. Before the
   * helper thread, as it picks the arm signal. */
  attach(L, 0);
  sigset_t set;
  stopsignals(&set);
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
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sa.sa_mask = set;            /* one handler at a time on a thread */
  sa.sa_flags = SA_RESTART;    /* a signal never turns into a short read or write */
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGALRM, &sa, NULL);
  /* A parent may have started us with these blocked (some process launchers do). */
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

void sl_stop_uninstall(void) {
  settimer(0, 0);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGALRM, SIG_DFL);
  pthread_t self = pthread_self();
  for (int i = 0; i < SL_STOP_MAXTARGETS; i++) {
    StopTarget *t = &targets[i];
    if (!enter(t, 0)) continue;
    if (pthread_equal(t->thread, self)) {
      leave(t);
      closeslot(t, atomic_load(&t->info));  /* this thread's: its state is still open */
    } else {
      /* Still attached on another thread: its own thread removes the hooks; the slot is
       * out of every stop's reach, and free once its owner detaches. */
      request(t, REQ_DISARM);
      int s = SLOT_LIVE;
      atomic_compare_exchange_strong(&t->state, &s, SLOT_ORPHAN);
      leave(t);
    }
  }
}

void sl_stop_pipeline(lua_State *L, int entering) {
  StopTarget *t = mine(L);
  if (t == NULL) return;
  if (entering) {
    t->hold_pipeline++;
    if (!stop_forced) disarmall(t);  /* armed but not fired yet: the event loop will see the flag */
  } else {
    t->hold_pipeline--;
    t->owed = 0;  /* the pipeline reports the stop itself */
  }
}

void sl_stop_release(lua_State *L, int entering) {
  StopTarget *t = mine(L);
  if (t == NULL) return;
  if (entering) {
    t->hold_release++;
  } else if (--t->hold_release == 0 && t->hold_pipeline == 0 && t->owed != 0 && t->owed == stop_gen
             && !stop_forced) {
    t->owed = 0;
    sethooks(t, interrupthook);
  }
}

int sl_stop_signal(void) { return stop_signal; }
int sl_stop_forced(void) { return stop_forced; }
int sl_stop_fd(void) { return stop_pipe[0]; }

void sl_stop_reset(void) {
  stop_signal = 0;
  stop_forced = 0;
  stop_gen++;  /* what targets were given or owe belongs to the stop forgotten */
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
