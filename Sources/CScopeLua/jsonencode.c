/*
 * json.encode, in place of lua-cjson's encoder (jsondecode.c replaces its decoder):
 * the pipeline encodes every event it logs or writes, and cjson 2.1 measured slow at it:
 * it formats every number with snprintf("%.14g") (half of an analytics event's encoding
 * cost: ids and timestamps are integers), and it cannot write an empty array, so tables
 * marked with json.array_mt needed a second encoding pass with a placeholder.
 *
 * The text is cjson's for everything cjson can encode: keys in lua_next order, the same
 * escapes (including "\/"), numbers as "%.14g" would write them, the same errors. Two
 * deliberate differences: an empty table marked with json.array_mt is written as [], and
 * Lua integers of 15 digits and more are written exactly instead of rounded to 14.
 */
#include "cscopelua.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_DEPTH = 1000, SPARSE_RATIO = 2, SPARSE_SAFE = 10, STRING_CHUNK = 4096 };
/* The buffer is kept between calls, but not when one huge value made it big. */
enum { KEEP_MAX = 1 << 20, KEEP_DEFAULT = 4096 };

typedef struct {
  lua_State *L;
  sl_StateInfo *info;
  char *p;
  size_t n, cap;
  const char *error;   /* static reason, or NULL */
  int errtype;         /* Lua type of the value the error is about */
  int depth;           /* the nesting reached when the depth error was raised */
} Enc;

/* Grows the state's reusable buffer (kept between calls, like cjson's; sl_json_trim
 * shrinks it back after a call that made it huge). */
static int reserve(Enc *e, size_t more) {
  if (e->n + more <= e->cap) return 1;
  size_t cap = e->cap < 256 ? 256 : e->cap;
  while (cap < e->n + more) cap *= 2;
  char *grown = (char *)realloc(e->p, cap);
  if (grown == NULL) {
    e->error = "not enough memory";
    e->errtype = LUA_TNONE;
    return 0;
  }
  e->p = grown;
  e->cap = cap;
  e->info->jsonbuf = grown;
  e->info->jsoncap = cap;
  return 1;
}

static int put(Enc *e, const char *s, size_t len) {
  if (!reserve(e, len)) return 0;
  memcpy(e->p + e->n, s, len);
  e->n += len;
  return 1;
}

static int fail(Enc *e, int type, const char *reason) {
  e->error = reason;
  e->errtype = type;
  return 0;
}

/* ---- numbers ------------------------------------------------------------------------ */

