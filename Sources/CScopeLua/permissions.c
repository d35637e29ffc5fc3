/*
 * --sandbox: the stock functions that touch files, processes, the environment and
 * native code are replaced, in their own tables, by wrappers that ask the runtime first
 * (ARCHITECTURE.md, "Permissions"). A wrapper keeps the function it replaces as upvalue
 * 1 and the Swift check (sl_SwiftFunction, SL_PERM_* below) as upvalue 2. The check
 * decides (paths, roots and messages live in Swift, Permissions.swift); raising is done
 * here, after the Swift frame has returned (rule 1). The replaced functions stay out of
 * a script's reach: a C function's upvalues and the stack slots of C frames are refused
 * to the debug library (see the debug wrappers at the end).
 */
#include "cscopelua.h"

#include <string.h>

/* Asks the Swift check whether `op` on `subject` is allowed; raises the denial,
 * positioned at `level` (1: the caller of the running C function), when it is not.
 * The subject goes over as a C string: what the stock function will see (a Lua string
 * with a zero byte names the file up to that byte). Stack: 0. */
static void check(lua_State *L, int op, const char *subject, int level) {
  sl_SwiftFunction fn = (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(2));
  lua_pushinteger(L, op);
  lua_pushstring(L, subject);
  if (fn == NULL || sl_callswift(L, fn) >= 0) return;
  luaL_where(L, level);
  lua_insert(L, -2);
  lua_concat(L, 2);
  lua_error(L);
}

/* Calls the replaced function (upvalue 1) with this frame's arguments and returns its
 * results. A plain C function runs in this very frame, so its argument errors name the
 * function as the script called it ("bad argument #1 to 'open'"); a closure (io.open is
 * the runtime's adopting closure) gets a call of its own. */
static int callprev(lua_State *L) {
  lua_CFunction f = lua_tocfunction(L, lua_upvalueindex(1));
  if (f != NULL) {
    if (lua_getupvalue(L, lua_upvalueindex(1), 1) == NULL) return f(L);
    lua_pop(L, 1);
  }
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

/* Refuses outright: what the sandbox takes away (debug.sethook, debug.getregistry). A
 * plain C function without upvalues, because signals.c wraps debug.sethook later and
 * calls the function it found in its own frame. */
static int refuse(lua_State *L, const char *what) {
  return luaL_error(L, "permission denied: %s (not available under --sandbox)", what);
}

static int refusesethook(lua_State *L) { return refuse(L, "debug.sethook"); }
static int refusegetregistry(lua_State *L) { return refuse(L, "debug.getregistry"); }
/* debug.debug runs what stdin says, binary chunks included. */
static int refusedebug(lua_State *L) { return refuse(L, "debug.debug"); }

/* ---- files ------------------------------------------------------------------------- */

/* io.open / fs.open (path, mode): read for "r", write for "w" and "a", both with "+".
 * The arguments are checked here as io.open checks them, so that the errors name this
 * function and the mode is known to be valid before it decides what to check. */
static int permopen(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  const char *mode = luaL_optstring(L, 2, "r");
  const char *m = mode;
  int valid = *m != '\0' && strchr("rwa", *m) != NULL;
  if (valid) {
    m++;
    if (*m == '+') m++;
    valid = strspn(m, "b") == strlen(m);
  }
  luaL_argcheck(L, valid, 2, "invalid mode");
  int plus = strchr(mode, '+') != NULL;
  if (mode[0] != 'r' || plus) check(L, SL_PERM_WRITE, path, 1);
  if (mode[0] == 'r' || plus) check(L, SL_PERM_READ, path, 1);
  return callprev(L);
}

/* io.lines(path, ...): reading a named file (no name: the default input, a descriptor
 * the runner or the script already holds). */
static int permlines(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) check(L, SL_PERM_READ, luaL_checkstring(L, 1), 1);
  return callprev(L);
}

/* io.input(path) / io.output(path): a file name (a string, or a number as io converts
 * it) opens that file; a file handle or nothing opens nothing. */
static int perminput(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) check(L, SL_PERM_READ, lua_tostring(L, 1), 1);
  return callprev(L);
}

static int permoutput(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER) check(L, SL_PERM_WRITE, lua_tostring(L, 1), 1);
  return callprev(L);
}

/* os.remove(path): removing is writing (to the file's directory). */
static int permremove(lua_State *L) {
  check(L, SL_PERM_WRITE, luaL_checkstring(L, 1), 1);
  return callprev(L);
}

/* os.rename(from, to): both names change. */
static int permrename(lua_State *L) {
  const char *from = luaL_checkstring(L, 1);
  const char *to = luaL_checkstring(L, 2);
  check(L, SL_PERM_WRITE, from, 1);
  check(L, SL_PERM_WRITE, to, 1);
  return callprev(L);
}

