/*
 * The hot path of the most frequent acquisition, `local t <close> = timer.measure(l)`,
 * kept in C: scope registries, latency histograms and timer.measure itself. Everything
 * here is also reachable from Swift, which owns the objects (a Scope owns its registry,
 * the ledger its histograms) and handles every case the fast path declines.
 */
#include "cscopelua.h"

#include <stdlib.h>
#include <string.h>

/* ---- scope registries ------------------------------------------------------------ */

sl_Registry *sl_registry_new(void *scope) {
  sl_Registry *r = (sl_Registry *)calloc(1, sizeof(sl_Registry));
  if (r != NULL) r->scope = scope;
  return r;
}

void sl_registry_free(sl_Registry *r) {
  if (r == NULL) return;
  free(r->entries);
  free(r);
}

void sl_registry_grow(sl_Registry *r) {
  int32_t cap = r->cap < 8 ? 8 : r->cap * 2;
  sl_Handle **grown = (sl_Handle **)realloc(r->entries, (size_t)cap * sizeof(sl_Handle *));
  if (grown == NULL) {
    fprintf(stderr, "scopelua: out of memory growing a scope's registry (%d handles)\n", (int)r->count);
    abort();
  }
  r->entries = grown;
  r->cap = cap;
}

static void compact(sl_Registry *r) {
  int32_t kept = 0;
  for (int32_t i = 0; i < r->count; i++) {
    sl_Handle *h = r->entries[i];
    if (h == NULL) continue;
    h->slot = kept;
    r->entries[kept++] = h;
  }
  r->count = kept;
  r->holes = 0;
}

void sl_registry_removeslow(sl_Handle *h) {
  sl_Registry *r = h->scope;
  int32_t i = h->slot;
  h->scope = NULL;
  h->slot = -1;
  if (r == NULL || i < 0 || i >= r->count || r->entries[i] != h) return;
  if (i == r->count - 1) {
    r->count--;
    while (r->holes > 0 && r->count > 0 && r->entries[r->count - 1] == NULL) {
      r->count--;
      r->holes--;
    }
  } else {
    r->entries[i] = NULL;
    r->holes++;
    if (r->holes > 16 && r->holes * 2 > r->count) compact(r);
  }
}

sl_Handle *sl_registry_popnewest(sl_Registry *r) {
  while (r->count > 0) {
    sl_Handle *h = r->entries[--r->count];
    if (h != NULL) {
      h->scope = NULL;
      h->slot = -1;
      return h;
    }
    r->holes--;
  }
  return NULL;
}

/* ---- latency histograms ---------------------------------------------------------- */

enum { SUBBITS = SL_HIST_SUBBITS, SUB = SL_HIST_SUB };

int sl_hist_init(sl_Hist *h) {
  memset(h, 0, sizeof *h);
  h->buckets = (uint64_t *)calloc(SL_HIST_BUCKETS, sizeof(uint64_t));
  return h->buckets != NULL;
}

void sl_hist_destroy(sl_Hist *h) {
  free(h->buckets);
  h->buckets = NULL;
}

/* Why: the report shows the total in seconds, and it can pass 2^64 ns (see sl_Hist). */
double sl_hist_total_seconds(const sl_Hist *h) {
  return ((double)h->totalhigh * 18446744073709551616.0 + (double)h->total) / 1e9;
}

static uint64_t lowerbound(int i) {
  if (i < SUB) return (uint64_t)i;
  if (i >= SL_HIST_BUCKETS) return UINT64_MAX;
  int e = i / SUB + SUBBITS - 1;
  uint64_t s = (uint64_t)(i % SUB);
  return ((uint64_t)1 << e) | (s << (e - SUBBITS));
}

uint64_t sl_hist_quantile(const sl_Hist *h, double q) {
  if (h->count == 0) return 0;
  if (!(q > 0)) q = 0;  /* NaN too: a double outside uint64's range must not be converted */
  if (q > 1) q = 1;
  double r = q * (double)h->count;
  if (r >= 18446744073709551616.0) return h->max;  /* the last sample (count near 2^64) */
  uint64_t rank = (uint64_t)r;
  if ((double)rank < r) rank++;  /* rounded up */
  if (rank < 1) rank = 1;
  uint64_t seen = 0;
  for (int i = 0; i < SL_HIST_BUCKETS; i++) {
    if (h->buckets[i] == 0) continue;
    seen += h->buckets[i];
    if (seen >= rank) {
      uint64_t lo = lowerbound(i), hi = lowerbound(i + 1);
      uint64_t mid = lo + (hi - lo) / 2;
      return mid < h->max ? mid : h->max;
    }
  }
  return h->max;
}