/* Writes an integer's decimal digits at `out`; returns the length. */
static size_t writeint(char *out, long long v) {
  char tmp[24];
  size_t n = 0;
  unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
  do {
    tmp[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0);
  size_t len = 0;
  if (v < 0) out[len++] = '-';
  while (n > 0) out[len++] = tmp[--n];
  return len;
}

static const double pow10s[] = {1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8};

/* A double exactly as "%.14g" writes it. Fast paths, each giving the same text:
 * integral values below 1e14 are their digits; a value that is the closest double to a
 * decimal m / 10^k with at most 14 significant digits and 1e-4 <= |x| (so "%g" writes it
 * in fixed notation, and rounding to 14 digits gives that decimal) is written from m.
 * Anything else goes to snprintf. */
static size_t writedouble(char *out, double x) {
  double a = fabs(x);
  if (a < 1e14 && x == floor(x)) {
    if (x == 0) return signbit(x) ? (memcpy(out, "-0", 2), 2) : (out[0] = '0', 1);
    return writeint(out, (long long)x);
  }
  if (a >= 1e-4 && a < 1e9) {
    for (int k = 1; k <= 8; k++) {
      double m = a * pow10s[k];
      if (m >= 1e14) break;
      double r = floor(m + 0.5);
      if (r / pow10s[k] != a) continue;
      long long digits = (long long)r;
      char tmp[24];
      size_t n = writeint(tmp, digits);
      size_t len = 0;
      if (x < 0) out[len++] = '-';
      if (n <= (size_t)k) {  /* 0.0ddd */
        out[len++] = '0';
        out[len++] = '.';
        for (size_t z = n; z < (size_t)k; z++) out[len++] = '0';
        memcpy(out + len, tmp, n);
        return len + n;
      }
      memcpy(out + len, tmp, n - k);
      len += n - k;
      out[len++] = '.';
      memcpy(out + len, tmp + n - k, k);
      return len + k;
    }
  }
  int len = snprintf(out, 32, "%.14g", x);
  for (int i = 0; i < len; i++) {
    if (out[i] == ',') out[i] = '.';  /* a locale's decimal comma */
  }
  return len > 0 ? (size_t)len : 0;
}

static int number(Enc *e, int idx) {
  if (!reserve(e, 32)) return 0;
  if (lua_isinteger(e->L, idx)) {
    e->n += writeint(e->p + e->n, (long long)lua_tointeger(e->L, idx));
    return 1;
  }
  double x = lua_tonumber(e->L, idx);
  if (isnan(x) || isinf(x)) return fail(e, LUA_TNUMBER, "must not be NaN or Inf");
  e->n += writedouble(e->p + e->n, x);
  return 1;
}

/* ---- strings ------------------------------------------------------------------------ */

/* cjson's escapes: control characters, '"', '\\', '/' and DEL, the short ones padded, so
 * that one fixed-size copy of 6 bytes writes any of them. */
static const char escapes[128][7] = {
  "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
  "\\b", "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f",
  "\\u0010", "\\u0011", "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017",
  "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
  ['"'] = "\\\"", ['/'] = "\\/", ['\\'] = "\\\\", [127] = "\\u007f"};

/* The length of each byte's escape, 0 for a byte written as it is: one load per byte on
 * the common path. (encodeWritesWhatCjsonWrites compares all 256 bytes with cjson.) */
static const unsigned char escapelen[256] = {
  6, 6, 6, 6, 6, 6, 6, 6, 2, 2, 2, 6, 2, 2, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6,
  ['"'] = 2, ['/'] = 2, ['\\'] = 2, [127] = 6};

/* Writes the escaped text of s[0 .. len-1] at `out` (room for 6 bytes a byte); returns
 * where it ends. */
static inline char *escape(char *out, const char *s, size_t len) {
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    unsigned n = escapelen[c];
    if (n == 0) {
      *out++ = (char)c;
    } else {
      memcpy(out, escapes[c], 6);  /* c < 128 here; the bytes past n are overwritten next */
      out += n;
    }
  }
  return out;
}

/* Room is reserved for the worst case (every byte a 6-byte escape) a chunk of the
 * string at a time, so that a huge string needs a buffer about its own size, not 6 times
 * it; a short one (nearly all) is a single chunk. */
static int string(Enc *e, const char *s, size_t len) {
  size_t chunk = len < STRING_CHUNK ? len : STRING_CHUNK;
  if (!reserve(e, chunk * 6 + 2)) return 0;
  char *out = e->p + e->n;
  *out++ = '"';
  out = escape(out, s, chunk);
  for (size_t done = chunk; done < len; done += chunk) {
    e->n = (size_t)(out - e->p);
    chunk = len - done < STRING_CHUNK ? len - done : STRING_CHUNK;
    if (!reserve(e, chunk * 6 + 1)) return 0;
    out = escape(e->p + e->n, s + done, chunk);
  }
  *out++ = '"';
  e->n = (size_t)(out - e->p);
  return 1;
}

/* ---- tables ------------------------------------------------------------------------- */

static int value(Enc *e, int idx, int depth);

/* cjson's array test: every key a positive integer. Returns 1 for an array whose
 * largest index is *max (0: the table is empty), 0 for an object, -1 for an array too
 * sparse to write (an error, as in cjson). */
static int arraylength(Enc *e, int idx, long long *max) {
  lua_State *L = e->L;
  long long items = 0;
  *max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    if (lua_type(L, -2) == LUA_TNUMBER) {
      double k = lua_tonumber(L, -2);
      if (k >= 1 && floor(k) == k && k < 9.2e18) {
        if ((long long)k > *max) *max = (long long)k;
        items++;
        lua_pop(L, 1);
        continue;
      }
    }
    lua_pop(L, 2);
    return 0;
  }
  if (*max > items * SPARSE_RATIO && *max > SPARSE_SAFE) return fail(e, LUA_TTABLE, "excessively sparse array") - 1;
  return 1;
}

static int ismarkedarray(Enc *e, int idx) {
  if (e->info->jsonarraymt == NULL || !lua_getmetatable(e->L, idx)) return 0;
  int marked = lua_topointer(e->L, -1) == e->info->jsonarraymt;
  lua_pop(e->L, 1);
  return marked;
}

