/*
 * CScopeLua: the only code in scopelua that may let a Lua error unwind (lua_error is a
 * longjmp). Swift functions never raise: they return SL_RAISE with the error object on
 * top of the stack and the C trampoline raises it after the Swift frame has returned.
 */
#ifndef CSCOPELUA_H
#define CSCOPELUA_H

#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

/* A Lua-callable function implemented in Swift. It returns the number of results it
 * pushed, or SL_RAISE after pushing an error object. It must not call anything that
 * can raise (lua_error, luaL_check*, lua_gettable, ...). */
typedef int (*sl_SwiftFunction)(lua_State *L);
#define SL_RAISE (-1)

/* The runtime's record of one resource (ARCHITECTURE.md, "Ownership of records").
 *
 * Records live in memory the runtime owns (a per-state pool, see sl_rec_alloc), never
 * inside a GC-managed object: scope registries, owners' child lists, scheduled timers
 * and the leak queue point at records, and a record stays valid whatever the collector
 * or a script (debug.setmetatable, a finalizer that resurrects) does to the Lua value.
 * The Lua value a script holds is a box (sl_Box) pointing at the record.
 *
 * A record is freed (back to the pool) only when all three hold: it is released, no box
 * points at it any more (`boxgone`: the box was finalized, or detached while it was on
 * the Lua stack), and nothing in the runtime pinned it (`pins`: code that keeps a record
 * across a call into Lua pins it). Kinds with Swift-side state (files, databases) keep a
 * retained Swift object in `record` while open; an owned handle (a statement) finds its
 * owner through that object. The struct is kept small: a box is one (see sl_Box), and
 * boxes are allocated for every acquisition. */
struct sl_Registry;
typedef struct sl_Handle {
  void *record;              /* Swift Resource, retained while open; NULL for plain kinds */
  struct sl_Registry *scope; /* the owning scope's registry while open */
  int64_t id;
  uint64_t start;            /* acquisition time, monotonic ns */
  int64_t value;             /* kind-specific: a timer's elapsed ns once released */
  int64_t detail;            /* released: interned scope path, or the owner's id */
  int32_t kind;
  int32_t how;               /* SL_OPEN, or how it was released */
  int32_t slot;              /* index in its scope's registry while open */
  int32_t aux;               /* kind-specific: a timer's label index */
  int32_t source, line;      /* acquired at (interned source, line) */
  int32_t relsource, relline;/* released at; the owner's kind for SL_BY_PARENT */
  int32_t pins;              /* runtime references held across calls into Lua */
  int32_t boxgone;           /* no box points here any more */
} sl_Handle;

/* The Lua side of a handle: a full userdata the size of a record. While attached, `t.record`
 * points at the record (nothing else in `t` is used); once detached, `t` is a copy of the
 * released record (its tomb, `record` NULL), so that a released handle can still say
 * what it was and how it was released without keeping runtime memory alive. `t.pins`
 * always holds SL_BOXMAGIC, which tells a box from any other userdata of the same size
 * before anything else in it is trusted. (One record's size, not more: Lua allocates a
 * box per acquisition, and a larger one falls out of malloc's fast bins.) */
enum { SL_BOXMAGIC = 0x5c0be1 };
typedef struct sl_Box {
  sl_Handle t;
} sl_Box;

/* The record (or, once detached, the tomb) behind the box at `idx`, if `idx` holds a
 * box; NULL otherwise. Checks the size and the magic, not the metatable. */
static inline sl_Handle *sl_boxhandle(lua_State *L, int idx) {
  sl_Box *b = (sl_Box *)lua_touserdata(L, idx);
  if (b == NULL || lua_rawlen(L, idx) != sizeof(sl_Box) || b->t.pins != SL_BOXMAGIC) return NULL;
  return b->t.record != NULL ? (sl_Handle *)b->t.record : &b->t;
}

enum { SL_OPEN = 0, SL_BY_HANDLE = 1, SL_BY_SCOPE = 2, SL_BY_PARENT = 3, SL_BY_GC = 4, SL_BY_CLOSE = 5 };

/* Pushes the __close function for handle metatables. It checks that the value is a box
 * (size and magic: the debug library can give any value a handle metatable).
 * Open timer.measure handles are released in C (sl_closetimer); other open handles go
 * to `release` (Swift), which detaches the box afterwards (sl_detach). */
void sl_pushhandleclose(lua_State *L, sl_SwiftFunction release);
/* Gives the __close function at `close` the kind's released twin metatable (at `twin`),
 * which the C path switches a released timer to. */
void sl_settwin(lua_State *L, int close, int twin);

/* The record (or tomb) of the box at `idx` if its metatable is its kind's,
 * `info->metatables[kind]` or, released, `info->metatables[SL_MAXKINDS + kind]`; else
 * NULL. Cheap enough for every call. */
sl_Handle *sl_tohandle(lua_State *L, int idx);

/* ---- records and boxes (records.c) -------------------------------------------------
 * Why: the ownership rule above. Records come from a per-state pool of fixed-size
 * chunks, so the hot path (timer.measure) allocates one with a pointer pop. */
