/*
 * The runner's I/O helpers (pipeio.c): loading a script from a descriptor that was
 * already opened (and checked) once, and SIGPIPE while a pipeline writes.
 */
#ifndef SCOPELUA_PIPEIO_H
#define SCOPELUA_PIPEIO_H

#include <lua.h>

/* luaL_loadfilex over an open descriptor, which it takes over (closed when it returns,
 * whatever the result): the same BOM and '#' first-line handling, the chunk name
 * "@<name>", the same "cannot read <name>: <reason>" (LUA_ERRFILE) on a read error.
 * Nothing is read twice, so a pipe (`<(...)`, a FIFO) loads as `lua` loads it.
 * Pushes the chunk or the error message; never raises. */
int sl_loadfd(lua_State *L, int fd, const char *name);

/* Sets SIGPIPE to be ignored (a write to a pipe whose reader is gone then fails with
 * EPIPE instead of killing the process) and returns a token for sl_sigpipe_restore. */
int sl_sigpipe_ignore(void);
/* Puts back the SIGPIPE disposition that sl_sigpipe_ignore replaced. */
void sl_sigpipe_restore(int token);

#endif