/* On failure the stack is left as it is: sl_json_encode restores it. */
static int table(Enc *e, int idx, int depth) {
  lua_State *L = e->L;
  if (depth > MAX_DEPTH) {
    e->depth = depth;
    return 0;
  }
  if (!lua_checkstack(L, 4)) return fail(e, LUA_TTABLE, "nesting too deep for the Lua stack");
  long long max;
  int kind = arraylength(e, idx, &max);
  if (kind < 0) return 0;
  if (kind == 1 && max > 0) {
    if (!put(e, "[", 1)) return 0;
    for (long long i = 1; i <= max; i++) {
      if (i > 1 && !put(e, ",", 1)) return 0;
      lua_rawgeti(L, idx, (lua_Integer)i);
      if (!value(e, lua_gettop(L), depth)) return 0;
      lua_pop(L, 1);
    }
    return put(e, "]", 1);
  }
  if (kind == 1 && ismarkedarray(e, idx)) return put(e, "[]", 2);
  if (!put(e, "{", 1)) return 0;
  int first = 1;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    if (!first && !put(e, ",", 1)) return 0;
    first = 0;
    int kt = lua_type(L, -2);
    if (kt == LUA_TSTRING) {
      size_t len;
      const char *k = lua_tolstring(L, -2, &len);
      if (!string(e, k, len)) return 0;
    } else if (kt == LUA_TNUMBER) {
      if (!put(e, "\"", 1) || !number(e, lua_gettop(L) - 1) || !put(e, "\"", 1)) return 0;
    } else {
      return fail(e, kt, "table key must be a number or string");
    }
    if (!put(e, ":", 1) || !value(e, lua_gettop(L), depth)) return 0;
    lua_pop(L, 1);
  }
  return put(e, "}", 1);
}

static int value(Enc *e, int idx, int depth) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      return put(e, "null", 4);
    case LUA_TBOOLEAN:
      return lua_toboolean(L, idx) ? put(e, "true", 4) : put(e, "false", 5);
    case LUA_TNUMBER:
      return number(e, idx);
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      return string(e, s, len);
    }
    case LUA_TTABLE:
      return table(e, idx, depth + 1);
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) return put(e, "null", 4);  /* json.null */
      /* fall through */
    default:
      return fail(e, lua_type(L, idx), "type not supported");
  }
}

/* Why: the buffer lives as long as the state; without this, one 100 MiB value would
 * keep 100 MiB or more allocated for the rest of a long run. */
void sl_json_trim(sl_StateInfo *info) {
  if (info->jsoncap <= KEEP_MAX) return;
  char *small = (char *)realloc(info->jsonbuf, KEEP_DEFAULT);
  if (small == NULL) return;  /* keep the big one */
  info->jsonbuf = small;
  info->jsoncap = KEEP_DEFAULT;
}

int sl_json_encode(lua_State *L, int idx) {
  sl_StateInfo *info = sl_info(L);
  idx = lua_absindex(L, idx);
  Enc e = {L, info, info->jsonbuf, 0, info->jsoncap, NULL, LUA_TNONE, 0};
  int top = lua_gettop(L);
  int ok = value(&e, idx, 0);
  lua_settop(L, top);
  if (ok) {
    lua_pushlstring(L, e.p, e.n);
    /* After the copy, and from `info`: the push may have run a finalizer that used the
     * codec (and the buffer) itself. */
    sl_json_trim(info);
    return 1;
  }
  sl_json_trim(info);
  if (e.depth != 0) {
    lua_pushfstring(L, "Cannot serialise, excessive nesting (%d)", e.depth);
  } else {
    const char *type = e.errtype == LUA_TNONE ? "value" : lua_typename(L, e.errtype);
    lua_pushfstring(L, "Cannot serialise %s: %s", type, e.error != NULL ? e.error : "error");
  }
  return 0;
}

/* json.encode(value): raises cjson's message, positioned at the caller. */
static int encode(lua_State *L) {
  luaL_argcheck(L, lua_gettop(L) == 1, 1, "expected 1 argument");
  if (sl_json_encode(L, 1)) return 1;
  luaL_where(L, 1);
  lua_insert(L, -2);
  lua_concat(L, 2);
  return lua_error(L);
}

void sl_pushjsonencode(lua_State *L) {
  lua_pushcfunction(L, encode);
}
