/*
 * The C half of handle metatables: the hot-path caches (acquisition sites, timer labels)
 * and `__close`, which releases timer.measure handles without entering Swift. Records,
 * boxes and the finalizer are in records.c.
 */
#include "cscopelua.h"

#include <stdlib.h>
#include <string.h>

/* Caches `value` for the object on top of the stack (popped), pinning it in slot
 * `slot + 1` of the table `pins` refers to. The table has SL_CACHE preallocated array
 * slots, so nothing is allocated and nothing can raise. */
static void cacheput(lua_State *L, sl_CacheEntry *cache, int pins, int32_t value) {
  const void *key = lua_topointer(L, -1);
  int slot = sl_cacheslot(key);
  lua_rawgeti(L, LUA_REGISTRYINDEX, pins);
  lua_rotate(L, -2, 1);
  lua_rawseti(L, -2, slot + 1);
  lua_pop(L, 1);
  cache[slot].key = key;
  cache[slot].value = value;
}

int sl_site(lua_State *L, sl_Site *out) {
  sl_StateInfo *info = sl_info(L);
  lua_Debug ar;
  for (int level = 1; level < 12 && lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "fl", &ar);  /* pushes the function */
    if (ar.currentline <= 0) {
      lua_pop(L, 1);
      continue;
    }
    out->line = ar.currentline;
    out->source = sl_cacheget(info->sites, lua_topointer(L, -1));
    if (out->source >= 0) {
      lua_pop(L, 1);
      return 1;
    }
    lua_pushvalue(L, -1);
    lua_getinfo(L, ">S", &ar);  /* pops the copy */
    memcpy(out->short_src, ar.short_src, LUA_IDSIZE);
    return 2;                   /* the function stays for sl_site_remember */
  }
  return 0;
}

void sl_site_remember(lua_State *L, int32_t source) {
  sl_StateInfo *info = sl_info(L);
  cacheput(L, info->sites, info->sitepins, source);
}

int32_t sl_label_lookup(lua_State *L, int idx) {
  return sl_cacheget(sl_info(L)->labels, lua_topointer(L, idx));
}

void sl_label_remember(lua_State *L, int32_t index) {
  sl_StateInfo *info = sl_info(L);
  cacheput(L, info->labels, info->labelpins, index);
}

/* Why C: leaving a `<close>` block is the hot path; a timer.measure handle is released
 * without entering Swift. Upvalues: Swift's release, the released twin metatable. */
static int handleclose(lua_State *L) {
  sl_Box *b = (sl_Box *)lua_touserdata(L, 1);
  if (b == NULL || lua_rawlen(L, 1) != sizeof(sl_Box) || b->t.pins != SL_BOXMAGIC || b->t.record == NULL) return 0;
  sl_Handle *h = (sl_Handle *)b->t.record;
  if (h->how != SL_OPEN) {  /* released by its scope meanwhile: only the box is left */
    sl_detach(L, 1);
    return 0;
  }
  /* The size and the magic prove it is a box: a script cannot make a userdata that
   * passes them, even by giving any value a handle metatable with the debug library.
   * A box wearing another kind's metatable is released as what its record says it is
   * (the record, not the metatable, decides), so no metatable check is needed here. */
  if (sl_closetimer(L, b)) return 0;
  return sl_enterswift(L, (sl_SwiftFunction)lua_touserdata(L, lua_upvalueindex(1)));
}

void sl_pushhandleclose(lua_State *L, sl_SwiftFunction release) {
  lua_pushlightuserdata(L, (void *)release);
  lua_pushnil(L);  /* the released twin metatable, set with sl_settwin */
  lua_pushcclosure(L, handleclose, 2);
}

void sl_settwin(lua_State *L, int close, int twin) {
  close = lua_absindex(L, close);
  lua_pushvalue(L, twin);
  lua_setupvalue(L, close, 2);
}

