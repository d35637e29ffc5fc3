/*
 * The C side of scopelua's bridge: the state and its guarded allocator, the trampolines
 * every Lua-callable Swift function is entered through, and small helpers Swift cannot
 * write itself. Everything that can raise a Lua error (longjmp) on behalf of Swift code
 * lives in CScopeLua, so that no Lua error ever unwinds through a Swift frame
 * (ARCHITECTURE.md, rule 1). Each function says why it exists.
 */
#include "cscopelua.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

/* ---- state and allocator --------------------------------------------------------- */

/* Why: a memory error raised by lua_pushstring & co. while a Swift function runs would
 * longjmp over Swift frames. While `guarded` is set (always, except inside sl_pcall),
 * a failed allocation must not raise; inside sl_pcall Lua code runs under a protected
 * call, so memory errors raise there exactly as in stock Lua.
 *
 * Lua itself answers a failed allocation with an emergency full collection and one
 * retry of the same request (lmem.c, tryagain), which frees the garbage of a script that
 * caught "not enough memory" and went on. So a guarded failure first returns NULL, to
 * give that collection its chance, and aborts (with a clear message) only when the retry
 * of that same request fails too. Lua skips the retry only while the collector itself
 * runs a step (its allocations there tolerate NULL) or before the state is complete.
 * The last failure is per thread: a state is used by one thread at a time, and the
 * retry comes right after the failure, on the same thread. */
static _Thread_local struct {
  const void *ptr;
  size_t osize, nsize;
  int pending;
} lastfailure;

/* A failed allocation while the runtime holds the state (see above). */
static void *guardedfailure(const void *ptr, size_t osize, size_t nsize) {
  if (lastfailure.pending && lastfailure.ptr == ptr && lastfailure.osize == osize && lastfailure.nsize == nsize) {
    fprintf(stderr, "scopelua: out of memory while the runtime held the Lua state (%zu bytes)\n", nsize);
    abort();
  }
  lastfailure.ptr = ptr;
  lastfailure.osize = osize;
  lastfailure.nsize = nsize;
  lastfailure.pending = 1;
  return NULL;
}

/* The counting allocator, while `counting` is set (a separate function: a state that
 * counts nothing pays one test per allocation).
 *
 * --memory-limit (SL_COUNT_STATE): Lua code (unguarded) that would take the state over
 * its limit gets NULL, which Lua answers as above (an emergency collection, a retry, then
 * "not enough memory" raised in the script). The runtime's own allocations (guarded) may
 * go over it: they are small and bounded, and refusing them would abort. `memused`
 * counts what the state holds (when `ptr` is NULL, `osize` is a type tag, not a size).
 *
 * A call's memory limit (SL_COUNT_CALL, limits.c): `callnet` counts what the call
 * allocated net of what it freed; Lua code that would take it over the limit is refused
 * the same way, until the call has breached (then nothing more is refused: the call is
 * failing, and raising its error must not fail too). */
static void *countedalloc(sl_StateInfo *info, void *ptr, size_t osize, size_t nsize) {
  size_t old = ptr == NULL ? 0 : osize;
  size_t base = info->memused - (old <= info->memused ? old : info->memused);
  if (nsize == 0) {
    free(ptr);
    info->memused = base;
    info->callnet -= (int64_t)old;
    return NULL;
  }
  if (nsize > old && !info->guarded) {
    if (info->memlimit != 0 && base + nsize > info->memlimit) {
      info->memexceeded = 1;
      return NULL;
    }
    if ((info->counting & SL_COUNT_CALL) && info->breach == SL_BREACH_NONE) {
      if (info->refusednsize != 0
          && (info->refusednsize != nsize || info->refusedptr != ptr || info->refusedosize != osize))
        sl_limits_refusalstood(info);  /* not Lua's retry: the refusal stood (limits.c) */
      else if (info->callnet + (int64_t)(nsize - old) > info->limits->memory)
        return sl_limits_refuse(info, ptr, osize, nsize);
    }
  }
  void *p = ptr == NULL ? malloc(nsize) : realloc(ptr, nsize);
  if (p != NULL) {
    if (lastfailure.pending) lastfailure.pending = 0;
    if (nsize > old) info->refusednsize = 0;  /* a refusal Lua did not retry is forgotten */
    info->memused = base + nsize;
    info->callnet += (int64_t)nsize - (int64_t)old;
    return p;
  }
  return info->guarded ? guardedfailure(ptr, osize, nsize) : NULL;
}

static void *sl_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  sl_StateInfo *info = (sl_StateInfo *)ud;
  if (info->counting) return countedalloc(info, ptr, osize, nsize);
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  void *p = ptr == NULL ? malloc(nsize) : realloc(ptr, nsize);
  if (p != NULL) {
    if (lastfailure.pending) lastfailure.pending = 0;  /* a read, not a write, per allocation */
    return p;
  }
  if (!info->guarded) return NULL;
  return guardedfailure(ptr, osize, nsize);
}

lua_State *sl_newstate(void) {
  lua_State *L = luaL_newstate();  /* keeps lauxlib's panic and warning functions */
  if (L == NULL) return NULL;
  sl_StateInfo *info = (sl_StateInfo *)calloc(1, sizeof(sl_StateInfo));
  if (info == NULL) { lua_close(L); return NULL; }
  info->guarded = 1;
  info->timerkind = -1;  /* no timer fast path until the timer module is installed */
  /* Coroutines copy the main thread's extra space, so every thread finds `info`. */
  *(sl_StateInfo **)lua_getextraspace(L) = info;
  info->mainthread = L;
  /* luaL_newstate's allocator is realloc/free too, so blocks it made are ours to free. */
  lua_setallocf(L, sl_alloc, info);
  return L;
}

