/*
 * The C side of scopelua's bridge. Everything that can raise a Lua error (longjmp) on
 * behalf of Swift code lives here, so that no Lua error ever unwinds through a Swift
 * frame (ARCHITECTURE.md, rule 1). Each function says why it exists.
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

static void *sl_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  sl_StateInfo *info = (sl_StateInfo *)ud;
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

lua_State *sl_newstate(void) {
  lua_State *L = luaL_newstate();  /* keeps lauxlib's panic and warning functions */
  if (L == NULL) return NULL;
  sl_StateInfo *info = (sl_StateInfo *)calloc(1, sizeof(sl_StateInfo));
  if (info == NULL) { lua_close(L); return NULL; }
  info->guarded = 1;
  info->timerkind = -1;  /* no timer fast path until the timer module is installed */
  /* Coroutines copy the main thread's extra space, so every thread finds `info`. */
  *(sl_StateInfo **)lua_getextraspace(L) = info;
  /* luaL_newstate's allocator is realloc/free too, so blocks it made are ours to free. */
  lua_setallocf(L, sl_alloc, info);
  return L;
}

void sl_closestate(lua_State *L) {
  lua_close(L);
}

void sl_freeinfo(sl_StateInfo *info) {
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
static int callswift(lua_State *L, sl_SwiftFunction fn) {
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
  int n = callswift(L, fn);
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

/* Caches `value` for the object on top of the stack (popped), pinning it in slot
 * `slot + 1` of the table `pins` refers to. The table has SL_CACHE preallocated array
 * slots, so nothing is allocated and nothing can raise. */
static void cacheput(lua_State *L, sl_CacheEntry *cache, int pins, int32_t value) {
  const void *key = lua_topointer(L, -1);
  int slot = sl_cacheslot(key);
  lua_rawgeti(L, LUA_REGISTRYINDEX, pins);
  lua_rotate(L, -2, 1);
  lua_rawseti(L, -2, slot + 1);
  lua_pop(L, 1);
  cache[slot].key = key;
  cache[slot].value = value;
}

int sl_site(lua_State *L, sl_Site *out) {
  sl_StateInfo *info = sl_info(L);
  lua_Debug ar;
  for (int level = 1; level < 12 && lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "fl", &ar);  /* pushes the function */
    if (ar.currentline <= 0) {
      lua_pop(L, 1);
      continue;
    }
    out->line = ar.currentline;
    out->source = sl_cacheget(info->sites, lua_topointer(L, -1));
    if (out->source >= 0) {
      lua_pop(L, 1);
      return 1;
    }
    lua_pushvalue(L, -1);
    lua_getinfo(L, ">S", &ar);  /* pops the copy */
    memcpy(out->short_src, ar.short_src, LUA_IDSIZE);
    return 2;                   /* the function stays for sl_site_remember */
  }
  return 0;
}

void sl_site_remember(lua_State *L, int32_t source) {
  sl_StateInfo *info = sl_info(L);
  cacheput(L, info->sites, info->sitepins, source);
}

int32_t sl_label_lookup(lua_State *L, int idx) {
  return sl_cacheget(sl_info(L)->labels, lua_topointer(L, idx));
}

void sl_label_remember(lua_State *L, int32_t index) {
  sl_StateInfo *info = sl_info(L);
  cacheput(L, info->labels, info->labelpins, index);
}

/* Why C: leaving a `<close>` block is the hot path; a timer.measure handle is released
 * without entering Swift. Upvalues: Swift's release, the released twin metatable. */
static int handleclose(lua_State *L) {
  sl_Box *b = (sl_Box *)lua_touserdata(L, 1);
  if (b == NULL || lua_rawlen(L, 1) != sizeof(sl_Box) || b->t.pins != SL_BOXMAGIC || b->t.record == NULL) return 0;
  sl_Handle *h = (sl_Handle *)b->t.record;
  if (h->how != SL_OPEN) {  /* released by its scope meanwhile: only the box is left */
    sl_detach(L, 1);
    return 0;
  }
  /* The size and the magic prove it is a box: a script cannot make a userdata that
   * passes them, even by giving any value a handle metatable with the debug library.
   * A box wearing another kind's metatable is released as what its record says it is
   * (the record, not the metatable, decides), so no metatable check is needed here. */
  if (sl_closetimer(L, b)) return 0;
  return sl_enterswift(L, (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(1)));
}

void sl_pushhandleclose(lua_State *L, sl_SwiftFunction release) {
  lua_pushlightuserdata(L, (void *)release);
  lua_pushnil(L);  /* the released twin metatable, set with sl_settwin */
  lua_pushcclosure(L, handleclose, 2);
}

void sl_settwin(lua_State *L, int close, int twin) {
  close = lua_absindex(L, close);
  lua_pushvalue(L, twin);
  lua_setupvalue(L, close, 2);
}

/* ---- error messages -------------------------------------------------------------- */

void sl_pushargerror(lua_State *L, int arg, const char *extramsg) {
  lua_Debug ar;
  const char *name = "?";
  if (lua_getstack(L, 0, &ar)) {
    lua_getinfo(L, "n", &ar);
    if (ar.namewhat != NULL && strcmp(ar.namewhat, "method") == 0) {
      arg--;  /* do not count 'self', as luaL_argerror does */
      if (arg == 0) {
        luaL_where(L, 1);
        lua_pushfstring(L, "%scalling '%s' on bad self (%s)", lua_tostring(L, -1),
                        ar.name ? ar.name : "?", extramsg);
        lua_remove(L, -2);
        return;
      }
    }
    if (ar.name != NULL) name = ar.name;
  }
  luaL_where(L, 1);
  lua_pushfstring(L, "%sbad argument #%d to '%s' (%s)", lua_tostring(L, -1), arg, name, extramsg);
  lua_remove(L, -2);
}

void sl_pushtypeerror(lua_State *L, int arg, const char *tname) {
  int top = lua_gettop(L);
  const char *typearg;
  if (luaL_getmetafield(L, arg, "__name") == LUA_TSTRING)
    typearg = lua_tostring(L, -1);
  else if (lua_type(L, arg) == LUA_TLIGHTUSERDATA)
    typearg = "light userdata";
  else
    typearg = luaL_typename(L, arg);
  const char *msg = lua_pushfstring(L, "%s expected, got %s", tname, typearg);
  sl_pushargerror(L, arg, msg);
  lua_replace(L, top + 1);  /* keep only the message */
  lua_settop(L, top + 1);
}

/* ---- tracebacks ------------------------------------------------------------------ */

/* Why: scope() and with_resource() catch an error, release, then re-raise it from their
 * trampoline; a traceback taken at the re-raise would lose the frames where the error
 * really happened. So the message handler of the runtime's protected calls takes the
 * traceback where the error happens and keeps it next to the error object, and a
 * re-raise hands it on explicitly. Errors are matched by identity (lua_rawequal), never
 * by their text, and every slot is cleared once used. The slots live in one weak-valued
 * table, so an error caught by a Lua pcall (which tells nobody) is not kept alive. */
enum {
  TB_LASTERR = 1, TB_LAST,                   /* the last error the handler saw, its traceback */
  TB_PENDINGERR, TB_PENDING, TB_PENDINGBY,   /* an error being re-raised, its traceback, by whom */
  TB_SLOTS = TB_PENDINGBY
};
static const char tbkey = 0;  /* registry key (its address) of the slot table */

/* Pushes the slot table, creating it if asked; returns 0 (nothing pushed) if absent. */
static int tbslots(lua_State *L, int create) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &tbkey) == LUA_TTABLE) return 1;
  lua_pop(L, 1);
  if (!create) return 0;
  lua_createtable(L, TB_SLOTS, 0);  /* array slots: setting them never allocates */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &tbkey);
  return 1;
}