/* Records per pool chunk (a snapshot of the open handles walks the chunks). */
enum { SL_POOL_CHUNK = 256 };
typedef struct sl_Pool {
  sl_Handle *free;           /* free records, linked through `record` */
  sl_Handle **chunks;
  int32_t nchunks, chunkcap;
  int64_t live;              /* records handed out and not yet freed (tests, leaks) */
} sl_Pool;

sl_Pool *sl_pool_new(void);
/* Frees every chunk: the records of a state are gone after this. */
void sl_pool_free(sl_Pool *p);
/* Adds a chunk of records to the free list (aborts when out of memory: Swift may be on
 * the stack). */
void sl_pool_grow(sl_Pool *p);

/* A zeroed record from the pool. Inline: every acquisition does it. */
static inline sl_Handle *sl_rec_new(sl_Pool *p) {
  if (p->free == NULL) sl_pool_grow(p);
  sl_Handle *h = p->free;
  p->free = (sl_Handle *)h->record;
  p->live++;
  memset(h, 0, sizeof *h);
  return h;
}

/* Returns the record to the pool if it is released, unboxed and unpinned. */
static inline void sl_rec_maybefree(sl_Pool *p, sl_Handle *h) {
  if (h->how != 0 /* SL_OPEN */ && h->boxgone && h->pins == 0) {
    h->scope = NULL;
    h->record = p->free;
    h->how = -1;             /* freed: never SL_OPEN, so a stale read sees "released" */
    p->free = h;
    p->live--;
  }
}

/* Pins the record while the runtime keeps it across a call into Lua; unpin frees it if
 * it was released and unboxed meanwhile. */
static inline void sl_rec_pin(sl_Handle *h) { h->pins++; }
static inline void sl_rec_unpin(sl_Pool *p, sl_Handle *h) {
  h->pins--;
  sl_rec_maybefree(p, h);
}

/* Pushes a new box for `h` with `nuv` user values (no metatable yet). */
sl_Box *sl_pushbox(lua_State *L, sl_Handle *h, int nuv);

/* For the box at `idx` whose record is released: copies the record into the box (the
 * tomb), unlinks the two and frees the record if nothing else needs it. Returns 1 if
 * the box is (now) detached, 0 if its record is still open. */
int sl_detach(lua_State *L, int idx);

/* Small caches keyed by the address of a Lua object (a function, a label string), for
 * the hot paths. A cached object is pinned (kept in a registry table, one slot per cache
 * entry) so that its address cannot be reused by another object while it is cached. */
enum { SL_CACHE = 16 };
typedef struct sl_CacheEntry {
  const void *key;
  int32_t value;
} sl_CacheEntry;

static inline int sl_cacheslot(const void *p) {
  uintptr_t u = (uintptr_t)p;
  return (int)(((u >> 4) ^ (u >> 9)) & (SL_CACHE - 1));
}

/* The value cached for `key`, or -1. */
static inline int32_t sl_cacheget(const sl_CacheEntry *cache, const void *key) {
  const sl_CacheEntry *e = &cache[sl_cacheslot(key)];
  return key != NULL && e->key == key ? e->value : -1;
}

/* The script position of the innermost Lua function on the stack. */
typedef struct sl_Site {
  int line;
  int32_t source;                /* the interned source, when the function is cached */
  char short_src[LUA_IDSIZE];    /* its chunk's name, when it is not */
} sl_Site;

/* Why: every acquisition records its site, so this is on the hot path: for a function
 * seen before, only the line is computed and the source comes from a cache. Returns 0
 * if no Lua function with a line is on the stack; 1 with `line` and `source` set; 2 with
 * `line` and `short_src` set and the function pushed: the caller interns the source
 * and calls sl_site_remember, which caches it and pops the function. */
int sl_site(lua_State *L, sl_Site *out);
void sl_site_remember(lua_State *L, int32_t source);

/* timer.measure's label cache: the statistics index of the label string at `idx`
 * (by address), or -1; sl_label_remember caches the string on top (popped). */
int32_t sl_label_lookup(lua_State *L, int idx);
void sl_label_remember(lua_State *L, int32_t index);

/* Pushes the __gc function for handle metatables. It only detaches the box; a record
 * still open is a leak, queued (pinned) for the runtime to report and release at its
 * next safe point (sl_leak_pop), never in the middle of other work (ARCHITECTURE.md). */
void sl_pushhandlegc(lua_State *L);
/* The oldest queued leak (still pinned: the caller releases it, then unpins), or NULL. */
sl_Handle *sl_leak_pop(lua_State *L);

/* ---- scope registries ---------------------------------------------------------------
 * A scope's open handles, oldest first. A handle released before its scope ends leaves
 * at once: the newest is popped; an older one leaves a hole, and holes are compacted
 * once they are half the registry (so a million acquire/release pairs in one scope do
 * not grow it). Why C: the timer fast path (sl_pushtimermeasure) registers and removes
 * handles without entering Swift. */
typedef struct sl_Registry {
  sl_Handle **entries;
  int32_t count, cap, holes;
  void *scope;               /* the Swift Scope that owns this registry (unretained) */
} sl_Registry;

