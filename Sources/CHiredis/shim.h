#ifndef SCOPELUA_CHIREDIS_SHIM_H
#define SCOPELUA_CHIREDIS_SHIM_H
/* Debian's libhiredis-dev (0.14.1 on bookworm): only its API of that version is used
 * (no RESP3, no redisConnectWithOptions, no TLS). The redis module drives the context
 * in non-blocking mode itself (ARCHITECTURE.md, "Waiting on a server"). */
#include <hiredis/hiredis.h>

/* The context's error text: a fixed char array, which Swift imports as a 128-tuple. */
static inline const char *scopelua_redis_errstr(const redisContext *c) { return c->errstr; }
#endif