static void tbclear(lua_State *L, int slots, int from, int to) {
  for (int i = from; i <= to; i++) {
    lua_pushnil(L);
    lua_rawseti(L, slots, i);
  }
}

int sl_capturetraceback(lua_State *L) {
  int err = lua_gettop(L);
  tbslots(L, 1);
  int slots = err + 1;
  /* A re-raise: the function raising (level 1; level 0 is this handler) is the one
   * that announced it, and the error is the very object it announced. */
  int reraise = 0;
  lua_Debug ar;
  if (lua_rawgeti(L, slots, TB_PENDINGBY) != LUA_TNIL && lua_getstack(L, 1, &ar)) {
    lua_getinfo(L, "f", &ar);
    lua_rawgeti(L, slots, TB_PENDINGERR);
    reraise = lua_rawequal(L, -2, -3) && lua_rawequal(L, -1, err);
  }
  lua_settop(L, slots);
  if (reraise)
    lua_rawgeti(L, slots, TB_PENDING);
  else
    luaL_traceback(L, L, NULL, 1);
  lua_rawseti(L, slots, TB_LAST);
  lua_pushvalue(L, err);
  lua_rawseti(L, slots, TB_LASTERR);
  tbclear(L, slots, TB_PENDINGERR, TB_PENDINGBY);
  lua_settop(L, err);
  return 1;
}

