/*
 * Per-call limits of a stage (docs/ARCHITECTURE.md, "Limits"): the time and the VM
 * instructions one call may take, enforced by a count hook, and the memory it may
 * allocate, enforced by the allocator (cscopelua.c, countedalloc).
 *
 * Why a watchdog arms the hook instead of every call setting it: while a thread has a
 * count hook, Lua's VM goes through its hook machinery on every instruction (+8% of all
 * instructions on analytics-1, whose stage calls run a few hundred instructions each).
 * So a call starts without a hook and only tells the watchdog (a thread of its own,
 * ticking every WATCH_TICK_NS) when it is due: at its deadline for a time limit, a few
 * milliseconds in for an instruction budget. A call still running then is sent the
 * limit signal; its handler, on the call's own thread (a hook may only be set by the
 * state's thread), sets the hook, which from then on counts instructions and reads the
 * clock every SL_LIMIT_SLICE instructions. The price: an instruction budget counts from
 * the moment the hook is set, so the first milliseconds of a call are not counted (a
 * state the watchdog cannot take, beyond WATCH_SLOTS, counts from the start instead).
 *
 * What neither can interrupt is code outside the VM: a C function that runs long (a
 * SQLite busy wait, a Redis read, os.execute, a pattern match) is bounded by its own
 * timeout; the breach is seen when it returns. Lua runs finalizers (__gc) with hooks off:
 * a finalizer that loops cannot be interrupted by a limit (the forced stop's last resort
 * ends it).
 *
 * A breach must not be swallowed by the script's own pcall: once a call breached, every
 * VM instruction of it raises the breach again (a count hook of 1 on the threads that
 * run), coroutine.resume raises it in the resumer, and the caller, which learns of the
 * breach from sl_limits_end, fails the call with its own message whatever it returned.
 */
#include "cscopelua.h"
#include "slclock.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

/* ---- the watchdog ------------------------------------------------------------------- */

enum { WATCH_SLOTS = 256 };
#define WATCH_TICK_NS 2000000u      /* how often the watchdog looks */
#define WATCH_COUNT_AFTER_NS 2000000u  /* when an instruction budget starts counting */

/* A state the watchdog watches. `due`, `gen` are written by the state's thread at every
 * call (no lock: the hot path); `asked` by the watchdog when it signals; the rest under
 * `watchlock`, which the watchdog holds while it looks and signals, so that a slot freed
 * (under the lock) is never signalled again. */
typedef struct WatchSlot {
  _Atomic int live;
  _Atomic uint64_t due;    /* when the call running should get the hook (monotonic ns); 0: none */
  _Atomic uint64_t gen;    /* which call is running: a new number for each */
  _Atomic uint64_t asked;  /* the call the watchdog signalled for */
  pthread_t thread;        /* the state's thread */
  const void *threadkey;   /* &threadkey of that thread: a cheap test on the hot path */
  sl_StateInfo *info;
} WatchSlot;

/* The hot path writes `due` and `gen` of its own slot only: plain stores (release: the
 * watchdog reads them on another thread), no locked instruction per call. */
#define STORE(field, value) atomic_store_explicit(&(field), (value), memory_order_release)
#define LOAD(field) atomic_load_explicit(&(field), memory_order_acquire)

static _Thread_local char threadkey;

static WatchSlot slots[WATCH_SLOTS];
static pthread_mutex_t watchlock = PTHREAD_MUTEX_INITIALIZER;
static int limitsig = 0;
static int watching = 0;  /* the watchdog runs (under watchlock) */

/* The message the script sees ("stage 'enrich' exceeded its time limit (0.5 s)"). */
static void pushbreach(lua_State *L, sl_StateInfo *info) {
  const sl_Limits *lim = info->limits;
  const char *who = lim != NULL ? lim->who : "the call";
  switch (info->breach) {
  case SL_BREACH_TIME:
    lua_pushfstring(L, "%s exceeded its time limit (%f s)", who, (lua_Number)info->limittime / 1e9);
    break;
  case SL_BREACH_INSTRUCTIONS:
    lua_pushfstring(L, "%s exceeded its instruction limit (%I instructions)", who,
                    (lua_Integer)(lim != NULL ? lim->instructions : 0));
    break;
  default:
    lua_pushfstring(L, "%s exceeded its memory limit (%s)", who, lim != NULL ? lim->memtext : "?");
    break;
  }
}

