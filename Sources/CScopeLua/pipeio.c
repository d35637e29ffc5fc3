/*
 * The runner's I/O helpers: see include/pipeio.h.
 */
#include "pipeio.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <lauxlib.h>

/* ---- loading a script from a descriptor --------------------------------------------
 * lauxlib's luaL_loadfilex, except that the file is already open: checking a script
 * by opening and reading it, then opening it again to load it, loses what the check
 * read from a pipe. Lua 5.4's getF / skipBOM / skipcomment, unchanged. */

typedef struct {
  int n;
  FILE *f;
  char buff[BUFSIZ];
} LoadF;

static const char *getF(lua_State *L, void *ud, size_t *size) {
  LoadF *lf = (LoadF *)ud;
  (void)L;
  if (lf->n > 0) {
    *size = (size_t)lf->n;
    lf->n = 0;
  } else {
    if (feof(lf->f)) return NULL;
    *size = fread(lf->buff, 1, sizeof(lf->buff), lf->f);
  }
  return lf->buff;
}

static int skipBOM(FILE *f) {
  int c = getc(f);
  if (c == 0xEF && getc(f) == 0xBB && getc(f) == 0xBF) return getc(f);
  return c;
}

static int skipcomment(FILE *f, int *cp) {
  int c = *cp = skipBOM(f);
  if (c == '#') {
    do { c = getc(f); } while (c != EOF && c != '\n');
    *cp = getc(f);
    return 1;
  }
  return 0;
}

static int errfile(lua_State *L, const char *what, const char *name, int fnameindex, int en) {
  lua_pushfstring(L, "cannot %s %s: %s", what, name, strerror(en));
  lua_remove(L, fnameindex);
  return LUA_ERRFILE;
}

/* The loading itself, from a stream that is closed here whatever the result. */
static int loadstream(lua_State *L, FILE *f, const char *name, int fnameindex) {
  LoadF lf;
  lf.f = f;
  lf.n = 0;
  int c;
  if (skipcomment(lf.f, &c)) lf.buff[lf.n++] = '\n';  /* keeps the line numbers */
  /* A binary chunk: lua reopens the file in binary mode, which is the same stream on
   * POSIX (and reopening would read a pipe twice). Only the added newline goes. */
  if (c == LUA_SIGNATURE[0]) lf.n = 0;
  if (c != EOF) lf.buff[lf.n++] = (char)c;
  errno = 0;
  int status = lua_load(L, getF, &lf, lua_tostring(L, -1), NULL);
  int readstatus = ferror(lf.f);
  int en = errno;
  fclose(lf.f);
  if (readstatus) {
    lua_settop(L, fnameindex);
    return errfile(L, "read", name, fnameindex, en);
  }
  lua_remove(L, fnameindex);
  return status;
}

int sl_loadfd(lua_State *L, int fd, const char *name) {
  int fnameindex = lua_gettop(L) + 1;
  lua_pushfstring(L, "@%s", name);
  FILE *f = fdopen(fd, "r");
  if (f == NULL) {
    int en = errno;
    close(fd);
    return errfile(L, "open", name, fnameindex, en);
  }
  return loadstream(L, f, name, fnameindex);
}

int sl_loadbytes(lua_State *L, const char *bytes, size_t len, const char *name) {
  int fnameindex = lua_gettop(L) + 1;
  lua_pushfstring(L, "@%s", name);
  /* fmemopen of 0 bytes fails on some C libraries: an empty script is an empty chunk. */
  static const char empty[1] = {0};
  FILE *f = len > 0 ? fmemopen((void *)bytes, len, "r") : fmemopen((void *)empty, 1, "r");
  if (f == NULL) return errfile(L, "open", name, fnameindex, errno);
  if (len == 0) (void)getc(f);  /* past the one NUL: at the end */
  return loadstream(L, f, name, fnameindex);
}

/* ---- SIGPIPE -------------------------------------------------------------------------- */

static struct sigaction saved_sigpipe[8];
static int saved_depth = 0;

int sl_sigpipe_ignore(void) {
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGPIPE, &sa, &old) != 0 || saved_depth >= 8) return -1;
  saved_sigpipe[saved_depth] = old;
  return saved_depth++;
}

void sl_sigpipe_restore(int token) {
  if (token < 0 || token != saved_depth - 1) return;
  saved_depth--;
  sigaction(SIGPIPE, &saved_sigpipe[token], NULL);
}

/* ---- output in whole lines ------------------------------------------------------------ */

/* The line and its newline in as few writev calls as the kernel allows (one for a
 * regular file), bypassing the (empty) buffer. */
static int writewhole(int fd, const char *p, size_t len) {
  char nl[1] = {'\n'};
  struct iovec iov[2] = {{(void *)p, len}, {nl, 1}};
  struct iovec *v = iov;
  int n = 2;
  while (n > 0) {
    ssize_t w = writev(fd, v, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    size_t done = (size_t)w;
    while (n > 0 && done >= v->iov_len) {
      done -= v->iov_len;
      v++;
      n--;
    }
    if (n > 0) {
      v->iov_base = (char *)v->iov_base + done;
      v->iov_len -= done;
    }
  }
  return 0;
}

/* The size of f's buffer. stdio allocates it at the first write, and until then says
 * 0: a stream that is not a terminal gets its (default) buffer now, so that lines are
 * buffered from the first one on. A terminal is left alone (stdio makes it
 * line-buffered at its first write; until then, each line is written whole). */
static size_t buffersize(FILE *f) {
  size_t capacity = __fbufsize(f);
  if (capacity == 0 && !isatty(fileno(f)) && setvbuf(f, NULL, _IOFBF, 0) == 0) capacity = __fbufsize(f);
  return capacity;
}

int sl_writeline(FILE *f, const char *p, size_t len) {
  errno = 0;
  size_t need = len + 1;
  if (!__flbf(f)) {
    size_t capacity = buffersize(f);
    size_t pending = __fpending(f);
    /* With at least one byte left after the line's text, the newline fits too: stdio
     * writes the buffer only when a byte finds it full. */
    if (pending + need > capacity) {
      if (pending > 0 && fflush(f) != 0) return errno ? errno : EIO;
      if (need > capacity) return writewhole(fileno(f), p, len);
    }
  }
  if (fwrite(p, 1, len, f) != len || putc('\n', f) == EOF) return errno ? errno : EIO;
  return 0;
}