/* A registry for `scope`; NULL when out of memory. */
sl_Registry *sl_registry_new(void *scope);
void sl_registry_free(sl_Registry *r);
/* Grows the registry (aborts when out of memory, like the guarded allocator: Swift may
 * be on the stack). */
void sl_registry_grow(sl_Registry *r);
/* sl_registry_remove for anything but the newest entry of a registry without holes. */
void sl_registry_removeslow(sl_Handle *h);

/* Appends `h`. Inline: every acquisition does it. */
static inline void sl_registry_add(sl_Registry *r, sl_Handle *h) {
  if (r->count == r->cap) sl_registry_grow(r);
  h->scope = r;
  h->slot = r->count;
  r->entries[r->count++] = h;
}

/* Takes `h` out of its registry, if it is in one. Inline for the common case, the
 * newest handle of its scope (a `<close>` block). */
static inline void sl_registry_remove(sl_Handle *h) {
  sl_Registry *r = h->scope;
  if (r != NULL && r->holes == 0 && h->slot == r->count - 1 && r->entries[h->slot] == h) {
    r->count--;
    h->scope = NULL;
    h->slot = -1;
    return;
  }
  sl_registry_removeslow(h);
}
/* Detaches and returns the newest handle, or NULL when the registry is empty. */
sl_Handle *sl_registry_popnewest(sl_Registry *r);

/* ---- latency histograms -------------------------------------------------------------
 * Values in nanoseconds, 64 sub-buckets per power of two (relative error under 1.6%), so
 * a service that measures forever keeps a fixed footprint; count, total and max exact.
 * Every counter is 64-bit: a hot label measured a million times a second fills a 32-bit
 * bucket in about an hour. The total is 128-bit (two words): overlapping timers of one
 * label (nested, or in coroutines) add up faster than the wall clock, and 2^64 ns is
 * under six centuries of wall time but only months for a thousand overlapping timers.
 * Values under SL_HIST_SUB nanoseconds have a bucket each (bucket i holds value i).
 * Why C: timer.measure's fast path records a sample without entering Swift. */
typedef struct sl_Hist {
  uint64_t count, total, max;
  uint64_t totalhigh;        /* the total's upper 64 bits */
  uint64_t *buckets;         /* SL_HIST_BUCKETS counters */
} sl_Hist;

/* Returns 0 when out of memory. */
int sl_hist_init(sl_Hist *h);
void sl_hist_destroy(sl_Hist *h);
enum { SL_HIST_SUBBITS = 6, SL_HIST_SUB = 1 << SL_HIST_SUBBITS,
       SL_HIST_BUCKETS = (64 - SL_HIST_SUBBITS + 1) * SL_HIST_SUB };
static inline void sl_hist_record(sl_Hist *h, uint64_t nanos) {
  int bucket;
  if (nanos < SL_HIST_SUB) {
    bucket = (int)nanos;
  } else {
    int e = 63 - __builtin_clzll(nanos);
    bucket = (e - SL_HIST_SUBBITS + 1) * SL_HIST_SUB + (int)((nanos >> (e - SL_HIST_SUBBITS)) & (SL_HIST_SUB - 1));
  }
  h->buckets[bucket]++;
  h->count++;
  h->total += nanos;
  h->totalhigh += h->total < nanos;  /* the carry */
  if (nanos > h->max) h->max = nanos;
}
/* The total in seconds (both words). */
double sl_hist_total_seconds(const sl_Hist *h);
/* The value at quantile q (0...1): the middle of its bucket, capped by max. */
uint64_t sl_hist_quantile(const sl_Hist *h, double q);

/* Resource counts of the run, kept in C so the fast path can update them. */
typedef struct sl_Counts {
  int64_t acquired, released_by_handle, released_by_scope, leaked, release_errors;
} sl_Counts;

