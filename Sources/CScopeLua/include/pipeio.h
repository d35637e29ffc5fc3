/*
 * The runner's I/O helpers (pipeio.c): loading a script from a descriptor that was
 * already opened (and checked) once, SIGPIPE while a pipeline writes, and writing the
 * pipeline's output in whole lines.
 */
#ifndef SCOPELUA_PIPEIO_H
#define SCOPELUA_PIPEIO_H

#include <stdio.h>
#include <pthread.h>

#include <lua.h>

/* luaL_loadfilex over an open descriptor, which it takes over (closed when it returns,
 * whatever the result): the same BOM and '#' first-line handling, the chunk name
 * "@<name>", the same "cannot read <name>: <reason>" (LUA_ERRFILE) on a read error.
 * Nothing is read twice, so a pipe (`<(...)`, a FIFO) loads as `lua` loads it.
 * Pushes the chunk or the error message; never raises. */
int sl_loadfd(lua_State *L, int fd, const char *name);
/* The same over a script's bytes read once (`--workers`: every worker loads the script
 * the main state loaded, also when it came from a pipe). `bytes` is only read. */
int sl_loadbytes(lua_State *L, const char *bytes, size_t len, const char *name);

/* Sets SIGPIPE to be ignored (a write to a pipe whose reader is gone then fails with
 * EPIPE instead of killing the process) and returns a token for sl_sigpipe_restore. */
int sl_sigpipe_ignore(void);
/* Puts back the SIGPIPE disposition that sl_sigpipe_ignore replaced. */
void sl_sigpipe_restore(int token);

/* ---- output in whole lines ---------------------------------------------------------
 * A reader of the output (`tail -f out.jsonl`, the next process in a pipe) never sees
 * half a line: stdio's own buffering writes a full buffer wherever it ends, mid-line.
 * sl_writeline writes `p[0..len)` and a newline to `f` so that every write(2) the stream
 * makes ends at the end of a line: what is buffered is flushed first when the line
 * would not fit, and a line longer than the whole buffer goes out in one writev of its
 * own. A line-buffered stream (a terminal) is left to stdio. A stream that is not a
 * terminal and has no buffer yet gets stdio's default one at the first call (until its
 * first write stdio reports a size of 0). Returns 0 or the errno. */
int sl_writeline(FILE *f, const char *p, size_t len);

/* The CPUs this process may run on (its affinity mask: a container's limit), at least 1
 * (cpus.c). */
int sl_usable_cpus(void);
/* Names a thread (its first 15 bytes; cpus.c). 0, or an errno value. */
int sl_name_thread(pthread_t thread, const char *name);

#endif
