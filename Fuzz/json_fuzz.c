/*
 * libFuzzer target for scopelua's JSON codec (Sources/CScopeLua/jsondecode.c and
 * jsonencode.c), built with AddressSanitizer and UndefinedBehaviorSanitizer by
 * scripts/fuzz-json.sh. It links the two codec files and the partition-key scanner
 * (jsonkey.c) alone (plus Debian's liblua5.4), not the Swift bridge: the codec needs
 * nothing from it but the per-state data that sl_info finds in the state's extra space.
 *
 * For every input it checks, besides memory safety and UB:
 *  - decoding returns a value or a message (never raises, leaves one value);
 *  - a decoded value encodes, unless it holds a number JSON cannot write (1e400 decodes
 *    to inf); that text decodes again, and encoding the result gives the same text
 *    (after one trip every number is already written as "%.14g" writes it). Object keys
 *    come in lua_next order, which may differ between two tables with the same keys, so
 *    when the texts differ the values they decode to must be the same instead;
 *  - any byte string encodes, and decodes back to itself;
 *  - the partition-key scanner (jsonkey.c), on libFuzzer's own buffer (no terminator
 *    after it, so ASan sees any read past the end), agrees with the decoder for a few
 *    fixed paths and for every key path the decoded object holds (up to PATHS of them):
 *    SL_KEY_INVALID exactly when json.decode fails or gives no object; otherwise
 *    SL_KEY_FOUND exactly when walking the decoded tables (rawget) finds a value, and for
 *    a scalar the hash is sl_jsonkey_value's for the decoded value (which reads no
 *    text: this checks the scanner's own reading of numbers and escapes against the
 *    decoder's); and where json.encode's text of the decoded object holds an equal value
 *    at the path (rawequal: floats of 15 digits and more are rounded to 14), the
 *    scanner gives that text the same hash.
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

/* ---- partition keys ------------------------------------------------------------------ */

enum { PATHS = 48, MAXCOMPONENTS = 8 };

/* libFuzzer's buffer for the input being checked: the scanner reads it in place. */
static const uint8_t *rawdata;
static size_t rawsize;
static int pathschecked;

typedef struct {
  const char *s;
  size_t len;
} Component;

/* Why: sl_KeyPath wants the components one after another; `n` components are copied
 * into a buffer made for them (freed by the caller). */
static sl_KeyPath makepath(const Component *c, int n, char **names, size_t *ends) {
  size_t total = 0;
  for (int i = 0; i < n; i++) total += c[i].len;
  *names = (char *)malloc(total + 1);
  if (*names == NULL) abort();
  size_t at = 0;
  for (int i = 0; i < n; i++) {
    memcpy(*names + at, c[i].s, c[i].len);
    at += c[i].len;
    ends[i] = at;
  }
  return (sl_KeyPath){(const uint8_t *)*names, ends, (size_t)n};
}

static sl_KeyOutcome locate(const uint8_t *line, size_t len, const Component *c, int n, uint64_t *hash) {
  char *names;
  size_t ends[MAXCOMPONENTS + 1];
  sl_KeyPath path = makepath(c, n, &names, ends);
  sl_KeyOutcome r = sl_jsonkey(line, len, &path, hash);
  free(names);
  return r;
}

/* Why: the decoded value at the path, as a worker's Lua code would reach it: rawget
 * step by step, through tables only. Pushes it, or nil. */
static void walk(lua_State *L, int root, const Component *c, int n) {
  lua_pushvalue(L, root);
  for (int i = 0; i < n; i++) {
    if (lua_type(L, -1) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_pushnil(L);
      return;
    }
    lua_pushlstring(L, c[i].s, c[i].len);
    lua_rawget(L, -2);
    lua_remove(L, -2);
  }
}

static int isscalar(lua_State *L, int idx) {
  int t = lua_type(L, idx);
  return t == LUA_TSTRING || t == LUA_TNUMBER || t == LUA_TBOOLEAN || t == LUA_TLIGHTUSERDATA;
}

/* Checks one path. Stack: input, v (the decoded value, if `object`), and with `text`
 * also t (json.encode(v)) and v2 (json.decode(t)). */
