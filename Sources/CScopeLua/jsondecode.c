/*
 * json.decode. Replaces lua-cjson's decoder, which measured as 40% of an analytics
 * event's cost once encoding was fast: cjson grows every table key by key (rehashing at
 * 1, 2, 4 and 8 keys), parses every number with strtod, and cannot mark empty arrays,
 * so the runtime rescanned the text for them. Here a container's members are parsed
 * onto the Lua stack first and the table is created at its final size; integers are
 * read digit by digit (and become Lua integers); decimals take the exact
 * one-division path when it is exact, strtod otherwise; `[]` becomes an empty table
 * marked with json.array_mt as it is read.
 *
 * It accepts what cjson 2.1 accepts and rejects what it rejects, with cjson's messages
 * ("Expected value but found T_END at character 6"); the tests compare the two. One
 * deliberate difference: numbers JSON does not allow (leading zeros, hex, '+', inf, nan),
 * which cjson 2.1 lets through by default, are errors ("invalid number" / "invalid
 * token"), so such a line is rejected rather than read as something it does not say.
 */
#include "cscopelua.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { MAX_DEPTH = 1000, PENDING = 32 };

typedef enum {
  T_OBJ_BEGIN, T_OBJ_END, T_ARR_BEGIN, T_ARR_END, T_STRING, T_NUMBER, T_BOOLEAN, T_NULL,
  T_COLON, T_COMMA, T_END, T_WHITESPACE, T_ERROR, T_UNKNOWN
} TokenType;

static const char *const tokennames[] = {
  "T_OBJ_BEGIN", "T_OBJ_END", "T_ARR_BEGIN", "T_ARR_END", "T_STRING", "T_NUMBER", "T_BOOLEAN",
  "T_NULL", "T_COLON", "T_COMMA", "T_END", "T_WHITESPACE", "T_ERROR", "T_UNKNOWN"};

typedef struct {
  TokenType type;
  size_t index;          /* 0-based position (of the problem, for T_ERROR) */
  const char *error;     /* T_ERROR: what is wrong */
  const char *str;       /* T_STRING: the text (in the input, or in the scratch buffer) */
  size_t len;
  int isint;             /* T_NUMBER */
  lua_Integer i;
  double d;
  int boolean;           /* T_BOOLEAN */
} Token;

typedef struct {
  lua_State *L;
  sl_StateInfo *info;
  const char *data, *p;
  int depth;
  int failed;            /* the message is on the stack */
} Dec;

/* ---- errors ------------------------------------------------------------------------- */

/* Pushes cjson's message. The stack above the decoder's base is dropped by the caller. */
static int expected(Dec *d, const char *what, const Token *t) {
  const char *found = t->type == T_ERROR ? t->error : tokennames[t->type];
  lua_pushfstring(d->L, "Expected %s but found %s at character %I", what, found, (lua_Integer)t->index + 1);
  d->failed = 1;
  return 0;
}

static int seterror(Dec *d, Token *t, const char *message) {
  t->type = T_ERROR;
  t->index = (size_t)(d->p - d->data);
  t->error = message;
  return 0;
}

/* ---- strings ------------------------------------------------------------------------ */

/* Makes the unescaping buffer at least `need` bytes: the state's reusable JSON buffer,
 * shared with json.encode, which sl_json_trim shrinks back after a call that grew it. */
static int scratch(Dec *d, size_t need) {
  if (need <= d->info->jsoncap) return 1;
  size_t cap = d->info->jsoncap < 256 ? 256 : d->info->jsoncap;
  while (cap < need) cap *= 2;
  char *grown = (char *)realloc(d->info->jsonbuf, cap);
  if (grown == NULL) return 0;
  d->info->jsonbuf = grown;
  d->info->jsoncap = cap;
  return 1;
}

static int hexdigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = (char)(c | 0x20);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

