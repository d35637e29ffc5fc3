/*
 * Per-call limits of a stage (docs/ARCHITECTURE.md, "Limits"): the time and the VM
 * instructions one call may take, enforced by a count hook the call owns while it runs,
 * and the memory it may allocate, enforced by the allocator (cscopelua.c, countedalloc).
 *
 * Why a count hook that reads the clock rather than a watchdog thread that signals: the
 * hook is needed anyway for the instruction budget, a check every SL_LIMIT_SLICE
 * instructions costs a clock read per ~10-50 microseconds of Lua code, and nothing
 * crosses threads (a hook may only be set by the state's own thread). What neither can
 * interrupt is code outside the VM: a C function that runs long (a SQLite busy wait, a
 * Redis read, os.execute, a pattern match) is bounded by its own timeout; the breach is
 * then seen when it returns. Lua runs finalizers (__gc) with hooks off: a finalizer that
 * loops cannot be interrupted by a limit (the forced stop's last resort ends it).
 *
 * A breach must not be swallowed by the script's own pcall: once a call breached, every
 * VM instruction of it raises the breach again (a count hook of 1 on the threads that
 * run), coroutine.resume raises it in the resumer, and the caller, which learns of the
 * breach from sl_limits_end, fails the call with its own message whatever it returned.
 */
#include "cscopelua.h"
#include "slclock.h"

#include <stdatomic.h>

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
  int next = nextcount(info);
  if (next != lua_gethookcount(L)) lua_sethook(L, limithook, LUA_MASKCOUNT, next);
}

/* Whether the call needs the hook (time or instructions; memory needs it only once
 * breached). */
static int hooked(sl_StateInfo *info) {
  return info->limits != NULL && (info->limitdeadline != 0 || info->limits->instructions > 0);
}

void sl_limits_begin(lua_State *L, const sl_Limits *lim, uint64_t time_ns, uint64_t t0) {
  sl_StateInfo *info = sl_info(L);
  lua_State *main = info->mainthread;
  info->limits = lim;
  info->limittime = time_ns;
  info->limitdeadline = time_ns != 0 ? t0 + time_ns : 0;
  info->limitinstr = 0;
  info->callnet = 0;
  info->breach = SL_BREACH_NONE;
  info->refusednsize = 0;
  if (lim->memory > 0) info->counting |= SL_COUNT_CALL;
  /* The hook the call replaces (a script's own, set outside any stage call), given back
   * at its end. A forced stop's hook stays: it wins over everything. */
  info->savedhook = lua_gethook(main);
  info->savedmask = lua_gethookmask(main);
  info->savedcount = lua_gethookcount(main);
  if (hooked(info) && !sl_stop_forced()) lua_sethook(main, limithook, LUA_MASKCOUNT, nextcount(info));
}

int sl_limits_end(lua_State *L, uint64_t elapsed) {
  sl_StateInfo *info = sl_info(L);
  lua_State *main = info->mainthread;
  if (info->refusednsize != 0 && info->breach == SL_BREACH_NONE) info->breach = SL_BREACH_MEMORY;
  info->refusednsize = 0;
  int breach = info->breach;
  if (breach == SL_BREACH_NONE && info->limittime != 0 && elapsed > info->limittime) breach = SL_BREACH_TIME;
  info->limits = NULL;
  info->limitdeadline = 0;
  info->breach = SL_BREACH_NONE;
  info->counting &= ~SL_COUNT_CALL;
  if (lua_gethook(main) == limithook) {
    if (info->savedhook != NULL) lua_sethook(main, info->savedhook, info->savedmask, info->savedcount);
    else lua_sethook(main, NULL, 0, 0);
  }
  info->savedhook = NULL;
  return breach;
}

void sl_limits_resuming(lua_State *L, lua_State *co) {
  sl_StateInfo *info = sl_info(L);
  if (info->limits == NULL) return;
  if (info->breach != SL_BREACH_NONE) raisebreach(L, info);
  if (hooked(info) && lua_gethook(co) != limithook && !sl_stop_forced())
    lua_sethook(co, limithook, LUA_MASKCOUNT, nextcount(info));
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