static void limithook(lua_State *L, lua_Debug *ar);

/* Every instruction of `L` raises from now on (the call breached). */
static void raiseeverywhere(lua_State *L) {
  lua_sethook(L, limithook, LUA_MASKCOUNT, 1);
}

static int raisebreach(lua_State *L, sl_StateInfo *info) {
  raiseeverywhere(L);
  pushbreach(L, info);
  return lua_error(L);
}

/* How many instructions until the hook should look again. */
static int nextcount(sl_StateInfo *info) {
  int64_t budget = info->limits != NULL ? info->limits->instructions : 0;
  if (budget > 0) {
    int64_t left = budget - info->limitinstr;
    if (left < SL_LIMIT_SLICE) return left > 1 ? (int)left : 1;
  }
  return SL_LIMIT_SLICE;
}

static WatchSlot *slotof(sl_StateInfo *info) {
  return info->limitslot > 0 && info->limitslot <= WATCH_SLOTS ? &slots[info->limitslot - 1] : NULL;
}

/* The call's hook, on its main thread and the coroutines it runs. A hook left on a
 * coroutine after its call ended (the coroutine lives on in ctx.state, say) removes
 * itself the next time it fires. */
static void limithook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  sl_StateInfo *info = sl_info(L);
  const sl_Limits *lim = info->limits;
  if (lim == NULL) {
    lua_sethook(L, NULL, 0, 0);
    return;
  }
  if (info->breach != SL_BREACH_NONE) raisebreach(L, info);
  info->limitinstr += lua_gethookcount(L);
  if (lim->instructions > 0 && info->limitinstr >= lim->instructions) {
    info->breach = SL_BREACH_INSTRUCTIONS;
    raisebreach(L, info);
  }
  if (info->limitdeadline != 0 && sl_monotonic_ns() >= info->limitdeadline) {
    info->breach = SL_BREACH_TIME;
    raisebreach(L, info);
  }
  if (lim->instructions > 0) {
    int next = nextcount(info);
    if (next != lua_gethookcount(L)) lua_sethook(L, limithook, LUA_MASKCOUNT, next);
    return;
  }
  /* A time limit not reached yet (the watchdog looked as this call began, and took it
   * for the one before): no hook until the watchdog asks again, at the deadline. */
  WatchSlot *slot = slotof(info);
  if (slot != NULL) STORE(slot->asked, 0);
  if (L == info->mainthread && info->savedhook != NULL) lua_sethook(L, info->savedhook, info->savedmask, info->savedcount);
  else lua_sethook(L, NULL, 0, 0);
}

/* Sets the call's hook on `L` to fire at its next instruction (replacing a script's own
 * hook for the rest of the call), unless a stop's hook is there: it wins over everything. From the limit signal's handler too (lua_sethook is
 * async-signal-safe, and this is the state's own thread). */
static void arm(sl_StateInfo *info, lua_State *L) {
  lua_Hook h = lua_gethook(L);
  if (sl_isstophook(h)) return;
  if (L == info->mainthread && !info->limitarmed) {
    /* The first time in this call: the hook it replaces (a script's own, set outside any
     * stage call) is given back at its end. */
    info->limitarmed = 1;
    info->savedhook = h == limithook ? NULL : h;
    info->savedmask = lua_gethookmask(L);
    info->savedcount = lua_gethookcount(L);
  }
  lua_sethook(L, limithook, LUA_MASKCOUNT, 1);
}

/* The limit signal: arms the calls the watchdog asked for, of the states of this thread. */
static void on_limit_signal(int sig) {
  (void)sig;
  int saved = errno;
  pthread_t self = pthread_self();
  for (int i = 0; i < WATCH_SLOTS; i++) {
    WatchSlot *s = &slots[i];
    if (!atomic_load(&s->live) || !pthread_equal(s->thread, self)) continue;
    uint64_t gen = LOAD(s->gen);
    if (LOAD(s->due) == 0 || LOAD(s->asked) != gen) continue;
    sl_StateInfo *info = s->info;
    if (info == NULL || info->limits == NULL) continue;
    lua_State *co = info->running;
    arm(info, info->mainthread);
    if (co != NULL) arm(info, co);
  }
  errno = saved;
}

/* Every tick: a call past its due time gets the limit signal, once. The lock keeps
 * slots from being freed while it looks (their thread may be gone right after). */