/* Per-state data, reached from any thread of the state through its extra space. */
enum { SL_MAXKINDS = 16 };
typedef struct sl_StateInfo {
  void *runtime;   /* the Swift Runtime (unretained: it owns the state) */
  sl_Pool *pool;   /* the records (owned by the Swift RecordArena, may outlive the state) */
  /* Handle metatables by kind, then their released twins at SL_MAXKINDS + kind. */
  const void *metatables[2 * SL_MAXKINDS];
  /* Records whose box was collected while open, waiting for a safe point. */
  sl_Handle **leaks;
  int32_t nleaks, leakcap, leakhead;
  sl_SwiftFunction releaseleaks;  /* releases them (Runtime.releaseLeaks); stack kept */
  int guarded;     /* allocation failures abort instead of raising (see sl_alloc) */
  int trace;       /* --trace: every acquire and release goes through Swift */
  int64_t lastid;  /* the last handle id given out */
  /* By kind (a handle's `kind`): /metrics shows them per kind; the run's totals are
   * their sums. An index, not a second counter: acquire and release stay one add. */
  sl_Counts counts[SL_MAXKINDS];
  sl_Registry *current;        /* the registry of the scope acquisitions go to */
  /* Functions seen at acquisition sites → interned source; timer.measure labels →
   * statistics index; the registry references of the tables pinning their keys. */
  sl_CacheEntry sites[SL_CACHE];
  sl_CacheEntry labels[SL_CACHE];
  int sitepins, labelpins;
  /* timer.measure: the timer kind, per-label statistics. */
  int32_t timerkind;
  sl_Hist **timers;
  int32_t ntimers, timerscap;
  /* json.encode: its reusable buffer, and the identity of json.array_mt. */
  char *jsonbuf;
  size_t jsoncap;
  const void *jsonarraymt;
  /* --memory-limit: what Lua code may allocate in this state (0: no limit), and what
   * the state holds now (see sl_alloc). */
  size_t memlimit, memused;
  int memexceeded;   /* an allocation was refused for the limit since the last look */
  /* 1 + the index of the state's stop target (signals.c, sl_stop_attach), 0: none.
   * Written and read on the state's own thread only. */
  int stopslot;
  /* What the allocator counts (see sl_alloc): SL_COUNT_STATE while --memory-limit is
   * set, SL_COUNT_CALL while a call with a memory limit runs (0: nothing, the fast path). */
  int counting;
  /* Per-call limits (limits.c): the limits of the stage call running (NULL: none), its
   * time budget and deadline (monotonic ns, 0: none), the instructions it ran so far,
   * what it allocated net of what it freed, and which limit it breached (SL_BREACH_*). */
  const struct sl_Limits *limits;
  uint64_t limittime, limitdeadline;
  int64_t limitinstr, callnet;
  int breach;
  /* A refusal for the call's memory limit, waiting for Lua's retry of the same request
   * (a breach only if the retry is refused too: see limits.c). */
  const void *refusedptr;
  size_t refusedosize, refusednsize;
  /* Whether the call's hook was set on the main thread, and the hook it replaced there
   * (restored when the call ends). */
  int limitarmed;
  lua_Hook savedhook;
  int savedmask, savedcount;
  /* The state's main thread, and the coroutine running in it (NULL: the main thread),
   * as coroutine.resume / coroutine.wrap record it (signals.c). */
  lua_State *mainthread;
  lua_State *running;
  /* 1 + the state's slot with the limits' watchdog (limits.c), 0: none. */
  int limitslot;
} sl_StateInfo;

/* The counts of handles of `kind` (out-of-range kinds count as kind 0: never a write
 * outside the array). */
__attribute__((returns_nonnull)) static inline sl_Counts *sl_kindcounts(sl_StateInfo *info, int32_t kind) {
  return &info->counts[(uint32_t)kind < SL_MAXKINDS ? kind : 0];
}

enum { SL_COUNT_STATE = 1, SL_COUNT_CALL = 2 };

/* Sets the state's memory limit in bytes (0: none), counting from what it holds now. */
void sl_setmemlimit(lua_State *L, size_t limit);
/* Whether an allocation was refused for the limit since the last call (and forgets it). */
int sl_memexceeded(lua_State *L);

/* Appends a label's histogram to info->timers; returns 0 when out of memory. */
int sl_timers_push(sl_StateInfo *info, sl_Hist *h);

/* Pushes timer.measure: a C function for the common case (the same label and calling
 * function as the previous call, no tracing) that acquires a timer handle without
 * entering Swift; anything else goes to `slow` (Swift), which also refreshes the
 * caches. Closing a timer handle with `<close>` has a matching C path in the handle
 * __close (see sl_pushhandleclose). */
void sl_pushtimermeasure(lua_State *L, sl_SwiftFunction slow);  /* pops the open timer metatable */
/* JSON encoding (jsonencode.c): the text cjson would write, with empty tables marked
 * by json.array_mt written as [] and integers written exactly. Never raises: pushes the
 * text and returns 1, or pushes cjson's message ("Cannot serialise function: type not
 * supported") and returns 0. */
int sl_json_encode(lua_State *L, int idx);
/* Pushes json.encode (raises the message above, positioned at the caller). */
void sl_pushjsonencode(lua_State *L);
/* JSON decoding (jsondecode.c): what cjson accepts, with cjson's messages; integers
 * become Lua integers, `[]` an empty table with json.array_mt (which must be in the
 * registry under its address, `jsonarraymt`). Never raises: pushes the value and
 * returns 1, or pushes the message and returns 0. */
int sl_json_decode(lua_State *L, const char *s, size_t len);
/* Pushes json.decode (raises the message above, positioned at the caller). */
void sl_pushjsondecode(lua_State *L);
/* Shrinks the codec's buffer (jsonbuf) back to a small size when one call grew it past
 * 1 MiB; both directions call it at their end (jsonencode.c). */
void sl_json_trim(sl_StateInfo *info);

/* ---- partition keys (jsonkey.c) ----------------------------------------------------
 * Why: `--workers N` sends the events of one `partition_by` key to one worker, in input
 * order, and the dispatcher must choose the worker from the raw line without decoding
 * it (ARCHITECTURE.md, "Partition keys"). One pass over the bytes, no Lua state, no
 * allocation, stack use fixed; safe on any thread. */

