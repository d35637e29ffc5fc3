/*
 * Partition keys for `--workers N` (ARCHITECTURE.md, "Partition keys"): the dispatcher
 * reads raw input lines on the main thread and must send every event with the same
 * `partition_by` value to the same worker, without decoding the event (the worker
 * decodes it once, into its own Lua state). This file finds the value at a path of
 * object keys in one pass over the line's bytes and hashes its canonical form, with no
 * Lua state and no allocation.
 *
 * The grammar is jsondecode.c's, exactly: what it rejects (short of running out of
 * memory) is SL_KEY_INVALID here, with its quirks ("-.5" is a number, "1." too; leading
 * zeros, hex, '+', inf and nan are not; the text ends at the first NUL byte, as the
 * decoder's C string does; at most 1000 nested objects and arrays). Of two equal keys in
 * one object the later wins, as in the decoder. The runner's own checks on a line (valid UTF-8, '{' first) are not repeated:
 * a line failing them still gets its key, and its worker rejects it.
 *
 * The canonical form, so that two lines whose decoded values at the path are equal in
 * Lua (`==`, which is also what makes them the same table key) get the same hash:
 *  - a string: its bytes once unescaped ("a" and "\u0061" are one key; a surrogate pair
 *    is the 4-byte UTF-8 of its code point, as the decoder writes it);
 *  - a number: its value as the decoder makes it (an integer, or the correctly rounded
 *    double); a double with an integral value in the integer range is hashed as that
 *    integer, so 1, 1.0, 1e0 and 10e-1 are one key (Lua: 1 == 1.0) and -0 is 0, while
 *    9007199254740993 and 9007199254740993.0 (which rounds to ...992) are two;
 *  - true, false and null: their type (the string "true" is another key);
 *  - an object or an array: its text as written, from the bracket to its match, so
 *    {"a":1} and { "a": 1 } are two keys (a canonical form would need the members
 *    sorted, which needs memory).
 * A key's hash is the same in every run and process (no seed).
 */
#include "cscopelua.h"

#include <stdlib.h>
#include <string.h>

/* jsondecode.c's: a line nested deeper is invalid there, so here too. Top-level object
 * is depth 1. */
enum { MAX_DEPTH = 1000 };

/* ---- hashing ------------------------------------------------------------------------ */

/* What a hash starts with: the type of the value, so that "1", 1 and the same bytes as
 * raw text differ. Integral doubles use TAG_INTEGER. */
enum { TAG_STRING = 1, TAG_INTEGER, TAG_FLOAT, TAG_TRUE, TAG_FALSE, TAG_NULL, TAG_OBJECT, TAG_ARRAY };

static const uint64_t MUL = 0xc6a4a7935bd1e995ull;  /* MurmurHash64A's multiplier */
static const uint64_t SEED = 0x5c09e1ea5c09e1eaull;

/* Why: a string's unescaped bytes arrive in pieces (runs between escapes, then each
 * escape's 1 to 4 bytes), and the hash must not depend on how they were cut: bytes are
 * gathered into little-endian 64-bit words whatever the pieces. */
typedef struct {
  uint64_t h, tail, n;  /* the state, the bytes of an unfinished word, the bytes so far */
} Hash;

/* Why: one 8-byte word into the state (MurmurHash64A's step). */
static inline uint64_t mixword(uint64_t h, uint64_t k) {
  k *= MUL;
  k ^= k >> 47;
  k *= MUL;
  h ^= k;
  return h * MUL;
}