int sl_taketraceback(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (!tbslots(L, 0)) return 0;
  int slots = lua_gettop(L);
  lua_rawgeti(L, slots, TB_LASTERR);
  int same = lua_rawequal(L, -1, idx) && lua_rawgeti(L, slots, TB_LAST) == LUA_TSTRING;
  if (!same) {
    lua_settop(L, slots - 1);
    return 0;
  }
  tbclear(L, slots, TB_LASTERR, TB_LAST);
  lua_replace(L, slots);  /* the traceback, in place of the table */
  lua_settop(L, slots);
  return 1;
}

void sl_tracebackreraise(lua_State *L, int err, int tb) {
  err = lua_absindex(L, err);
  tb = tb == 0 ? 0 : lua_absindex(L, tb);
  if (!tbslots(L, 0)) return;
  int slots = lua_gettop(L);
  lua_Debug ar;
  if (tb != 0 && lua_type(L, tb) == LUA_TSTRING && lua_getstack(L, 0, &ar)) {
    lua_pushvalue(L, err);
    lua_rawseti(L, slots, TB_PENDINGERR);
    lua_pushvalue(L, tb);
    lua_rawseti(L, slots, TB_PENDING);
    lua_getinfo(L, "f", &ar);  /* the function raising: the running one */
    lua_rawseti(L, slots, TB_PENDINGBY);
  } else {
    tbclear(L, slots, TB_PENDINGERR, TB_PENDINGBY);
  }
  lua_settop(L, slots - 1);
}

/* ---- io delegation --------------------------------------------------------------- */

static int iodelegate(lua_State *L) {
  sl_SwiftFunction unwrap = (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(2));
  if (callswift(L, unwrap) < 0) return lua_error(L);
  lua_CFunction iofn = lua_tocfunction(L, lua_upvalueindex(1));
  return iofn(L);  /* same frame: io's messages name this method and the caller's line */
}

void sl_pushiodelegate(lua_State *L, lua_CFunction iofn, sl_SwiftFunction unwrap) {
  lua_pushcfunction(L, iofn);
  lua_pushlightuserdata(L, (void *)unwrap);
  lua_pushcclosure(L, iodelegate, 2);
}

FILE *sl_iofile(lua_State *L, int idx) {
  luaL_Stream *p = (luaL_Stream *)luaL_testudata(L, idx, LUA_FILEHANDLE);
  if (p == NULL || p->closef == NULL) return NULL;
  return p->f;
}

/* Why: io's write returns the io file; ours must return the handle so that chained
 * writes keep going through the runtime. Same formatting and messages as liolib. */