static void checkpath(lua_State *L, const Component *c, int n, int object, int text) {
  pathschecked++;
  uint64_t hash = 0;
  sl_KeyOutcome r = locate(rawdata, rawsize, c, n, &hash);
  const char *input = lua_tostring(L, 1);
  if (!object) {
    if (r != SL_KEY_INVALID) fail("the scanner accepts what json.decode rejects (or no object)", input, c[0].s);
    return;
  }
  if (r == SL_KEY_INVALID) fail("the scanner rejects an object json.decode accepts", input, c[0].s);
  walk(L, 2, c, n);
  if (lua_isnil(L, -1)) {
    if (r != SL_KEY_MISSING) fail("the scanner finds a key the decoded object does not hold", input, c[n - 1].s);
  } else {
    if (r != SL_KEY_FOUND) fail("the scanner misses a key the decoded object holds", input, c[n - 1].s);
    uint64_t expected;
    if (isscalar(L, -1) && (!sl_jsonkey_value(L, -1, &expected) || expected != hash)) {
      fail("the hash differs from the decoded value's", input, c[n - 1].s);
    }
  }
  if (text) {
    size_t len;
    const char *t = lua_tolstring(L, 3, &len);
    uint64_t hash2 = 0;
    sl_KeyOutcome r2 = locate((const uint8_t *)t, len, c, n, &hash2);
    walk(L, 4, c, n);
    if (r2 != (lua_isnil(L, -1) ? SL_KEY_MISSING : SL_KEY_FOUND)) fail("the scanner disagrees with the decoder on json.encode's text", t, c[n - 1].s);
    if (r2 == SL_KEY_FOUND && r == SL_KEY_FOUND && isscalar(L, -1) && lua_rawequal(L, -1, -2) && hash != hash2) {
      fail("equal values hash differently after json.encode", input, t);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* Why: every key path of the decoded object is one the scanner must find (and, with an
 * absent last step added, one it must not). The keys stay on the stack (lua_next's)
 * while their paths are checked. */
static void checkkeys(lua_State *L, int t, Component *c, int n, int text) {
  if (!lua_checkstack(L, 8)) abort();
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {  /* key, value */
    if (lua_type(L, -2) == LUA_TSTRING && pathschecked < PATHS) {
      c[n].s = lua_tolstring(L, -2, &c[n].len);
      checkpath(L, c, n + 1, 1, text);
      c[n + 1] = (Component){"\001absent", 7};
      checkpath(L, c, n + 2, 1, text);
      if (lua_type(L, -1) == LUA_TTABLE && n + 2 < MAXCOMPONENTS) checkkeys(L, lua_gettop(L), c, n + 1, text);
    }
    lua_pop(L, 1);
  }
}

/* The scanner against the decoder on the input (stack: input). */
static void keychecks(lua_State *L) {
  pathschecked = 0;
  size_t first = 0;
  while (first < rawsize && (rawdata[first] == ' ' || rawdata[first] == '\t' || rawdata[first] == '\n' || rawdata[first] == '\r')) first++;
  int object = decode(L, 1) && lua_type(L, 2) == LUA_TTABLE && first < rawsize && rawdata[first] == '{';
  int text = 0;
  if (object) {
    if (encode(L, 2)) {
      if (!decode(L, 3)) fail("encoded text did not decode", lua_tostring(L, 3), lua_tostring(L, -1));
      text = 1;
    } else {
      lua_settop(L, 2);
    }
  }
  static const Component fixed[][2] = {
    {{"a", 1}}, {{"a", 1}, {"b", 1}}, {{"k", 1}}, {{"user", 4}, {"id", 2}}, {{"", 0}}, {{"a\0b", 3}},
  };
  static const int lengths[] = {1, 2, 1, 2, 1, 1};
  for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) checkpath(L, fixed[i], lengths[i], object, text);
  if (object) {
    Component c[MAXCOMPONENTS + 1];
    checkkeys(L, 2, c, 0, text);
  }
}

/* Why: the checks run under lua_pcall, so that a Lua error (the codec must raise none,
 * but a memory error would) is reported as a finding instead of a panic. Argument 1 is
 * the input. */
static int checks(lua_State *L) {
  keychecks(L);
  lua_settop(L, 1);
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
  rawdata = data;
  rawsize = size;
  lua_pushcfunction(state, checks);
  lua_pushlstring(state, (const char *)data, size);
  if (lua_pcall(state, 1, 0, 0) != LUA_OK) fail("the codec raised a Lua error", lua_tostring(state, -1), NULL);
  lua_settop(state, 0);
  return 0;
}
