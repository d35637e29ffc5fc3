/*
 * Error messages worded as Lua's own (argument and type errors) and tracebacks that
 * belong to the error they describe. Nothing here raises: Swift pushes the message and
 * returns SL_RAISE (ARCHITECTURE.md, rule 1).
 */
#include "cscopelua.h"

#include <stdlib.h>
#include <string.h>

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