int sl_timers_push(sl_StateInfo *info, sl_Hist *h) {
  if (info->ntimers == info->timerscap) {
    int32_t cap = info->timerscap < 8 ? 8 : info->timerscap * 2;
    sl_Hist **grown = (sl_Hist **)realloc(info->timers, (size_t)cap * sizeof(sl_Hist *));
    if (grown == NULL) return 0;
    info->timers = grown;
    info->timerscap = cap;
  }
  info->timers[info->ntimers++] = h;
  return 1;
}

/* ---- timer.measure --------------------------------------------------------------- */

/* Why: a timer pair is the cheapest thing a script can ask of the runtime and sits in
 * the innermost loops, so the common case does in C what Runtime.acquire does in Swift
 * (same record, same registry, same counts). The caches it relies on (label, calling
 * function) are filled by the Swift path the first time a label or a function is seen.
 * Upvalues: that path, the open timer metatable. */
static int timermeasure(lua_State *L) {
  sl_StateInfo *info = sl_info(L);
  int32_t label = sl_cacheget(info->labels, lua_topointer(L, 1));  /* pinned: unique */
  if (!info->trace && label >= 0 && info->current != NULL) {
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar)) {
      lua_getinfo(L, "fl", &ar);  /* pushes the calling function */
      const void *fn = lua_topointer(L, -1);
      lua_pop(L, 1);
      int32_t source = sl_cacheget(info->sites, fn);
      if (ar.currentline > 0 && source >= 0) {
        sl_Handle *h = sl_rec_new(info->pool);
        sl_pushbox(L, h, 0);
        h->id = ++info->lastid;
        h->kind = info->timerkind;
        h->how = SL_OPEN;
        h->aux = label;
        h->source = source;
        h->line = ar.currentline;
        lua_pushvalue(L, lua_upvalueindex(2));  /* the open timer metatable */
        lua_setmetatable(L, -2);
        sl_registry_add(info->current, h);
        sl_kindcounts(info, h->kind)->acquired++;
        h->start = sl_monotonic_ns();  /* last, so the runtime's own work is not timed */
        return 1;
      }
    }
  }
  return sl_enterswift(L, (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(1)));
}

void sl_pushtimermeasure(lua_State *L, sl_SwiftFunction slow) {
  lua_pushlightuserdata(L, (void *)slow);
  lua_rotate(L, -2, 1);  /* upvalues: the Swift path, the metatable */
  lua_pushcclosure(L, timermeasure, 2);
}

/* The release half, called by the handle __close for an open handle: a plain timer
 * (timer.measure's, no Swift record, no owner) is released here exactly as
 * Runtime.release would with cause .closed; returns 0 to leave anything else to Swift.
 * Runs in the __close closure's frame: its upvalue 2 is the released twin metatable. */
int sl_closetimer(lua_State *L, sl_Box *b) {
  sl_StateInfo *info = sl_info(L);
  sl_Handle *h = (sl_Handle *)b->t.record;
  if (h->record != NULL || h->kind != info->timerkind || info->trace) return 0;  /* Swift state */
  uint64_t elapsed = sl_elapsed_ns(h->start);
  h->how = SL_BY_CLOSE;
  h->value = (int64_t)elapsed;
  sl_kindcounts(info, h->kind)->released_by_handle++;
  sl_registry_remove(h);
  if (h->aux >= 0 && h->aux < info->ntimers) sl_hist_record(info->timers[h->aux], elapsed);
  /* Detach: the box keeps the released record, the record goes back to the pool. */
  b->t = *h;
  b->t.scope = NULL;
  b->t.pins = SL_BOXMAGIC;  /* record is NULL already: a plain timer has no Swift state */
  h->boxgone = 1;
  sl_rec_maybefree(info->pool, h);
  lua_pushvalue(L, lua_upvalueindex(2));  /* the twin: no __gc from now on */
  lua_setmetatable(L, 1);
  return 1;
}