/* Why: the same word on any byte order (the words must not depend on the pieces). */
static inline uint64_t loadle(const unsigned char *b) {
  uint64_t w;
  memcpy(&w, b, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  w = __builtin_bswap64(w);
#endif
  return w;
}

/* Why: every hash starts from the value's type (the tags above). */
static void hashstart(Hash *x, int tag) {
  x->h = SEED ^ ((uint64_t)tag * MUL);
  x->tail = 0;
  x->n = 0;
}

/* Why: the one way bytes enter a hash, whatever their pieces. */
static void hashadd(Hash *x, const unsigned char *b, size_t len) {
  unsigned fill = (unsigned)(x->n & 7);
  x->n += len;
  if (fill != 0) {
    while (len > 0 && fill < 8) {
      x->tail |= (uint64_t)*b++ << (8 * fill++);
      len--;
    }
    if (fill < 8) return;
    x->h = mixword(x->h, x->tail);
    x->tail = 0;
  }
  for (; len >= 8; b += 8, len -= 8) x->h = mixword(x->h, loadle(b));
  for (unsigned i = 0; i < len; i++) x->tail |= (uint64_t)b[i] << (8 * i);
}

/* Why: the length goes in last (it is not known while a string streams in), then
 * MurmurHash3's finalizer, so that every bit of the result depends on every input bit
 * (the dispatcher takes the hash modulo the number of workers). */
static uint64_t hashend(Hash *x) {
  uint64_t h = x->h;
  if (x->n & 7) h = mixword(h, x->tail);
  h ^= x->n;
  h *= MUL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

/* Why: an integer and a double are hashed as their 8 bytes, little-endian. */
static uint64_t hashword(int tag, uint64_t w) {
  unsigned char b[8];
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(w >> (8 * i));
  Hash x;
  hashstart(&x, tag);
  hashadd(&x, b, 8);
  return hashend(&x);
}

/* Why: a string from Lua (sl_jsonkey_value) and a container's text are hashed whole. */
static uint64_t hashbytes(int tag, const unsigned char *b, size_t len) {
  Hash x;
  hashstart(&x, tag);
  hashadd(&x, b, len);
  return hashend(&x);
}

/* ---- the scanner -------------------------------------------------------------------- */

/* The unread part of the line: [p, end). A NUL byte ends the text as `end` does (the
 * decoder reads a C string), so every test for a byte is made with p < end first and a
 * NUL byte is never one that anything accepts. */
typedef struct {
  const unsigned char *p, *end;
} Scan;

/* Where a string's unescaped bytes go: nowhere (a skipped string: no sink), compared
 * with a path component (a key that may be the next step of the path), or into a hash
 * (the value). */
typedef struct {
  enum { COMPARE, HASH } mode; /* a NULL sink skips */
  const unsigned char *name;  /* COMPARE: the component, its length, how much matched */
  size_t namelen, at;
  int differs;
  Hash hash;                  /* HASH */
} Sink;

/* Why: the decoder's digits, whatever the locale says (isdigit may). */
static inline int isdigit_(unsigned char c) { return c >= '0' && c <= '9'; }

/* Why: the decoder's whitespace, exactly (no \f or \v). */
static inline void skipspace(Scan *s) {
  while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

/* Why: one piece of a string's unescaped bytes to where they go. Inlined, and keys are
 * compared byte by byte (most differ in length or at once): a memcmp call per key was an
 * eighth of the scan's time on the benchmark events. */
static inline __attribute__((always_inline)) void emit(Sink *o, const unsigned char *b, size_t n) {
  if (o == NULL) return;
  if (o->mode == COMPARE) {
    if (o->differs) return;
    if (n > o->namelen - o->at) {
      o->differs = 1;
      return;
    }
    const unsigned char *name = o->name + o->at;
    for (size_t i = 0; i < n; i++) {
      if (name[i] != b[i]) {
        o->differs = 1;
        return;
      }
    }
    o->at += n;
  } else {
    hashadd(&o->hash, b, n);
  }
}

/* Why: jsondecode.c's hexdigit: a \u escape's digits, either case. */
static int hexdigit(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c |= 0x20;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* Why: jsondecode.c's hex4, bounded: four hex digits at p (the caller checked that four
 * bytes are there), or -1. */
static long hex4(const unsigned char *p) {
  long v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexdigit(p[i]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

/* Why: a \u escape's code point as the decoder writes it (jsondecode.c's utf8). */
static size_t utf8(unsigned char *out, unsigned long c) {
  if (c < 0x80) { out[0] = (unsigned char)c; return 1; }
  if (c < 0x800) { out[0] = (unsigned char)(0xC0 | (c >> 6)); out[1] = (unsigned char)(0x80 | (c & 0x3F)); return 2; }
  if (c < 0x10000) {
    out[0] = (unsigned char)(0xE0 | (c >> 12)); out[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    out[2] = (unsigned char)(0x80 | (c & 0x3F));
    return 3;
  }
  out[0] = (unsigned char)(0xF0 | (c >> 18)); out[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
  out[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F)); out[3] = (unsigned char)(0x80 | (c & 0x3F));
  return 4;
}

/* Any byte of w zero (exact: no false positives for the word as a whole). */
#define HASZERO(w) (((w) - 0x0101010101010101ull) & ~(w) & 0x8080808080808080ull)

/* Why: a string's plain bytes are most of a line; they are passed over eight at a time
 * up to the first '"', '\\' or NUL (the only bytes a string treats specially: any other,
 * control characters and invalid UTF-8 included, is the decoder's too). */
static inline const unsigned char *plainrun(const unsigned char *p, const unsigned char *end) {
  while (end - p >= 8) {
    uint64_t w = loadle(p);
    uint64_t q = w ^ 0x2222222222222222ull, b = w ^ 0x5c5c5c5c5c5c5c5cull;
    if (HASZERO(q) | HASZERO(b) | HASZERO(w)) break;
    p += 8;
  }
  while (p < end && *p != '"' && *p != '\\' && *p != 0) p++;
  return p;
}

/* Why: keys and string values, read as the decoder reads them. A string at s->p (its
 * opening quote): its unescaped bytes go to `o`. Returns 0 where the decoder fails: no
 * closing quote before the end or a NUL, an unknown escape, a \u escape without four
 * hex digits, a lone low surrogate, a high one not followed by \u and a low one. */
static int string(Scan *s, Sink *o) {
  const unsigned char *p = s->p + 1, *end = s->end;
  for (;;) {
    const unsigned char *run = p;
    p = plainrun(p, end);
    if (p >= end || *p == 0) return 0;
    if (p > run) emit(o, run, (size_t)(p - run));
    if (*p == '"') break;
    /* an escape */
    if (end - p < 2) return 0;
    unsigned char out[4];
    size_t n = 1;
    switch (p[1]) {
      case '"': case '\\': case '/': out[0] = p[1]; break;
      case 'b': out[0] = '\b'; break;
      case 'f': out[0] = '\f'; break;
      case 'n': out[0] = '\n'; break;
      case 'r': out[0] = '\r'; break;
      case 't': out[0] = '\t'; break;
      case 'u': {
        if (end - p < 6) return 0;
        long c1 = hex4(p + 2);
        if (c1 < 0 || (c1 >= 0xDC00 && c1 <= 0xDFFF)) return 0;
        unsigned long code = (unsigned long)c1;
        if (c1 >= 0xD800 && c1 <= 0xDBFF) {  /* a high surrogate needs its low half */
          if (end - p < 12 || p[6] != '\\' || p[7] != 'u') return 0;
          long c2 = hex4(p + 8);
          if (c2 < 0xDC00 || c2 > 0xDFFF) return 0;
          code = 0x10000 + (((unsigned long)c1 & 0x3FF) << 10) + ((unsigned long)c2 & 0x3FF);
          p += 6;
        }
        n = utf8(out, code);
        p += 4;
        break;
      }
      default:
        return 0;
    }
    emit(o, out, n);
    p += 2;
  }
  s->p = p + 1;
  return 1;
}

/* A number's value as the decoder makes it. */
typedef struct {
  int isint;
  int64_t i;
  double d;
} Num;

static const double exact10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Significant digits kept for strtod: the correctly rounded double of any decimal is
 * decided by its first 768 significant digits and whether any digit after them is not
 * zero (the halfway points between doubles have at most 767). */
enum { SIGDIGITS = 800 };

/* Why: the decoder hands a number it cannot compute exactly to strtod on the text in
 * place, which a line without a NUL after it does not allow (strtod would read on), and
 * a number may be millions of digits long. The same value comes from strtod on a short
 * copy: at most SIGDIGITS significant digits, a '1' after them when a dropped digit is
 * not zero (it moves the value off a halfway point the way the dropped digits did), no
 * decimal point (the locale's could differ) and the exponent adjusted (clamped: beyond
 * ±100000 the result is 0 or inf either way). `digits` to `mend` is the mantissa
 * (digits and at most one '.'), `nint` its digits before the point. */
static double slowfloat(const unsigned char *digits, const unsigned char *mend, size_t nint, int neg, int64_t exp) {
  char buf[SIGDIGITS + 32];
  size_t n = 0, kept = 0, zeros = 0;
  if (neg) buf[n++] = '-';
  for (const unsigned char *q = digits; q < mend; q++) {
    if (*q == '.') continue;
    if (kept == 0 && *q == '0') {
      zeros++;
    } else if (kept < SIGDIGITS) {
      buf[n++] = (char)*q;
      kept++;
    } else if (*q != '0') {
      buf[n++] = '1';
      kept++;
      break;
    }
  }
  if (kept == 0) return neg ? -0.0 : 0.0;
  /* the value is 0.(kept digits) x 10^e10, or (kept digits) x 10^(e10 - kept) */
  int64_t e10 = (int64_t)nint - (int64_t)zeros + exp;
  if (e10 > 100000) e10 = 100000;
  if (e10 < -100000) e10 = -100000;
  e10 -= (int64_t)kept;
  buf[n++] = 'e';
  if (e10 < 0) {
    buf[n++] = '-';
    e10 = -e10;
  }
  char rev[24];
  size_t r = 0;
  do {
    rev[r++] = (char)('0' + e10 % 10);
    e10 /= 10;
  } while (e10 != 0);
  while (r > 0) buf[n++] = rev[--r];
  buf[n] = '\0';
  return strtod(buf, NULL);
}

/* Why: a number is validated, and its value computed when it is the key. A number at
 * s->p (a '-' or a digit), as jsondecode.c's numbertoken reads it: its value into `out`
 * unless NULL. Returns 0 where the decoder fails: a leading zero followed by a digit or
 * x, no digit in the mantissa ("-", "-.", "-e1"). Like the decoder, it stops before an
 * 'e' with no digit after it (the 'e' then fails as the next token). */
static int number(Scan *s, Num *out) {
  const unsigned char *p = s->p, *end = s->end;
  int neg = *p == '-';
  if (neg) p++;
  if (p < end && *p == '0' && end - p >= 2 && (p[1] == 'x' || p[1] == 'X' || isdigit_(p[1]))) return 0;
  /* After a '-', "inf" and "nan" are errors in the decoder too: no digit below. */
  const unsigned char *digits = p;
  uint64_t m = 0;
  size_t nd = 0, nfrac = 0;
  int point = 0;
  while (p < end && isdigit_(*p)) {
    if (nd < 19) m = m * 10 + (uint64_t)(*p - '0');
    nd++;
    p++;
  }
  if (p < end && *p == '.') {
    point = 1;
    p++;
    while (p < end && isdigit_(*p)) {
      if (nd < 19) m = m * 10 + (uint64_t)(*p - '0');
      nd++;
      nfrac++;
      p++;
    }
  }
  if (p == digits + point) return 0;
  const unsigned char *mend = p;
  int64_t exp = 0;
  int hasexp = 0;
  if (p < end && (*p == 'e' || *p == 'E')) {
    const unsigned char *e = p + 1;
    int eneg = 0;
    if (e < end && (*e == '+' || *e == '-')) eneg = *e++ == '-';
    if (e < end && isdigit_(*e)) {
      hasexp = 1;
      while (e < end && isdigit_(*e)) {
        if (exp < 1000000000) exp = exp * 10 + (*e - '0');  /* saturates: beyond, inf or 0 */
        e++;
      }
      if (eneg) exp = -exp;
      p = e;
    }
  }
  s->p = p;
  if (out == NULL) return 1;
  if (!point && !hasexp && nd <= 19 && !(neg && m == 0) && m <= (neg ? 9223372036854775808ull : 9223372036854775807ull)) {
    out->isint = 1;
    out->i = (int64_t)(neg ? 0ull - m : m);
    return 1;
  }
  out->isint = 0;
  int64_t scale = nd <= 15 ? exp - (int64_t)nfrac : 0;
  if (nd <= 15 && scale >= -22 && scale <= 22) {  /* the decoder's one exact operation */
    double v = (double)m;
    v = scale < 0 ? v / exact10[-scale] : v * exact10[scale];
    out->d = neg ? -v : v;
  } else {
    out->d = slowfloat(digits, mend, nd - nfrac, neg, exp);
  }
  return 1;
}

/* Why: the canonical rule for numbers (see the top of the file): what Lua's == and its
 * table keys treat as one number is one key. */
static uint64_t numberhash(const Num *n) {
  if (n->isint) return hashword(TAG_INTEGER, (uint64_t)n->i);
  double d = n->d;
  if (d >= -0x1p63 && d < 0x1p63 && (double)(int64_t)d == d) return hashword(TAG_INTEGER, (uint64_t)(int64_t)d);
  uint64_t bits;
  memcpy(&bits, &d, sizeof bits);
  return hashword(TAG_FLOAT, bits);
}

/* Why: a decoded value's key without its text (the fuzz target's oracle for the scanner's
 * own reading of numbers and escapes; a list input, whose events are tables already). */
int sl_jsonkey_value(lua_State *L, int idx, uint64_t *hash) {
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t len;
      const char *str = lua_tolstring(L, idx, &len);
      *hash = hashbytes(TAG_STRING, (const unsigned char *)str, len);
      return 1;
    }
    case LUA_TNUMBER: {
      Num n = {0, 0, 0};
      if (lua_isinteger(L, idx)) {
        n.isint = 1;
        n.i = (int64_t)lua_tointeger(L, idx);
      } else {
        n.d = (double)lua_tonumber(L, idx);
      }
      *hash = numberhash(&n);
      return 1;
    }
    case LUA_TBOOLEAN:
      *hash = hashword(lua_toboolean(L, idx) ? TAG_TRUE : TAG_FALSE, 0);
      return 1;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) != NULL) return 0;
      *hash = hashword(TAG_NULL, 0);
      return 1;
    default:
      return 0;
  }
}

/* Why: the literals, as the decoder compares them: true, false or null at s->p, the
 * bytes alone (what follows them is the next token's business). Returns the tag, or 0. */
static int literal(Scan *s) {
  size_t left = (size_t)(s->end - s->p);
  if (left >= 4 && memcmp(s->p, "true", 4) == 0) { s->p += 4; return TAG_TRUE; }
  if (left >= 5 && memcmp(s->p, "false", 5) == 0) { s->p += 5; return TAG_FALSE; }
  if (left >= 4 && memcmp(s->p, "null", 4) == 0) { s->p += 4; return TAG_NULL; }
  return 0;
}

/* Why: a scalar at the end of the path is read and hashed in one go. Returns 0 for an
 * invalid value; a container is not a scalar (the caller hashes it as text). */
static int scalarhash(Scan *s, uint64_t *hash) {
  unsigned char c = *s->p;
  if (c == '"') {
    Sink o = {.mode = HASH};
    hashstart(&o.hash, TAG_STRING);
    if (!string(s, &o)) return 0;
    *hash = hashend(&o.hash);
    return 1;
  }
  if (c == '-' || isdigit_(c)) {
    Num n;
    if (!number(s, &n)) return 0;
    *hash = numberhash(&n);
    return 1;
  }
  int tag = literal(s);
  if (tag == 0) return 0;
  *hash = hashword(tag, 0);
  return 1;
}

/* Why: the path's components are matched one level at a time; component i is names
 * [ends[i-1], ends[i]). */
static inline const unsigned char *component(const sl_KeyPath *path, size_t i, size_t *len) {
  size_t start = i == 0 ? 0 : path->ends[i - 1];
  *len = path->ends[i] - start;
  return path->names + start;
}

/* The scan, iterative: containers are counted, not recursed into, so the stack use is
 * fixed (a bit per level for array-or-object); each byte is read a bounded number of
 * times. `matched` is how many path components the open objects match: an object at
 * depth d holds a candidate for component d-1 only if matched == d-1, i.e. every object
 * around it is the value of the previous component's key (the latest of equal keys: a
 * later one resets what an earlier one found). */
sl_KeyOutcome sl_jsonkey(const uint8_t *line, size_t len, const sl_KeyPath *path, uint64_t *hash) {
  if (line == NULL || len == 0 || path == NULL || path->count == 0) return SL_KEY_INVALID;
  Scan s = {line, line + len};
  uint64_t arrays[(MAX_DEPTH + 64) / 64] = {0};  /* bit d: the container at depth d is an array */
  size_t depth = 0, matched = 0;
  size_t hashdepth = 0;                         /* a container value being hashed as text ends at this depth */
  const unsigned char *hashfrom = NULL;
  int found = 0, match;
  uint64_t result = 0;
  int isarray;

  skipspace(&s);
  if (s.p >= s.end || *s.p != '{') return SL_KEY_INVALID;

value:  /* s.p at a value, after any whitespace */
  if (s.p >= s.end) return SL_KEY_INVALID;
  switch (*s.p) {
    case '{':
    case '[':
      if (++depth > MAX_DEPTH) return SL_KEY_INVALID;
      isarray = *s.p == '[';
      if (isarray) arrays[depth / 64] |= 1ull << (depth % 64);
      else arrays[depth / 64] &= ~(1ull << (depth % 64));
      s.p++;
      skipspace(&s);
      if (s.p < s.end && *s.p == (isarray ? ']' : '}')) {
        s.p++;
        goto close;
      }
      if (isarray) goto value;
      goto member;
    case '"':
      if (!string(&s, NULL)) return SL_KEY_INVALID;
      break;
    default:
      if (*s.p == '-' || isdigit_(*s.p)) {
        if (!number(&s, NULL)) return SL_KEY_INVALID;
      } else if (literal(&s) == 0) {
        return SL_KEY_INVALID;
      }
      break;
  }

next:  /* after a value in the container at `depth` */
  skipspace(&s);
  if (s.p >= s.end) return SL_KEY_INVALID;
  isarray = (int)((arrays[depth / 64] >> (depth % 64)) & 1);
  if (*s.p == ',') {
    s.p++;
    skipspace(&s);
    if (isarray) goto value;
    goto member;
  }
  if (*s.p != (isarray ? ']' : '}')) return SL_KEY_INVALID;
  s.p++;

close:  /* the container at `depth` has just ended */
  if (depth == hashdepth) {
    int tag = (arrays[depth / 64] >> (depth % 64)) & 1 ? TAG_ARRAY : TAG_OBJECT;
    result = hashbytes(tag, hashfrom, (size_t)(s.p - hashfrom));
    found = 1;
    hashdepth = 0;
  }
  if (depth >= 2 && matched == depth - 1) matched = depth - 2;
  if (--depth > 0) goto next;
  skipspace(&s);
  if (s.p < s.end && *s.p != 0) return SL_KEY_INVALID;  /* the decoder's "Expected the end" */
  if (!found) return SL_KEY_MISSING;
  *hash = result;
  return SL_KEY_FOUND;

member:  /* s.p at a member's key, after any whitespace, in the object at `depth` */
  if (s.p >= s.end || *s.p != '"') return SL_KEY_INVALID;
  match = 0;
  if (matched == depth - 1 && depth <= path->count) {
    Sink o = {.mode = COMPARE};
    o.name = component(path, depth - 1, &o.namelen);
    if (!string(&s, &o)) return SL_KEY_INVALID;
    match = !o.differs && o.at == o.namelen;
  } else if (!string(&s, NULL)) {
    return SL_KEY_INVALID;
  }
  skipspace(&s);
  if (s.p >= s.end || *s.p != ':') return SL_KEY_INVALID;
  s.p++;
  skipspace(&s);
  if (!match) goto value;
  /* This key is the path's next step, and the latest so far: it replaces whatever an
   * earlier equal key led to. */
  found = 0;
  if (s.p >= s.end) return SL_KEY_INVALID;
  if (depth == path->count) {  /* the value at the path */
    if (*s.p == '{' || *s.p == '[') {
      hashfrom = s.p;
      hashdepth = depth + 1;
      goto value;
    }
    if (!scalarhash(&s, &result)) return SL_KEY_INVALID;
    found = 1;
    goto next;
  }
  if (*s.p == '{') matched = depth;  /* through an array or a scalar: missing */
  goto value;
}
