/*
 * Runtime-owned files delegate to the io library's own C functions in the same frame, so
 * their error messages and results are exactly io's; Swift only checks the handle first.
 */
#include "cscopelua.h"

#include <stdlib.h>
#include <string.h>
#include <errno.h>

/* ---- io delegation --------------------------------------------------------------- */

static int iodelegate(lua_State *L) {
  sl_SwiftFunction unwrap = (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(2));
  if (sl_callswift(L, unwrap) < 0) return lua_error(L);
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
  if (sl_callswift(L, unwrap) < 0) return lua_error(L);
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
  if (sl_callswift(L, check) < 0) return lua_error(L);
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
  if (sl_callswift(L, unwrap) < 0) return lua_error(L);
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
  if (sl_callswift(L, after) < 0) return lua_error(L);
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