/* A path of object keys: `partition_by = "user.id"` is the components "user" and "id".
 * Component i is the bytes names[ends[i-1] .. ends[i]) (names[0 .. ends[0]) for the
 * first); a component may hold any byte, '.' and NUL included, and may be empty. */
typedef struct sl_KeyPath {
  const uint8_t *names;  /* the components' bytes, one after another */
  const size_t *ends;    /* `count` offsets: ends[i] is just past component i in names */
  size_t count;          /* at least 1 */
} sl_KeyPath;

typedef enum sl_KeyOutcome {
  SL_KEY_FOUND = 0,    /* *hash is the hash of the value's canonical form */
  SL_KEY_MISSING = 1,  /* a valid object, but a key of the path is absent, or the path
                          goes through a value that is not an object */
  SL_KEY_INVALID = 2   /* json.decode rejects the line, or it is not an object */
} sl_KeyOutcome;

/* Finds the value at `path` in the JSON object `line` (`len` bytes, no terminator
 * needed; nothing at or after line[len] is read) and hashes its canonical form: a
 * string by its unescaped bytes, a number by its value (an integral double as that
 * integer: 1, 1.0 and 1e0 are one key), true, false and null by their type, an object
 * or array by its text as written. The grammar, the nesting limit and "the later of two
 * equal keys wins" are json.decode's (jsondecode.c). `hash` is written only for
 * SL_KEY_FOUND. Linear in `len`. */
sl_KeyOutcome sl_jsonkey(const uint8_t *line, size_t len, const sl_KeyPath *path, uint64_t *hash);

/* The hash sl_jsonkey gives a line whose value at the path decodes to the value at
 * `idx`: a string, a number, a boolean or json.null (the NULL light userdata). Returns 0
 * (no hash) for anything else: a table's key is its text, which a decoded table no
 * longer has. Never raises. */
int sl_jsonkey_value(lua_State *L, int idx, uint64_t *hash);

/* The handle __close's C path for the open timer.measure handle in box `b` at index 1
 * (see fastpath.c): releases and detaches it and returns 1, or returns 0 for anything
 * Swift must release. */
int sl_closetimer(lua_State *L, sl_Box *b);

static inline sl_StateInfo *sl_info(lua_State *L) {
  return *(sl_StateInfo **)lua_getextraspace(L);
}

/* Creates a state like luaL_newstate, but with scopelua's allocator: an allocation
 * failure while Swift code is on the stack never raises a memory error through Swift
 * frames; it gets Lua's emergency collection and retry, and aborts with a message if
 * the retry fails too (see sl_alloc; sl_pcall for where failures may raise). */
lua_State *sl_newstate(void);

/* The linked Lua library's identification, `lua_ident` ("$LuaVersion: Lua 5.4.4 ...$"):
 * the release of the library loaded at run time (the header's LUA_RELEASE is only the
 * one scopelua was compiled against). Swift does not import an array of unknown size. */
const char *sl_lua_ident(void);

/* lua_close. The per-state data outlives the state (the runtime reads its counts after
 * the close) and is freed with sl_freeinfo. */
void sl_closestate(lua_State *L);
void sl_freeinfo(sl_StateInfo *info);

/* Calls `fn` with the allocator guarded (Swift is on the stack) and returns what it
 * returned, without raising; an entry straight from Lua code is a safe point where
 * queued leaks are released first. For C functions that raise themselves afterwards. */
int sl_callswift(lua_State *L, sl_SwiftFunction fn);

/* Calls `fn` with the allocator guarded and returns its result count, or raises the
 * error it left when it returned SL_RAISE: every C function that hands over to Swift
 * ends with this (rule 1). */
int sl_enterswift(lua_State *L, sl_SwiftFunction fn);

/* Pushes a Lua function that enters `fn` through the trampoline (rule 1). */
void sl_pushfunction(lua_State *L, sl_SwiftFunction fn);

/* lua_pcall with the allocator unguarded for the duration: inside the protected call a
 * memory error is an ordinary Lua error caught by this very call. */
int sl_pcall(lua_State *L, int nargs, int nresults, int msgh);

/* Message handler for scopelua's protected calls (scope, with_resource, the runner, the
 * pipeline): leaves the error object unchanged and remembers, for that very object, the
 * traceback at the point of error (or, for an error announced with
 * sl_tracebackreraise, the traceback that came with it). */
int sl_capturetraceback(lua_State *L);

/* After a protected call with sl_capturetraceback failed with the error at `idx`: pushes
 * the traceback captured for that object and returns 1, or returns 0 (nothing pushed)
 * if none was. Either way the runtime forgets it. Never raises or allocates. */
int sl_taketraceback(lua_State *L, int idx);

/* Announces that the running C function (scope, with_resource) is about to raise the
 * error at `err` again, whose traceback is the string at `tb` (0 or a non-string: none,
 * which also cancels an earlier announcement). The next message handler keeps that
 * traceback instead of taking one at the re-raise. Never raises or allocates. */
void sl_tracebackreraise(lua_State *L, int err, int tb);

/* Pushes "bad argument #arg to 'name' (extramsg)" with the caller's position, exactly
 * as luaL_argerror words it, without raising. */
