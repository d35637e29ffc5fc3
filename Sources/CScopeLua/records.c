/*
 * Handle records and the boxes scripts hold (see the ownership rule in cscopelua.h and
 * ARCHITECTURE.md): the record pool, boxes, detaching a released box, the finalizer
 * that turns a collected open box into a queued leak, and the metatable check.
 */
#include "cscopelua.h"

#include <stdlib.h>

enum { CHUNK = SL_POOL_CHUNK };

sl_Pool *sl_pool_new(void) {
  return (sl_Pool *)calloc(1, sizeof(sl_Pool));
}

void sl_pool_free(sl_Pool *p) {
  if (p == NULL) return;
  for (int32_t i = 0; i < p->nchunks; i++) free(p->chunks[i]);
  free(p->chunks);
  free(p);
}

/* Why abort: a record is needed in the middle of an acquisition, with Swift frames on
 * the stack, where a Lua memory error cannot be raised (rule 1). Chunks are small. */
static void *mustalloc(void *old, size_t size) {
  void *p = realloc(old, size);
  if (p == NULL) {
    fprintf(stderr, "scopelua: out of memory allocating handle records (%zu bytes)\n", size);
    abort();
  }
  return p;
}

void sl_pool_grow(sl_Pool *p) {
  if (p->nchunks == p->chunkcap) {
    p->chunkcap = p->chunkcap < 8 ? 8 : p->chunkcap * 2;
    p->chunks = (sl_Handle **)mustalloc(p->chunks, (size_t)p->chunkcap * sizeof(sl_Handle *));
  }
  sl_Handle *chunk = (sl_Handle *)mustalloc(NULL, CHUNK * sizeof(sl_Handle));
  p->chunks[p->nchunks++] = chunk;
  for (int i = CHUNK - 1; i >= 0; i--) {
    chunk[i].how = -1;
    chunk[i].record = p->free;
    p->free = &chunk[i];
  }
}

sl_Box *sl_pushbox(lua_State *L, sl_Handle *h, int nuv) {
  sl_Box *b = (sl_Box *)lua_newuserdatauv(L, sizeof(sl_Box), nuv);
  b->t.record = h;
  b->t.pins = SL_BOXMAGIC;
  return b;
}

/* Copies the record into the box and unlinks them; the record goes back to the pool
 * unless something still pins it. The tomb keeps no runtime pointers. */
static void unlink_box(sl_StateInfo *info, sl_Box *b) {
  sl_Handle *h = (sl_Handle *)b->t.record;
  b->t = *h;
  b->t.record = NULL;
  b->t.scope = NULL;
  b->t.pins = SL_BOXMAGIC;
  h->boxgone = 1;
  sl_rec_maybefree(info->pool, h);
}

int sl_detach(lua_State *L, int idx) {
  sl_Box *b = (sl_Box *)lua_touserdata(L, idx);
  if (b == NULL || lua_rawlen(L, idx) != sizeof(sl_Box) || b->t.pins != SL_BOXMAGIC) return 0;
  if (b->t.record == NULL) return 1;
  if (((sl_Handle *)b->t.record)->how == SL_OPEN) return 0;
  unlink_box(sl_info(L), b);
  return 1;
}

/* Why: the collector is the last to see a box, and the only one to see a box that the
 * script dropped while its resource was open (a leak). Running the release here would
 * run Swift, SQL or Lua in the middle of whatever allocation triggered the collection,
 * so a leak is only queued; the runtime releases it at its next safe point. */
static void queue_leak(sl_StateInfo *info, sl_Handle *h) {
  if (info->leakhead > 0 && info->leakhead == info->nleaks) info->leakhead = info->nleaks = 0;
  if (info->nleaks == info->leakcap) {
    if (info->leakhead > 0) {  /* reuse the consumed front before growing */
      memmove(info->leaks, info->leaks + info->leakhead,
              (size_t)(info->nleaks - info->leakhead) * sizeof(sl_Handle *));
      info->nleaks -= info->leakhead;
      info->leakhead = 0;
    } else {
      info->leakcap = info->leakcap < 16 ? 16 : info->leakcap * 2;
      info->leaks = (sl_Handle **)mustalloc(info->leaks, (size_t)info->leakcap * sizeof(sl_Handle *));
    }
  }
  sl_rec_pin(h);
  info->leaks[info->nleaks++] = h;
}

static int handlegc(lua_State *L) {
  sl_Box *b = (sl_Box *)lua_touserdata(L, 1);
  if (b == NULL || lua_rawlen(L, 1) != sizeof(sl_Box) || b->t.pins != SL_BOXMAGIC || b->t.record == NULL) return 0;
  sl_StateInfo *info = sl_info(L);
  sl_Handle *h = (sl_Handle *)b->t.record;
  if (h->how == SL_OPEN) {
    queue_leak(info, h);
    unlink_box(info, b);
    b->t.how = SL_BY_GC;  /* a finalizer that resurrects the box sees it released */
  } else {
    unlink_box(info, b);
  }
  return 0;
}

void sl_pushhandlegc(lua_State *L) {
  lua_pushcfunction(L, handlegc);
}

sl_Handle *sl_leak_pop(lua_State *L) {
  sl_StateInfo *info = sl_info(L);
  if (info->leakhead >= info->nleaks) return NULL;
  return info->leaks[info->leakhead++];
}

sl_Handle *sl_tohandle(lua_State *L, int idx) {
  sl_Handle *h = sl_boxhandle(L, idx);
  if (h == NULL || h->kind < 0 || h->kind >= SL_MAXKINDS) return NULL;
  sl_StateInfo *info = sl_info(L);
  if (info->metatables[h->kind] == NULL || !lua_getmetatable(L, idx)) return NULL;
  const void *mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  return mt == info->metatables[h->kind] || mt == info->metatables[SL_MAXKINDS + h->kind] ? h : NULL;
}
