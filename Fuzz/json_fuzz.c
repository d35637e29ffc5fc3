/*
 * libFuzzer target for scopelua's JSON codec (Sources/CScopeLua/jsondecode.c and
 * jsonencode.c), built with AddressSanitizer and UndefinedBehaviorSanitizer by
 * scripts/fuzz-json.sh. It links the two codec files alone (plus Debian's liblua5.4), not
 * the Swift bridge: the codec needs nothing from it but the per-state data that sl_info
 * finds in the state's extra space.
 *
 * For every input it checks, besides memory safety and UB:
 *  - decoding returns a value or a message (never raises, leaves one value);
 *  - a decoded value encodes, unless it holds a number JSON cannot write (1e400 decodes
 *    to inf); that text decodes again, and encoding the result gives the same text
 *    (after one trip every number is already written as "%.14g" writes it). Object keys
 *    come in lua_next order, which may differ between two tables with the same keys, so
 *    when the texts differ the values they decode to must be the same instead;
 *  - any byte string encodes, and decodes back to itself.
 * A failed check prints what differs and aborts, which libFuzzer reports as a crash.
 */
#include "cscopelua.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static lua_State *state;  /* one state for the whole run, as in a scopelua run */

static void fail(const char *what, const char *a, const char *b) {
  fprintf(stderr, "json_fuzz: %s\n  first:  %s\n  second: %s\n", what, a ? a : "(none)", b ? b : "(none)");
  abort();
}

/* Why: the codec's whole dependency on the bridge. sl_newstate and JSONBindings.install
 * set up the same in scopelua: per-state data with the codec's buffer (empty here), and
 * json.array_mt in the registry under its own address, which `[]` decodes to and which
 * makes an empty table encode as []. */
static lua_State *newstate(void) {
  lua_State *L = luaL_newstate();
  sl_StateInfo *info = (sl_StateInfo *)calloc(1, sizeof(sl_StateInfo));
  if (L == NULL || info == NULL) abort();
  *(sl_StateInfo **)lua_getextraspace(L) = info;
  lua_createtable(L, 0, 1);
  info->jsonarraymt = lua_topointer(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, info->jsonarraymt);
  return L;
}

/* Why: the values two texts decode to are compared when the texts differ (key order).
 * Exact: integer or float subtype, floats bit for bit (-0), strings, json.null, tables
 * key by key with the same metatable (json.array_mt or none). */
static int same(lua_State *L, int a, int b) {
  a = lua_absindex(L, a);
  b = lua_absindex(L, b);
  int type = lua_type(L, a);
  if (type != lua_type(L, b)) return 0;
  switch (type) {
    case LUA_TNUMBER: {
      if (lua_isinteger(L, a) != lua_isinteger(L, b)) return 0;
      if (lua_isinteger(L, a)) return lua_tointeger(L, a) == lua_tointeger(L, b);
      double x = lua_tonumber(L, a), y = lua_tonumber(L, b);
      return memcmp(&x, &y, sizeof x) == 0;
    }
    case LUA_TTABLE: {
      if (!lua_checkstack(L, 8)) abort();
      int top = lua_gettop(L);
      const void *ma = lua_getmetatable(L, a) ? lua_topointer(L, -1) : NULL;
      const void *mb = lua_getmetatable(L, b) ? lua_topointer(L, -1) : NULL;
      lua_settop(L, top);
      if (ma != mb) return 0;
      long count = 0;
      lua_pushnil(L);
      while (lua_next(L, b) != 0) {
        count++;
        lua_pop(L, 1);
      }
      lua_pushnil(L);
      while (lua_next(L, a) != 0) {  /* key, value */
        lua_pushvalue(L, -2);
        lua_rawget(L, b);              /* key, value, b[key] */
        if (!same(L, -2, -1)) return 0;
        lua_pop(L, 2);
        count--;
      }
      return count == 0;
    }
    case LUA_TLIGHTUSERDATA:
      return lua_touserdata(L, a) == lua_touserdata(L, b);
    default:  /* strings, booleans */
      return lua_rawequal(L, a, b);
  }
}

/* Why: the codec's contract is one pushed value and a 1/0 status, whatever the input;
 * these wrappers check it and hand back the status. */
static int decode(lua_State *L, int idx) {
  int top = lua_gettop(L);
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  int ok = sl_json_decode(L, s, len);
  if (lua_gettop(L) != top + 1 || (!ok && lua_type(L, -1) != LUA_TSTRING)) fail("decode broke its contract", s, NULL);
  return ok;
}

static int encode(lua_State *L, int idx) {
  int top = lua_gettop(L);
  int ok = sl_json_encode(L, idx);
  if (lua_gettop(L) != top + 1 || lua_type(L, -1) != LUA_TSTRING) fail("encode broke its contract", NULL, NULL);
  return ok;
}

/* The input as JSON: decode, encode, decode, encode. (stack: input, v1, t1, v2, t2) */
static void jsonroundtrip(lua_State *L) {
  if (!decode(L, 1)) return;
  if (!encode(L, 2)) {
    if (strcmp(lua_tostring(L, -1), "Cannot serialise number: must not be NaN or Inf") != 0) {
      fail("a decoded value did not encode", lua_tostring(L, 1), lua_tostring(L, -1));
    }
    return;
  }
  if (!decode(L, 3)) fail("encoded text did not decode", lua_tostring(L, 3), lua_tostring(L, -1));
  if (!encode(L, 4)) fail("a re-decoded value did not encode", lua_tostring(L, 3), lua_tostring(L, -1));
  if (lua_rawequal(L, 3, 5)) return;
  if (lua_rawlen(L, 3) != lua_rawlen(L, 5)) fail("re-encoding changed the text", lua_tostring(L, 3), lua_tostring(L, 5));
  if (!decode(L, 5) || !same(L, 4, 6)) fail("re-encoding changed the value", lua_tostring(L, 3), lua_tostring(L, 5));
}

/* The input as any byte string: encode, decode, the same bytes. (stack: input, t, v) */
static void stringroundtrip(lua_State *L) {
  if (!encode(L, 1)) fail("a string did not encode", lua_tostring(L, 1), lua_tostring(L, -1));
  if (!decode(L, 2) || !lua_rawequal(L, 1, 3)) fail("a string did not come back", lua_tostring(L, 1), lua_tostring(L, 2));
}

/* Why: the checks run under lua_pcall, so that a Lua error (the codec must raise none,
 * but a memory error would) is reported as a finding instead of a panic. Argument 1 is
 * the input. */
static int checks(lua_State *L) {
  jsonroundtrip(L);
  lua_settop(L, 1);
  stringroundtrip(L);
  return 0;
}

/* Why: libFuzzer's entry point, called once per input. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (state == NULL) state = newstate();
  /* Each input starts without the codec's buffer, as a new state does, so that the
   * first decode grows it (else the encoder's larger reservations would leave the
   * decoder's growth path unused). */
  sl_StateInfo *info = sl_info(state);
  free(info->jsonbuf);
  info->jsonbuf = NULL;
  info->jsoncap = 0;
  lua_pushcfunction(state, checks);
  lua_pushlstring(state, (const char *)data, size);
  if (lua_pcall(state, 1, 0, 0) != LUA_OK) fail("the codec raised a Lua error", lua_tostring(state, -1), NULL);
  lua_settop(state, 0);
  return 0;
}