/* os.tmpname(): creates a file from loslib.c's template (LUA_TMPNAMTEMPLATE, which the
 * headers do not export), so writing that directory must be allowed. */
static int permtmpname(lua_State *L) {
  check(L, SL_PERM_WRITE, "/tmp/lua_XXXXXX", 1);
  return callprev(L);
}

/* ---- processes, environment, native code ------------------------------------------ */

/* os.execute(cmd) / io.popen(cmd): running a command. os.execute() with no command only
 * asks whether a shell exists, and is let through. */
static int permexecute(lua_State *L) {
  if (!lua_isnoneornil(L, 1)) check(L, SL_PERM_EXEC, luaL_checkstring(L, 1), 1);
  return callprev(L);
}

static int permpopen(lua_State *L) {
  check(L, SL_PERM_EXEC, luaL_checkstring(L, 1), 1);
  return callprev(L);
}

/* os.getenv(name) */
static int permgetenv(lua_State *L) {
  check(L, SL_PERM_ENV, luaL_checkstring(L, 1), 1);
  return callprev(L);
}

/* package.loadlib(path, func): loading native code. */
static int permloadlib(lua_State *L) {
  check(L, SL_PERM_NATIVE, luaL_checkstring(L, 1), 1);
  return callprev(L);
}

/* ---- loading chunks: text only ------------------------------------------------------ */

/* Sets argument `idx` (a load mode) to "t", keeping absent arguments after it absent
 * (load's and loadfile's env argument means something different when it is nil). A
 * binary chunk is not checked by Lua and can corrupt the VM. */
static void textmode(lua_State *L, int idx) {
  if (lua_gettop(L) >= idx) {
    lua_pushliteral(L, "t");
    lua_replace(L, idx);
  } else {
    lua_settop(L, idx - 1);
    lua_pushliteral(L, "t");
  }
}

/* load(chunk, name, mode, env): text chunks only. */
static int permload(lua_State *L) {
  textmode(L, 3);
  return callprev(L);
}

/* loadfile(path, mode, env): reading the file, text chunks only. No path: stdin. */
static int permloadfile(lua_State *L) {
  const char *path = luaL_optstring(L, 1, NULL);
  if (path != NULL) check(L, SL_PERM_READ, path, 1);
  textmode(L, 2);
  return callprev(L);
}

static int dofilecont(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L) - 1;
}

/* dofile(path): as lbaselib.c's, with the file checked and loaded as text. */
static int permdofile(lua_State *L) {
  const char *path = luaL_optstring(L, 1, NULL);
  if (path != NULL) check(L, SL_PERM_READ, path, 1);
  lua_settop(L, 1);
  if (luaL_loadfilex(L, path, "t") != LUA_OK) return lua_error(L);
  lua_callk(L, 0, LUA_MULTRET, 0, dofilecont);
  return dofilecont(L, 0, 0);
}

/* ---- require ------------------------------------------------------------------------ */

/* Finds `name` on package[field] with the stock package.searchpath (upvalue 3; the
 * package table is upvalue 4). Returns the file name, or NULL with searchpath's "no
 * file ..." message on top. Stack: +1. */
static const char *findfile(lua_State *L, const char *name, const char *field) {
  lua_getfield(L, lua_upvalueindex(4), field);
  const char *path = lua_tostring(L, -1);
  if (path == NULL) luaL_error(L, "'package.%s' must be a string", field);
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_pushstring(L, name);
  lua_pushstring(L, path);
  lua_call(L, 2, 2);
  lua_remove(L, -3);  /* the path */
  if (lua_isstring(L, -2)) {
    lua_pop(L, 1);
    return lua_tostring(L, -1);
  }
  lua_remove(L, -2);  /* the nil */
  return NULL;
}

/* package.searchers[2], Lua modules: the file found on package.path must be readable
 * (a read root, the script's directory or scopelua's stdlib: SL_PERM_MODULE), and is
 * loaded as text. The stock searcher, upvalue 1, is not used. The denial is positioned
 * at require's caller (level 2: this searcher is called by require). */
static int permsearchlua(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *file = findfile(L, name, "path");
  if (file == NULL) return 1;  /* "no file ...", which require collects */
  check(L, SL_PERM_MODULE, file, 2);
  if (luaL_loadfilex(L, file, "t") != LUA_OK)
    return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, file, lua_tostring(L, -1));
  lua_pushstring(L, file);
  return 2;
}

/* package.searchers[3] and [4], C modules: when the stock searcher (upvalue 1) would
 * load a file, that is native code: allowed only with --allow-native, checked before
 * the library is opened. Upvalue 5: true for the all-in-one searcher, which looks the
 * name's root up ("a" for "a.b"). Nothing found: the stock searcher says so. */