static void *watchdog(void *arg) {
  (void)arg;
  for (;;) {
    struct timespec tick = {0, WATCH_TICK_NS};
    while (nanosleep(&tick, &tick) != 0 && errno == EINTR) {}
    uint64_t now = sl_monotonic_ns();
    pthread_mutex_lock(&watchlock);
    for (int i = 0; i < WATCH_SLOTS; i++) {
      WatchSlot *s = &slots[i];
      if (!atomic_load(&s->live)) continue;
      uint64_t gen = LOAD(s->gen);
      uint64_t due = LOAD(s->due);
      if (due == 0 || now < due || LOAD(s->gen) != gen || LOAD(s->asked) == gen) continue;
      STORE(s->asked, gen);
      pthread_kill(s->thread, limitsig);
    }
    pthread_mutex_unlock(&watchlock);
  }
  return NULL;
}

/* Once per process: the limit signal's handler, and the watchdog thread, which takes no
 * signal (blocked while creating it: a thread inherits its creator's mask). Why a
 * real-time signal: it is nobody else's (the stop's arm signal is SIGRTMIN + 2). */
static void watch_setup(void) {
  limitsig = sl_rtsignal(3, SIGUSR1, on_limit_signal, NULL);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  pthread_t t;
  if (pthread_create(&t, NULL, watchdog, NULL) == 0) {
    pthread_detach(t);
    watching = 1;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* The watchdog's slot for `info`'s state on this thread, taken at its first call under a
 * time or instruction limit; NULL when there is none (no watchdog, every slot taken). */
static _Atomic int usewatchdog = 1;

void sl_limits_usewatchdog(int use) {
  atomic_store(&usewatchdog, use);
}

static WatchSlot *watch(sl_StateInfo *info) {
  WatchSlot *s = slotof(info);
  if (s != NULL && s->threadkey == &threadkey) return s;
  if (!atomic_load(&usewatchdog)) return NULL;
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, watch_setup);
  pthread_mutex_lock(&watchlock);
  if (s == NULL && watching) {
    for (int i = 0; i < WATCH_SLOTS && s == NULL; i++) {
      if (!atomic_load(&slots[i].live)) {
        s = &slots[i];
        info->limitslot = i + 1;
      }
    }
  }
  if (s != NULL) {  /* new, or its state moved to this thread */
    STORE(s->due, 0);
    s->thread = pthread_self();
    s->threadkey = &threadkey;
    s->info = info;
    atomic_store(&s->live, 1);
  }
  pthread_mutex_unlock(&watchlock);
  if (s != NULL) {  /* this thread must take the signal */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, limitsig);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  }
  return s;
}

void sl_limits_release(sl_StateInfo *info) {
  WatchSlot *s = slotof(info);
  if (s == NULL) return;
  pthread_mutex_lock(&watchlock);
  atomic_store(&s->due, 0);  /* a signal already on its way finds nothing to do */
  atomic_store(&s->live, 0);
  s->info = NULL;
  pthread_mutex_unlock(&watchlock);
  info->limitslot = 0;
}

void sl_limits_begin(lua_State *L, const sl_Limits *lim, uint64_t time_ns, uint64_t t0) {
  sl_StateInfo *info = sl_info(L);
  info->limits = lim;
  info->limittime = time_ns;
  info->limitdeadline = time_ns != 0 ? t0 + time_ns : 0;
  info->limitinstr = 0;
  info->limitarmed = 0;
  info->callnet = 0;
  info->breach = SL_BREACH_NONE;
  info->refusednsize = 0;
  if (lim->memory > 0) info->counting |= SL_COUNT_CALL;
  if (info->limitdeadline == 0 && lim->instructions <= 0) return;
  WatchSlot *s = watch(info);
  if (s == NULL) {  /* no watchdog: the hook from the start, which also counts exactly */
    if (!sl_stop_forced()) {
      arm(info, info->mainthread);
      lua_sethook(info->mainthread, limithook, LUA_MASKCOUNT, nextcount(info));
    }
    return;
  }
  STORE(s->gen, LOAD(s->gen) + 1);
  STORE(s->due, lim->instructions > 0 ? t0 + WATCH_COUNT_AFTER_NS : info->limitdeadline);
}