void sl_setmemlimit(lua_State *L, size_t limit) {
  sl_StateInfo *info = sl_info(L);
  /* What the state holds now (Lua's count is exact): the allocator counts from there. */
  info->memused = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
  info->memlimit = limit;
  if (limit != 0) info->counting |= SL_COUNT_STATE;
  else info->counting &= ~SL_COUNT_STATE;
}

int sl_memexceeded(lua_State *L) {
  sl_StateInfo *info = sl_info(L);
  int was = info->memexceeded;
  info->memexceeded = 0;
  return was;
}

const char *sl_lua_ident(void) { return lua_ident; }

void sl_closestate(lua_State *L) {
  lua_close(L);
}

void sl_freeinfo(sl_StateInfo *info) {
  sl_limits_release(info);
  free(info->leaks);  /* the records themselves belong to the pool */
  free(info->timers);  /* the histograms themselves belong to the Swift ledger */
  free(info->jsonbuf);
  free(info);
}

int sl_pcall(lua_State *L, int nargs, int nresults, int msgh) {
  sl_StateInfo *info = sl_info(L);
  int saved = info->guarded;
  info->guarded = 0;
  int status = lua_pcall(L, nargs, nresults, msgh);
  info->guarded = saved;
  return status;
}

/* Calls a Swift function with the allocator guarded (Swift is on the stack). An entry
 * straight from Lua code (not from a metamethod that Swift's own API calls set off,
 * which run guarded) is a safe point: queued leaks are released first. */
int sl_callswift(lua_State *L, sl_SwiftFunction fn) {
  sl_StateInfo *info = sl_info(L);
  int saved = info->guarded;
  info->guarded = 1;
  if (!saved && info->leakhead < info->nleaks && info->releaseleaks != NULL) info->releaseleaks(L);
  int n = fn(L);
  info->guarded = saved;
  return n;
}

/* ---- trampolines ----------------------------------------------------------------- */

/* Why: the one way from Lua into Swift. Swift reports failure by returning SL_RAISE;
 * the raise happens here, after the Swift frame is gone. */
int sl_enterswift(lua_State *L, sl_SwiftFunction fn) {
  int n = sl_callswift(L, fn);
  if (n < 0) return lua_error(L);
  return n;
}

static int trampoline(lua_State *L) {
  return sl_enterswift(L, (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(1)));
}

void sl_pushclosure(lua_State *L, sl_SwiftFunction fn, int nup) {
  lua_pushlightuserdata(L, (void *)fn);
  lua_rotate(L, -nup - 1, 1);  /* the function pointer becomes upvalue 1 */
  lua_pushcclosure(L, trampoline, nup + 1);
}

void sl_pushfunction(lua_State *L, sl_SwiftFunction fn) {
  /* A function pointer stored as a light userdata: POSIX guarantees the round trip. */
  lua_pushlightuserdata(L, (void *)fn);
  lua_pushcclosure(L, trampoline, 1);
}

/* Why: __index must find methods at table speed and per-handle fields (.id, .kind,
 * .path) from Swift; a Lua table cannot do the second, a Swift-only __index would slow
 * down every method call. Upvalues: methods table, Swift field getter. */
static int handleindex(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  return sl_enterswift(L, (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(2)));
}

void sl_pushindex(lua_State *L, sl_SwiftFunction fields) {
  lua_pushlightuserdata(L, (void *)fields);
  lua_pushcclosure(L, handleindex, 2);
}

int sl_tostring(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

static int constant(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  return 1;
}

void sl_pushconstant(lua_State *L) {
  lua_pushcclosure(L, constant, 1);
}

void sl_eprint(const char *line) {
  fputs(line, stderr);
  fputc('\n', stderr);
  fflush(stderr);
}

int sl_gcgenerational(lua_State *L) {
  return lua_gc(L, LUA_GCGEN, 0, 0);
}

FILE *sl_stdout(void) { return stdout; }

int sl_stderr_isatty(void) { return isatty(2); }

void sl_eprogress(const char *line) {
  if (!isatty(2)) return;
  fprintf(stderr, "\r\033[K%s", line);
  fflush(stderr);
}

/* ---- os.exit ----------------------------------------------------------------------- */

/* Why: os.exit must leave at once, as in stock Lua (no pcall may catch it), and the
 * runtime promises that everything a script acquired is released. So the exit happens
 * right here: stock os.exit's arguments, then Swift releases every scope (as an error
 * when the status is a failure) and returns the status to exit with, then the state is
 * closed if asked (as stock os.exit does) and the process exits. Upvalues: the Swift
 * function, then a flag the runner sets to have the report printed. */
static int osexit(lua_State *L) {
  int status;
  if (lua_isboolean(L, 1))
    status = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    status = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  int close = lua_toboolean(L, 2);
  lua_settop(L, 0);
  lua_pushinteger(L, status);
  status = sl_callswift(L, (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(1)));
  if (close) lua_close(L);
  exit(status);
}

void sl_pushosexit(lua_State *L, sl_SwiftFunction release) {
  lua_pushlightuserdata(L, (void *)release);
  lua_pushboolean(L, 0);
  lua_pushcclosure(L, osexit, 2);
}

/* ---- misc ------------------------------------------------------------------------ */

int sl_loadbuffer(lua_State *L, const char *buf, size_t len, const char *name) {
  return luaL_loadbufferx(L, buf, len, name, NULL);
}