static int permsearchc(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  int top = lua_gettop(L);
  const char *look = name;
  if (lua_toboolean(L, lua_upvalueindex(5))) {
    const char *dot = strchr(name, '.');
    if (dot == NULL) return callprev(L);  /* no root: the stock searcher returns nothing */
    lua_pushlstring(L, name, (size_t)(dot - name));
    look = lua_tostring(L, -1);
  }
  const char *file = findfile(L, look, "cpath");
  if (file != NULL) check(L, SL_PERM_NATIVE, file, 2);
  lua_settop(L, top);
  return callprev(L);
}

/* ---- the debug library and collectgarbage ------------------------------------------ */

/* collectgarbage("stop"): a stopped collector would let memory grow until the limit
 * refuses everything; the other options are harmless. */
static int permcollect(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING && strcmp(lua_tostring(L, 1), "stop") == 0)
    return refuse(L, "collectgarbage(\"stop\")");
  return callprev(L);
}

/* debug.getmetatable / setmetatable / getuservalue / setuservalue on a full userdata:
 * runtime handles and io files. A handle's metatable (its __close, __gc, __index) is
 * how the runtime tells its records apart; it is not the script's to swap. Upvalue 3:
 * the function's name. */
static int permuserdata(lua_State *L) {
  if (lua_type(L, 1) == LUA_TUSERDATA) {
    const char *what = lua_tostring(L, lua_upvalueindex(3));
    return luaL_error(L, "permission denied: %s on a userdata (not available under --sandbox)", what);
  }
  return callprev(L);
}

/* debug.getupvalue / setupvalue on a C function: the wrappers above keep the functions
 * they replace as upvalues. A Lua function's upvalues are the script's own. */
static int permupvalue(lua_State *L) {
  if (lua_iscfunction(L, 1)) {
    const char *what = lua_tostring(L, lua_upvalueindex(3));
    return luaL_error(L, "permission denied: %s on a C function (not available under --sandbox)", what);
  }
  return callprev(L);
}

/* Whether the frame the debug call at argument `arg` (after an optional thread) names
 * by level runs a C function. Level 0 is the running function, as in the stock debug
 * library, whose code runs in this frame (callprev). */
static int cframe(lua_State *L, int *arg) {
  lua_State *co = L;
  *arg = 1;
  if (lua_type(L, 1) == LUA_TTHREAD) {
    co = lua_tothread(L, 1);
    *arg = 2;
  }
  if (lua_type(L, *arg) != LUA_TNUMBER || !lua_isinteger(L, *arg)) return 0;
  lua_Debug ar;
  lua_Integer level = lua_tointeger(L, *arg);
  if (level < 0 || level > 1000000 || !lua_getstack(co, (int)level, &ar)) return 0;
  if (!lua_getinfo(co, "S", &ar)) return 0;
  return strcmp(ar.what, "C") == 0;
}

/* debug.getlocal / setlocal on a C function's frame: its slots hold what it works on
 * (a wrapper's checked path, which setlocal could change between the check and the
 * open; a replaced function it is calling). Locals of Lua frames are allowed. */
static int permlocal(lua_State *L) {
  int arg;
  if (cframe(L, &arg)) {
    const char *what = lua_tostring(L, lua_upvalueindex(3));
    return luaL_error(L, "permission denied: %s in a C function's frame (not available under --sandbox)", what);
  }
  return callprev(L);
}

/* debug.getinfo(level, "f"): the function running at a level, when it is a C function,
 * is left out (`func` is nil): a wrapper calling a replaced closure has it at the level
 * above. Everything else getinfo says is kept. */
static int permgetinfo(lua_State *L) {
  int bylevel = lua_type(L, lua_type(L, 1) == LUA_TTHREAD ? 2 : 1) == LUA_TNUMBER;
  int n = callprev(L);
  if (bylevel && n == 1 && lua_type(L, -1) == LUA_TTABLE) {
    lua_getfield(L, -1, "func");
    int c = lua_iscfunction(L, -1);
    lua_pop(L, 1);
    if (c) {
      lua_pushnil(L);
      lua_setfield(L, -2, "func");
    }
  }
  return n;
}

/* ---- installing ----------------------------------------------------------------------- */

/* Sets lib[name] to `fn` with lib[name]'s current value (a function) as upvalue 1, the
 * check as upvalue 2 and `extra` (when not NULL: a string) as upvalue 3. Stack: 0. */
static void wrap(lua_State *L, int lib, const char *name, lua_CFunction fn, sl_SwiftFunction checkfn, const char *extra) {
  if (lua_getfield(L, lib, name) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    return;
  }
  lua_pushlightuserdata(L, (void *)checkfn);
  if (extra != NULL) lua_pushstring(L, extra);
  lua_pushcclosure(L, fn, extra != NULL ? 3 : 2);
  lua_setfield(L, lib, name);
}