static long hex4(const char *p) {
  long v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexdigit(p[i]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

static size_t utf8(char *out, unsigned long c) {
  if (c < 0x80) { out[0] = (char)c; return 1; }
  if (c < 0x800) { out[0] = (char)(0xC0 | (c >> 6)); out[1] = (char)(0x80 | (c & 0x3F)); return 2; }
  if (c < 0x10000) {
    out[0] = (char)(0xE0 | (c >> 12)); out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[2] = (char)(0x80 | (c & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (c >> 18)); out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((c >> 6) & 0x3F)); out[3] = (char)(0x80 | (c & 0x3F));
  return 4;
}

/* The rest of a string token from its first escape (at `q`; the string starts at
 * `start`), unescaped into the scratch buffer. The buffer grows with what has been
 * written (doubling), never with what is left of the input: sizing it for the rest of
 * the input meant a strlen of the rest for every escaped string, quadratic on a long line
 * of them (issue 9, item 4). Out of line: it keeps the tokenizer's common path small. */
static __attribute__((noinline)) int escapedstring(Dec *d, Token *t, const char *start, const char *q) {
  size_t n = (size_t)(q - start);
  if (!scratch(d, n + 64)) {
    d->p = start;
    return seterror(d, t, "not enough memory");
  }
  char *out = d->info->jsonbuf;
  size_t room = d->info->jsoncap - 4;  /* below this, one more escape (4 bytes at most) fits */
  memcpy(out, start, n);
  d->p = q;
  for (;;) {
    if (n >= room) {
      if (!scratch(d, n + 5)) {
        d->p = start;
        return seterror(d, t, "not enough memory");
      }
      out = d->info->jsonbuf;
      room = d->info->jsoncap - 4;
    }
    char c = *d->p;
    if (c == '"') break;
    if (c == '\0') return seterror(d, t, "unexpected end of string");
    if (c != '\\') {
      out[n++] = c;
      d->p++;
      continue;
    }
    char e = d->p[1];
    switch (e) {
      case '"': case '\\': case '/': out[n++] = e; break;
      case 'b': out[n++] = '\b'; break;
      case 'f': out[n++] = '\f'; break;
      case 'n': out[n++] = '\n'; break;
      case 'r': out[n++] = '\r'; break;
      case 't': out[n++] = '\t'; break;
      case 'u': {
        long c1 = hex4(d->p + 2);
        if (c1 < 0 || (c1 >= 0xDC00 && c1 <= 0xDFFF)) return seterror(d, t, "invalid unicode escape code");
        unsigned long code = (unsigned long)c1;
        int length = 6;
        if (c1 >= 0xD800 && c1 <= 0xDBFF) {  /* a high surrogate needs its low half */
          if (d->p[6] != '\\' || d->p[7] != 'u') return seterror(d, t, "invalid unicode escape code");
          long c2 = hex4(d->p + 8);
          if (c2 < 0xDC00 || c2 > 0xDFFF) return seterror(d, t, "invalid unicode escape code");
          code = 0x10000 + (((unsigned long)c1 & 0x3FF) << 10) + ((unsigned long)c2 & 0x3FF);
          length = 12;
        }
        n += utf8(out + n, code);
        d->p += length;
        continue;
      }
      default:
        return seterror(d, t, "invalid escape code");
    }
    d->p += 2;
  }
  d->p++;
  t->type = T_STRING;
  t->str = out;
  t->len = n;
  return 1;
}

/* A string token. Without escapes (nearly all) it points into the input; with them it
 * is unescaped into the scratch buffer. */
static int stringtoken(Dec *d, Token *t) {
  const char *start = ++d->p;
  const char *q = start;
  while (*q != '"' && *q != '\\' && *q != '\0') q++;
  if (*q != '"') return escapedstring(d, t, start, q);
  t->type = T_STRING;
  t->str = start;
  t->len = (size_t)(q - start);
  d->p = q + 1;
  return 1;
}

/* ---- numbers ------------------------------------------------------------------------ */

static const double exact10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* cjson's rule before strtod: no leading '+', zeros, hex, inf or nan. */
static int invalidnumber(const char *p) {
  if (*p == '-') p++;
  if (*p == '0') return p[1] == 'x' || p[1] == 'X' || (p[1] >= '0' && p[1] <= '9');
  if (*p >= '0' && *p <= '9') return 0;
  return strncasecmp(p, "inf", 3) == 0 || strncasecmp(p, "nan", 3) == 0;
}

/* What strtod reads from here (a decimal: cjson hands numbers to strtod), as an integer
 * when it has neither fraction nor exponent and fits. */
static int numbertoken(Dec *d, Token *t) {
  const char *p = d->p;
  if (invalidnumber(p)) return seterror(d, t, "invalid number");
  int neg = *p == '-';
  if (neg) p++;
  const char *digits = p;
  unsigned long long m = 0;
  size_t nd = 0, nfrac = 0;  /* digits, and those after the point (a line can hold 2^31) */
  int point = 0;
  while (*p >= '0' && *p <= '9') {
    if (nd < 19) m = m * 10 + (unsigned long long)(*p - '0');
    nd++;
    p++;
  }
  if (*p == '.') {
    point = 1;
    p++;
    while (*p >= '0' && *p <= '9') {
      if (nd < 19) m = m * 10 + (unsigned long long)(*p - '0');
      nd++;
      nfrac++;
      p++;
    }
  }
  if (p == digits + point) return seterror(d, t, "invalid number");  /* no digits */
  int exp = 0, hasexp = 0;
  if (*p == 'e' || *p == 'E') {
    const char *e = p + 1;
    int eneg = 0;
    if (*e == '+' || *e == '-') eneg = *e++ == '-';
    if (*e >= '0' && *e <= '9') {
      hasexp = 1;
      while (*e >= '0' && *e <= '9') {
        if (exp < 10000) exp = exp * 10 + (*e - '0');
        e++;
      }
      if (eneg) exp = -exp;
      p = e;
    }
  }
  t->type = T_NUMBER;
  /* 19 digits fit m; an integer fits lua_Integer up to 2^63 - 1 (2^63 when negative). */
  if (!point && !hasexp && nd <= 19 && !(neg && m == 0) && m <= (neg ? 9223372036854775808ull : 9223372036854775807ull)) {
    t->isint = 1;
    t->i = (lua_Integer)(neg ? 0ull - m : m);
  } else {
    t->isint = 0;
    int scale = nd <= 15 ? exp - (int)nfrac : 0;
    if (nd <= 15 && scale >= -22 && scale <= 22) {  /* one exact operation, rounded once */
      double v = (double)m;
      v = scale < 0 ? v / exact10[-scale] : v * exact10[scale];
      t->d = neg ? -v : v;
    } else {
      char *end;
      t->d = strtod(d->p, &end);
      p = end;
    }
  }
  d->p = p;
  return 1;
}

/* ---- tokens and values -------------------------------------------------------------- */

/* The tokenizer: the decoder's hottest code. Aligned to 64 bytes so that its layout does
 * not depend on how much code is linked before it: on CPUs with the JCC erratum
 * (Skylake and later Intel cores), a hot branch straddling a 32-byte boundary cannot
 * run from the micro-op cache, and edits elsewhere in CScopeLua moved this function's
 * whitespace loop across one, which cost 10% of json_roundtrip.lua's time. */
static __attribute__((aligned(64))) void next(Dec *d, Token *t) {
  if ((unsigned char)*d->p <= ' ') {  /* whitespace: never in compact JSON */
    const char *p = d->p;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    d->p = p;
  }
  t->index = (size_t)(d->p - d->data);
  char c = *d->p;
  switch (c) {
    case '{': t->type = T_OBJ_BEGIN; d->p++; return;
    case '}': t->type = T_OBJ_END; d->p++; return;
    case '[': t->type = T_ARR_BEGIN; d->p++; return;
    case ']': t->type = T_ARR_END; d->p++; return;
    case ',': t->type = T_COMMA; d->p++; return;
    case ':': t->type = T_COLON; d->p++; return;
    case '\0': t->type = T_END; return;
    case '"': stringtoken(d, t); return;
    default: break;
  }
  if (c == '-' || (c >= '0' && c <= '9')) {
    numbertoken(d, t);
  } else if (strncmp(d->p, "true", 4) == 0) {
    t->type = T_BOOLEAN; t->boolean = 1; d->p += 4;
  } else if (strncmp(d->p, "false", 5) == 0) {
    t->type = T_BOOLEAN; t->boolean = 0; d->p += 5;
  } else if (strncmp(d->p, "null", 4) == 0) {
    t->type = T_NULL; d->p += 4;
  } else {
    seterror(d, t, "invalid token");
  }
}

static int value(Dec *d, Token *t);

static int descend(Dec *d) {
  d->depth++;
  if (d->depth <= MAX_DEPTH && lua_checkstack(d->L, 2 * PENDING + 8)) return 1;
  lua_pushfstring(d->L, "Found too many nested data structures (%d) at character %I", d->depth,
                  (lua_Integer)(d->p - d->data));
  d->failed = 1;
  return 0;
}

/* Creates a table sized for `size` keys, moves the `n` key/value pairs waiting on top
 * of the stack into it in document order (so that of two equal keys the later wins, as
 * in cjson), and leaves it in their place. */
static void flushpairs(lua_State *L, int n, int size) {
  lua_createtable(L, 0, size);
  int t = lua_gettop(L);
  int first = t - 2 * n;
  for (int i = first; i < t; i += 2) {
    lua_pushvalue(L, i);
    lua_pushvalue(L, i + 1);
    lua_rawset(L, t);
  }
  if (n > 0) {
    lua_replace(L, first);
    lua_settop(L, first);
  }
}

/* The same for `n` array elements waiting on top: they become t[first .. first+n-1]. */
static void flushvalues(lua_State *L, int n, lua_Integer first, int size) {
  lua_createtable(L, size, 0);
  lua_insert(L, -n - 1);
  int t = lua_gettop(L) - n;
  for (int k = n; k > 0; k--) lua_rawseti(L, t, first + k - 1);
}

/* Members are parsed onto the stack and the table made at its final size; an object or
 * array with more than PENDING members gets its table then, and the rest go in as read. */
static int object(Dec *d) {
  lua_State *L = d->L;
  if (!descend(d)) return 0;
  Token t;
  next(d, &t);
  int pending = 0, table = 0;  /* table: created (on the stack below new members) */
  if (t.type != T_OBJ_END) {
    for (;;) {
      if (t.type != T_STRING) return expected(d, "object key string", &t);
      lua_pushlstring(L, t.str, t.len);
      next(d, &t);
      if (t.type != T_COLON) return expected(d, "colon", &t);
      next(d, &t);
      if (!value(d, &t)) return 0;
      if (table) {
        lua_rawset(L, -3);
      } else if (++pending == PENDING) {
        flushpairs(L, pending, 2 * PENDING);
        table = 1;
      }
      next(d, &t);
      if (t.type == T_OBJ_END) break;
      if (t.type != T_COMMA) return expected(d, "comma or object end", &t);
      next(d, &t);
    }
  }
  if (!table) flushpairs(L, pending, pending);
  d->depth--;
  return 1;
}

static int array(Dec *d) {
  lua_State *L = d->L;
  if (!descend(d)) return 0;
  Token t;
  next(d, &t);
  if (t.type == T_ARR_END) {
    lua_createtable(L, 0, 0);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, d->info->jsonarraymt) == LUA_TTABLE) {
      lua_setmetatable(L, -2);  /* json.array_mt: encodes back as [] */
    } else {
      lua_pop(L, 1);
    }
    d->depth--;
    return 1;
  }
  int pending = 0, table = 0;
  lua_Integer count = 0;
  for (;;) {
    if (!value(d, &t)) return 0;
    count++;
    if (table) {
      lua_rawseti(L, -2, count);
    } else if (++pending == PENDING) {
      flushvalues(L, pending, 1, 2 * PENDING);
      table = 1;
    }
    next(d, &t);
    if (t.type == T_ARR_END) break;
    if (t.type != T_COMMA) return expected(d, "comma or array end", &t);
    next(d, &t);
  }
  if (!table) flushvalues(L, pending, 1, pending);
  d->depth--;
  return 1;
}

static int value(Dec *d, Token *t) {
  lua_State *L = d->L;
  switch (t->type) {
    case T_STRING: lua_pushlstring(L, t->str, t->len); return 1;
    case T_NUMBER:
      if (t->isint) lua_pushinteger(L, t->i); else lua_pushnumber(L, t->d);
      return 1;
    case T_BOOLEAN: lua_pushboolean(L, t->boolean); return 1;
    case T_NULL: lua_pushlightuserdata(L, NULL); return 1;
    case T_OBJ_BEGIN: return object(d);
    case T_ARR_BEGIN: return array(d);
    default: return expected(d, "value", t);
  }
}

int sl_json_decode(lua_State *L, const char *s, size_t len) {
  int top = lua_gettop(L);
  if (len >= 2 && (s[0] == '\0' || s[1] == '\0')) {
    lua_pushstring(L, "JSON parser does not support UTF-16 or UTF-32");
    return 0;
  }
  Dec d = {L, sl_info(L), s, s, 0, 0};
  Token t;
  next(&d, &t);
  int ok = value(&d, &t);
  if (ok) {
    next(&d, &t);
    ok = t.type == T_END;
    if (!ok) expected(&d, "the end", &t);
  }
  sl_json_trim(d.info);  /* a huge escaped string may have grown the scratch buffer */
  if (ok) return 1;
  /* The message is on top; drop whatever the parse left below it. */
  if (lua_gettop(L) > top + 1) lua_replace(L, top + 1);
  lua_settop(L, top + 1);
  return 0;
}

/* json.decode(text): raises cjson's message, positioned at the caller. */
static int decode(lua_State *L) {
  size_t len;
  if (lua_type(L, 1) != LUA_TSTRING) luaL_typeerror(L, 1, "string");
  const char *s = lua_tolstring(L, 1, &len);
  if (sl_json_decode(L, s, len)) return 1;
  luaL_where(L, 1);
  lua_insert(L, -2);
  lua_concat(L, 2);
  return lua_error(L);
}

void sl_pushjsondecode(lua_State *L) {
  lua_pushcfunction(L, decode);
}