static int filewrite(lua_State *L) {
  sl_SwiftFunction unwrap = (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);  /* the handle, returned at the end */
  int top = lua_gettop(L);
  if (callswift(L, unwrap) < 0) return lua_error(L);
  FILE *f = sl_iofile(L, 1);
  if (f == NULL) return luaL_error(L, "file is already closed");
  int status = 1;
  for (int arg = 2; arg < top; arg++) {
    if (lua_type(L, arg) == LUA_TNUMBER) {
      int len = lua_isinteger(L, arg)
                  ? fprintf(f, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, arg))
                  : fprintf(f, LUA_NUMBER_FMT, (LUAI_UACNUMBER)lua_tonumber(L, arg));
      status = status && (len > 0);
    } else {
      size_t l;
      const char *s = luaL_checklstring(L, arg, &l);
      status = status && (fwrite(s, sizeof(char), l, f) == l);
    }
  }
  if (status) {
    lua_settop(L, top);
    return 1;
  }
  return luaL_fileresult(L, status, NULL);
}

void sl_pushfilewrite(lua_State *L, sl_SwiftFunction unwrap) {
  lua_pushlightuserdata(L, (void *)unwrap);
  lua_pushcclosure(L, filewrite, 1);
}

/* One step of a runtime file's lines iterator. Upvalues: handle, io iterator, check. */
static int filelinesstep(lua_State *L) {
  int base = lua_gettop(L);
  sl_SwiftFunction check = (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(3));
  lua_pushvalue(L, lua_upvalueindex(1));
  if (callswift(L, check) < 0) return lua_error(L);
  lua_settop(L, base);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_call(L, 0, LUA_MULTRET);
  return lua_gettop(L) - base;
}

/* Upvalues: io's lines function, unwrap, check. */
static int filelines(lua_State *L) {
  int n = lua_gettop(L);
  sl_SwiftFunction unwrap = (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(2));
  lua_pushvalue(L, 1);  /* n + 1: the handle */
  if (callswift(L, unwrap) < 0) return lua_error(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  for (int i = 1; i <= n; i++) lua_pushvalue(L, i);
  lua_call(L, n, 1);    /* n + 2: io's iterator */
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_pushcclosure(L, filelinesstep, 3);
  return 1;
}

void sl_pushfilelines(lua_State *L, lua_CFunction iolines, sl_SwiftFunction unwrap, sl_SwiftFunction check) {
  lua_pushcfunction(L, iolines);
  lua_pushlightuserdata(L, (void *)unwrap);
  lua_pushlightuserdata(L, (void *)check);
  lua_pushcclosure(L, filelines, 3);
}

/* Why: opening must stay io.open to the letter (mode checks, nil, message, errno), and
 * only a successful open is handed to Swift (to wrap or adopt the file). */
static int opendelegate(lua_State *L) {
  lua_CFunction ioopen = lua_tocfunction(L, lua_upvalueindex(1));
  int n = ioopen(L);
  if (n != 1 || sl_iofile(L, -1) == NULL) {
    /* nil, message, errno: remembered for with_resource(fs.open(p), fn), where Lua
     * passes only the nil (see sl_lastfailure). */
    if (n >= 2 && lua_type(L, -n + 1) == LUA_TSTRING) {
      lua_pushvalue(L, -n + 1);
      lua_setfield(L, LUA_REGISTRYINDEX, SL_LASTFAILURE);
    }
    return n;
  }
  sl_SwiftFunction after = (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(2));
  if (callswift(L, after) < 0) return lua_error(L);
  return 1;
}

void sl_pushopendelegate(lua_State *L, lua_CFunction ioopen, sl_SwiftFunction after) {
  lua_pushcfunction(L, ioopen);
  lua_pushlightuserdata(L, (void *)after);
  lua_pushcclosure(L, opendelegate, 2);
}

int sl_closeiofile(lua_State *L, int idx) {
  luaL_Stream *p = (luaL_Stream *)luaL_testudata(L, idx, LUA_FILEHANDLE);
  if (p == NULL || p->closef == NULL) return 0;
  p->closef = NULL;  /* closed from now on, whatever fclose says (as liolib's aux_close) */
  if (fclose(p->f) == 0) return 0;
  int en = errno;
  lua_pushstring(L, strerror(en));
  return en;
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
  status = callswift(L, (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(1)));
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