void sl_pushargerror(lua_State *L, int arg, const char *extramsg);

/* Pushes "<type> expected, got <type>" wording like luaL_typeerror, for use with
 * sl_pushargerror. */
void sl_pushtypeerror(lua_State *L, int arg, const char *tname);

/* Pushes an __index function for handle metatables: looks the key up in `methods`
 * (the table on top, popped) with a raw get, and otherwise asks `fields` (Swift) for a
 * per-handle field such as .id or .path. Methods stay as fast as a table lookup. */
void sl_pushindex(lua_State *L, sl_SwiftFunction fields);

/* io delegation for runtime-owned files. `unwrap(L)` (Swift) checks the handle at
 * index 1 and replaces it with the runtime's inner io file, or returns SL_RAISE. The
 * io library's own C function then runs in this same frame, so its error messages name
 * the method and the script position exactly as with a stock file. */
void sl_pushiodelegate(lua_State *L, lua_CFunction iofn, sl_SwiftFunction unwrap);

/* file:write for runtime-owned files: like io's, but returns the handle (not the inner
 * io file). `unwrap` is called as above; the handle is kept at index 1. */
void sl_pushfilewrite(lua_State *L, sl_SwiftFunction unwrap);

/* file:lines for runtime-owned files: wraps io's iterator so that each step first
 * checks the handle (use after release is the runtime's clear error). */
void sl_pushfilelines(lua_State *L, lua_CFunction iolines, sl_SwiftFunction unwrap, sl_SwiftFunction check);

/* The FILE* inside a stock io file at `idx`, or NULL when it is not an open io file. */
FILE *sl_iofile(lua_State *L, int idx);

/* Like sl_pushfunction, with the `nup` values on top of the stack as upvalues 2..nup+1
 * (upvalue 1 is the Swift function). */
void sl_pushclosure(lua_State *L, sl_SwiftFunction fn, int nup);

/* ---- stopping a run (SIGINT / SIGTERM) ---------------------------------------------
 * Why C: a signal handler may only touch async-signal-safe state. The stop has three
 * steps (see signals.c): graceful (the run's Lua code gets the error "stopped by SIGTERM"
 * at its next instruction, a pipeline stops between events), forced after a second
 * signal or the grace period (every Lua instruction raises, nothing can catch or remove
 * it), and a last resort one more grace period later (output flushed, _exit).
 *
 * The stop reaches its *targets* (ARCHITECTURE.md, "Stopping a run"): the run's state
 * (sl_stop_install) and worker states (sl_stop_attach), at most SL_STOP_MAXTARGETS in
 * all, each used by one thread of its own (rule 6). The signal and whether the stop is
 * forced are process-wide; the holds (sl_stop_pipeline, sl_stop_release) are per state.
 * A state that is no target (tests run many runtimes) neither holds nor is interrupted
 * by a stop; its code may still poll sl_stop_signal. The target's thread must not block
 * the arm signal (a real-time signal, SIGRTMIN + 2; SIGUSR2 where there is none) that
 * the stop uses to have that thread arm its own state. */
enum { SL_STOP_MAXTARGETS = 64 };

/* Installs the handlers for SIGINT, SIGTERM and SIGALRM (the grace period and the forced
 * stop's tick) for a run of the state `L`, with `grace` seconds, and makes `L` the first
 * target, on the calling thread (its coroutine.resume / coroutine.wrap, from
 * sl_coroutines_install, record the coroutine they run: a stop must reach it); also makes
 * its debug.sethook unable to lift a forced stop. Pair it with sl_stop_uninstall, on the same thread, while `L` is
 * still open. A stop under way (not reset) is not given to `L`. */
void sl_stop_install(lua_State *L, double grace);
/* Restores the default handlers, stops the timer, removes the stop hooks of the targets
 * of the calling thread (their states must still be open) and frees their slots. A
 * target still attached on another thread is forgotten: no stop reaches it any more, its
 * own thread removes its hooks (through the arm signal), and its slot is free once that
 * thread detaches it. */
void sl_stop_uninstall(void);
/* A worker: makes the state `L` (any thread of it) a target of the calling thread, which
 * must be the only one to use `L` until sl_stop_detach, and must live until then. Call it
 * after sl_stop_install, before running Lua in `L`. Replaces `L`'s debug.sethook as
 * sl_stop_install does. A stop already under way
 * reaches it at once (forced: its first instruction raises; graceful: as if it had come
 * now). Returns 1, or 0 when all SL_STOP_MAXTARGETS slots are taken: the state then is no
 * target (see above). Idempotent on the attaching thread. */
int sl_stop_attach(lua_State *L);
/* A worker, on the thread that attached `L`, before closing `L` (and before the thread
 * ends): removes a stop hook still set and frees the slot, race-free against a stop
 * handler on any thread (it waits, a few instructions at most, for a handler using the
 * slot on another thread to finish). Harmless for a state that is no target. */
void sl_stop_detach(lua_State *L);
/* Installs `handler` (SA_RESTART, with `mask` blocked while it runs; NULL: none) for the
 * real-time signal SIGRTMIN + `offset` (`fallback` where there are none) and returns the
 * signal: the stop's arm signal (+2) and the limits' (+3) are nobody else's. */