/* Pushes the loaded library `name` (package.loaded[name]); 0 when it is not a table. */
static int library(lua_State *L, const char *name) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  int t = lua_getfield(L, -1, name);
  lua_remove(L, -2);
  return t == LUA_TTABLE;
}

/* The searchers: Lua modules through permsearchlua, C modules through permsearchc
 * around the stock searchers. Stack: 0. */
static void wrapsearchers(lua_State *L, sl_SwiftFunction checkfn) {
  if (!library(L, LUA_LOADLIBNAME)) { lua_pop(L, 1); return; }
  int package = lua_gettop(L);
  lua_getfield(L, package, "searchpath");
  int searchpath = lua_gettop(L);
  lua_getfield(L, package, "searchers");
  int searchers = lua_gettop(L);
  if (lua_type(L, searchpath) == LUA_TFUNCTION && lua_type(L, searchers) == LUA_TTABLE) {
    for (int i = 2; i <= 4; i++) {
      lua_rawgeti(L, searchers, i);          /* 1: the stock searcher */
      lua_pushlightuserdata(L, (void *)checkfn);  /* 2 */
      lua_pushvalue(L, searchpath);          /* 3 */
      lua_pushvalue(L, package);             /* 4 */
      lua_pushboolean(L, i == 4);            /* 5: the all-in-one searcher */
      lua_pushcclosure(L, i == 2 ? permsearchlua : permsearchc, 5);
      lua_rawseti(L, searchers, i);
    }
  }
  lua_settop(L, package - 1);
}

void sl_perm_install(lua_State *L, sl_SwiftFunction checkfn) {
  int top = lua_gettop(L);
  if (library(L, LUA_IOLIBNAME)) {
    int io = lua_gettop(L);
    wrap(L, io, "open", permopen, checkfn, NULL);
    wrap(L, io, "lines", permlines, checkfn, NULL);
    wrap(L, io, "input", perminput, checkfn, NULL);
    wrap(L, io, "output", permoutput, checkfn, NULL);
    wrap(L, io, "popen", permpopen, checkfn, NULL);
  }
  lua_settop(L, top);
  /* fs is a global (and require "scope.fs" returns the same table), not in package.loaded. */
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  if (lua_getfield(L, -1, "fs") == LUA_TTABLE) wrap(L, lua_gettop(L), "open", permopen, checkfn, NULL);
  lua_settop(L, top);
  if (library(L, LUA_OSLIBNAME)) {
    int os = lua_gettop(L);
    wrap(L, os, "remove", permremove, checkfn, NULL);
    wrap(L, os, "rename", permrename, checkfn, NULL);
    wrap(L, os, "tmpname", permtmpname, checkfn, NULL);
    wrap(L, os, "execute", permexecute, checkfn, NULL);
    wrap(L, os, "getenv", permgetenv, checkfn, NULL);
  }
  lua_settop(L, top);
  if (library(L, LUA_GNAME)) {
    int g = lua_gettop(L);
    wrap(L, g, "load", permload, checkfn, NULL);
    wrap(L, g, "loadfile", permloadfile, checkfn, NULL);
    wrap(L, g, "dofile", permdofile, checkfn, NULL);
    wrap(L, g, "collectgarbage", permcollect, checkfn, NULL);
  }
  lua_settop(L, top);
  if (library(L, LUA_LOADLIBNAME)) wrap(L, lua_gettop(L), "loadlib", permloadlib, checkfn, NULL);
  lua_settop(L, top);
  wrapsearchers(L, checkfn);
  if (library(L, LUA_DBLIBNAME)) {
    int db = lua_gettop(L);
    lua_pushcfunction(L, refusesethook);
    lua_setfield(L, db, "sethook");
    lua_pushcfunction(L, refusegetregistry);
    lua_setfield(L, db, "getregistry");
    lua_pushcfunction(L, refusedebug);
    lua_setfield(L, db, "debug");
    wrap(L, db, "getmetatable", permuserdata, checkfn, "debug.getmetatable");
    wrap(L, db, "setmetatable", permuserdata, checkfn, "debug.setmetatable");
    wrap(L, db, "getuservalue", permuserdata, checkfn, "debug.getuservalue");
    wrap(L, db, "setuservalue", permuserdata, checkfn, "debug.setuservalue");
    wrap(L, db, "getupvalue", permupvalue, checkfn, "debug.getupvalue");
    wrap(L, db, "setupvalue", permupvalue, checkfn, "debug.setupvalue");
    wrap(L, db, "getlocal", permlocal, checkfn, "debug.getlocal");
    wrap(L, db, "setlocal", permlocal, checkfn, "debug.setlocal");
    wrap(L, db, "getinfo", permgetinfo, checkfn, NULL);
  }
  lua_settop(L, top);
}