int sl_limits_end(lua_State *L, uint64_t elapsed) {
  sl_StateInfo *info = sl_info(L);
  WatchSlot *s = slotof(info);
  if (s != NULL) {  /* first: a signal for this call arriving from now on finds nothing to do */
    STORE(s->due, 0);
    STORE(s->gen, LOAD(s->gen) + 1);
  }
  if (info->refusednsize != 0 && info->breach == SL_BREACH_NONE) info->breach = SL_BREACH_MEMORY;
  info->refusednsize = 0;
  int breach = info->breach;
  if (breach == SL_BREACH_NONE && info->limittime != 0 && elapsed > info->limittime) breach = SL_BREACH_TIME;
  info->limits = NULL;
  info->limitdeadline = 0;
  info->breach = SL_BREACH_NONE;
  info->counting &= ~SL_COUNT_CALL;
  if (info->limitarmed) {
    lua_State *main = info->mainthread;
    if (lua_gethook(main) == limithook) {
      if (info->savedhook != NULL) lua_sethook(main, info->savedhook, info->savedmask, info->savedcount);
      else lua_sethook(main, NULL, 0, 0);
    }
    info->limitarmed = 0;
    info->savedhook = NULL;
  }
  return breach;
}

void sl_limits_resuming(lua_State *L, lua_State *co) {
  sl_StateInfo *info = sl_info(L);
  if (info->limits == NULL) return;
  if (info->breach != SL_BREACH_NONE) raisebreach(L, info);
  /* The resumer's hook counts: so does the coroutine's (else the watchdog arms it). */
  if (lua_gethook(L) == limithook && lua_gethook(co) != limithook) lua_sethook(co, limithook, LUA_MASKCOUNT, nextcount(info));
}

void sl_limits_resumed(lua_State *L) {
  sl_StateInfo *info = sl_info(L);
  if (info->limits != NULL && info->breach != SL_BREACH_NONE) raiseeverywhere(L);
}

/* The call breached its memory limit: Lua raises "not enough memory" now; every
 * instruction after it raises the breach. */
static void memorybreach(sl_StateInfo *info) {
  info->breach = SL_BREACH_MEMORY;
  info->refusednsize = 0;
  if (info->running != NULL) raiseeverywhere(info->running);
  raiseeverywhere(info->mainthread);
}

/* A refusal is a breach once it stands: Lua's allocations (lmem.c) answer the first with
 * an emergency collection and retry the same request, which may then fit (the call's
 * garbage was freed); lauxlib's buffers do not retry. So a refusal is remembered, and it
 * stood when the same request is refused again, when another growing request comes
 * instead of the retry, or when the call ends with it (sl_limits_end). */
void *sl_limits_refuse(sl_StateInfo *info, const void *ptr, size_t osize, size_t nsize) {
  if (info->refusednsize != 0) {
    memorybreach(info);
    return NULL;
  }
  info->refusedptr = ptr;
  info->refusedosize = osize;
  info->refusednsize = nsize;
  return NULL;
}

void sl_limits_refusalstood(sl_StateInfo *info) {
  memorybreach(info);
}

/* The stock debug.sethook (ldblib's, the same C function in every state). Kept here, not
 * as an upvalue: the stop's wrapper (signals.c) calls this one's C function directly,
 * inside its own closure, where upvalue 1 is not ours. */
static _Atomic(lua_CFunction) stocksethook = NULL;

/* debug.sethook, except while a call under limits runs: its hook enforces them, and a
 * script replacing it (debug.sethook() removes every hook) would lift them. */
static int sethook(lua_State *L) {
  sl_StateInfo *info = sl_info(L);
  if (info->limits != NULL) {
    return luaL_error(L, "debug.sethook cannot be used in a call under limits (%s): the runtime's hook enforces them",
                      info->limits->who);
  }
  lua_CFunction stock = stocksethook;
  return stock != NULL ? stock(L) : 0;
}

void sl_limits_install(lua_State *L) {
  sl_coroutines_install(L);
  int top = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_DBLIBNAME) == LUA_TTABLE && lua_getfield(L, -1, "sethook") == LUA_TFUNCTION
      && lua_tocfunction(L, -1) != NULL && lua_tocfunction(L, -1) != sethook) {
    stocksethook = lua_tocfunction(L, -1);
    lua_pushcfunction(L, sethook);
    lua_setfield(L, -3, "sethook");
  }
  lua_settop(L, top);
}