int sl_rtsignal(int offset, int fallback, void (*handler)(int), const sigset_t *mask);
/* Whether `h` is a hook a stop (or the REPL's Ctrl-C) set: nothing may replace it. */
int sl_isstophook(lua_Hook h);
/* The first stop signal received (0 if none). */
int sl_stop_signal(void);
/* Nonzero once the stop was forced (second signal or grace period over). */
int sl_stop_forced(void);
/* A file descriptor that becomes readable when a stop signal arrives (for poll). */
int sl_stop_fd(void);
/* Forgets a previous stop (tests). */
void sl_stop_reset(void);
/* Pushes the stop's message: "stopped by SIGTERM", "... (forced)". */
void sl_stop_pusherror(lua_State *L);
/* A pipeline's event loop is in control of `L`'s state from `entering` 1 to 0: a graceful
 * stop does not interrupt its Lua code, the loop polls sl_stop_signal and stops between
 * events. Per target: other states are not held. On the state's own thread. */
void sl_stop_pipeline(lua_State *L, int entering);
/* Release code (a deferred function) runs in `L`'s state from `entering` 1 to 0: a
 * graceful stop waits for its end; after a forced stop it may run Lua for one more grace
 * period. Per target, on the state's own thread. */
void sl_stop_release(lua_State *L, int entering);

/* lua_CFunction running luaL_tolstring on argument 1 (it may call __tostring, which
 * may raise): Swift runs it under sl_pcall. */
int sl_tostring(lua_State *L);

/* Closes the stock io file at `idx` as io's close would (fclose) and marks it closed.
 * Returns 0 on success or when already closed; otherwise pushes the reason (strerror)
 * and returns the errno. Never raises. */
int sl_closeiofile(lua_State *L, int idx);

/* fs.open / io.open with a step after: runs io's open C function in this frame (its
 * messages and nil, message, errno results stay exactly io's), and on success calls
 * `after` (Swift) with the new io file on top; `after` leaves one value on top. */
void sl_pushopendelegate(lua_State *L, lua_CFunction ioopen, sl_SwiftFunction after);

/* Registry field holding the message of the last failed fs.open / io.open / sql.open:
 * `with_resource(fs.open(path), fn)` receives only the nil (a call's results are cut to
 * one value unless they come last), and should still say why. */
#define SL_LASTFAILURE "scopelua.lastfailure"
/* Pushes scopelua's os.exit: stock os.exit's arguments; then `release` (Swift) is called
 * with the status (an integer) at index 1 and returns the status to exit with, having
 * released every scope; then the state is closed if the second argument is true, and the
 * process exits. Upvalue 2 (false) is a flag for `release` (the runner's --report). */
void sl_pushosexit(lua_State *L, sl_SwiftFunction release);

/* Pops a value and pushes a function returning it (package.preload loaders for the
 * built-in modules). */
void sl_pushconstant(lua_State *L);

/* Writes a line to stderr and flushes it (Swift 6 cannot touch C's `stderr` global). */
void sl_eprint(const char *line);

/* lua_gc(L, LUA_GCGEN, 0, 0): lua_gc is variadic, which Swift cannot call. */
int sl_gcgenerational(lua_State *L);

/* C's stdout (shared with Lua's print and io.write), which Swift 6 cannot name. */
FILE *sl_stdout(void);

/* Rewrites the progress line on stderr when stderr is a terminal ("" clears it). */
void sl_eprogress(const char *line);

/* Whether stderr is a terminal. */
int sl_stderr_isatty(void);

/* Macros Swift cannot import. */
static inline int sl_upvalueindex(int i) { return lua_upvalueindex(i); }
static inline int sl_registryindex(void) { return LUA_REGISTRYINDEX; }
static inline void sl_pop(lua_State *L, int n) { lua_pop(L, n); }
static inline void sl_newtable(lua_State *L) { lua_newtable(L); }

static inline int sl_isnoneornil(lua_State *L, int idx) { return lua_type(L, idx) <= 0; }
static inline void sl_insert(lua_State *L, int idx) { lua_rotate(L, idx, 1); }
static inline void sl_remove(lua_State *L, int idx) { lua_rotate(L, idx, -1); lua_pop(L, 1); }
static inline void sl_replace(lua_State *L, int idx) { lua_copy(L, -1, idx); lua_pop(L, 1); }
static inline int sl_isinteger_number(lua_State *L, int idx) { return lua_isinteger(L, idx); }

/* Runs a chunk like lua.c's dochunk but returns the status; used by tests and the CLI. */
int sl_loadbuffer(lua_State *L, const char *buf, size_t len, const char *name);

/* The monotonic clock (sl_monotonic_ns, sl_elapsed_ns) and its TSC calibration. */
#include "slclock.h"

/* Interrupt support (REPL Ctrl-C, graceful stop): sets a hook that raises
 * "interrupted!" at the next instruction, as lua.c does. Safe to call from a signal
 * handler: lua_sethook is documented as signal-safe. */
void sl_interrupt(lua_State *L);

/* REPL: while a chunk runs, Ctrl-C (SIGINT) sets the interrupt hook on `L` (a second
 * Ctrl-C before the hook fires gets the default action, as in lua.c). */
void sl_repl_interrupt_install(lua_State *L);
void sl_repl_interrupt_uninstall(void);
/* Raises SIGINT's interrupt now (tests: simulate Ctrl-C from another thread). */
void sl_repl_interrupt_now(void);

/* Removes the interrupt hook if it has not fired. */
void sl_clearinterrupt(lua_State *L);

/* ---- per-call limits (limits.c) ----------------------------------------------------
 * Why: a stage's `limits = { time, instructions, memory }` bound one call of its
 * functions (docs/ARCHITECTURE.md, "Limits"). Time and instructions are enforced by a
 * count hook (every SL_LIMIT_SLICE instructions, or exactly at the instruction budget)
 * that the call owns while it runs; memory by the allocator, which counts the call's net
 * allocation (a watchdog thread arms the hook only for calls that run long enough to
 * need it). A breach raises inside the script and, from then on, every instruction of
 * the call raises again (a script's pcall cannot swallow it); the caller learns which
 * limit was breached from sl_limits_end and reports it in its own words. */
enum { SL_BREACH_NONE = 0, SL_BREACH_TIME = 1, SL_BREACH_INSTRUCTIONS = 2, SL_BREACH_MEMORY = 3 };
enum { SL_LIMIT_SLICE = 10000 };

typedef struct sl_Limits {
  int64_t instructions;  /* VM instructions one call may run (0: no limit) */
  int64_t memory;        /* bytes one call may allocate net of what it frees (0: none) */
  char who[96];          /* "stage 'enrich'", for the message the script sees */
  char memtext[32];      /* the memory limit as the script wrote it ("64MB") */
} sl_Limits;

/* Installs what the limits need in a new state: coroutine.resume / coroutine.wrap that
 * carry the call's hook into the coroutines they run (signals.c), and a debug.sethook
 * that refuses to replace the hook of a call under limits. */
void sl_limits_install(lua_State *L);
/* A call of `L`'s state starts at `t0` (sl_monotonic_ns) under `lim` (kept alive by the
 * caller until sl_limits_end) with `time_ns` of wall-clock time (0: none). Not nested. */
void sl_limits_begin(lua_State *L, const sl_Limits *lim, uint64_t time_ns, uint64_t t0);
/* The call ended after `elapsed` ns: removes its hook (restoring the one it replaced)
 * and returns the limit it breached, SL_BREACH_NONE if none (a call that returned in
 * time but took longer than its time inside a C function breached it too). */
int sl_limits_end(lua_State *L, uint64_t elapsed);
/* For coroutine.resume (signals.c): before resuming `co` from `L` (raises if the call
 * already breached a limit; gives `co` the call's hook), and after (if the coroutine
 * breached one, the resumer's next instruction raises it). */
void sl_limits_resuming(lua_State *L, lua_State *co);
void sl_limits_resumed(lua_State *L);
/* The allocator refuses a request for the call's memory limit (cscopelua.c): NULL, and
 * a breach when it is Lua's retry of the refusal before. */
void *sl_limits_refuse(sl_StateInfo *info, const void *ptr, size_t osize, size_t nsize);
/* A growing request that is not the retry of the refusal before came: that refusal
 * stood (lauxlib's buffers do not retry), a breach. */
void sl_limits_refusalstood(sl_StateInfo *info);
/* Tests: whether states without a slot may take one (0: they count every instruction
 * from the start of each call, as when every slot is taken). */
void sl_limits_usewatchdog(int use);
/* Frees the state's slot with the limits' watchdog, if it has one (when the state's
 * data is freed). */
void sl_limits_release(sl_StateInfo *info);
/* Installs coroutine.resume / coroutine.wrap that record the coroutine running (for the
 * stop and the limits). Once per state, at its creation. */
void sl_coroutines_install(lua_State *L);

/* ==== Permissions (--sandbox; permissions.c) ==================================== */

/* What a wrapper asks the runtime's check: the operation (the integer pushed before the
 * subject), mirrored by Permissions.Access in Swift. SL_PERM_MODULE is reading a Lua
 * module's file for require (the read roots, the script's directory, the stdlib). */
#define SL_PERM_READ 0
#define SL_PERM_WRITE 1
#define SL_PERM_EXEC 2
#define SL_PERM_ENV 3
#define SL_PERM_NET 4
#define SL_PERM_NATIVE 5
#define SL_PERM_MODULE 6

/* Replaces, in their own tables, the stock functions that open files, run commands, read
 * the environment or load native code by wrappers that call `check` first (stack: the
 * operation, the subject; it pops both and returns 0, or SL_RAISE with the denial
 * message on top), and takes away what would let a script lift the sandbox (the debug
 * library's hooks, registry, C upvalues and C frames; collectgarbage("stop")). Run once,
 * after every module is installed. */
void sl_perm_install(lua_State *L, sl_SwiftFunction check);

#endif
