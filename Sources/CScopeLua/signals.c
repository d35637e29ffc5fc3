/*
 * Interrupting Lua from outside: the hook lua.c uses on Ctrl-C, the stop signals of a
 * run (SIGINT / SIGTERM, grace period) and the REPL's Ctrl-C. Everything a signal
 * handler touches here is async-signal-safe.
 */
#include "cscopelua.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

/* The hook lua.c installs on Ctrl-C: raises inside Lua, at a safe point. */
static void stophook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

void sl_clearinterrupt(lua_State *L) {
  lua_sethook(L, NULL, 0, 0);
}

void sl_interrupt(lua_State *L) {
  lua_sethook(L, stophook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
}

/* ---- stopping a run --------------------------------------------------------------- */

static volatile sig_atomic_t stop_signal = 0;
static volatile sig_atomic_t stop_forced = 0;
static lua_State *volatile stop_state = NULL;
static volatile unsigned stop_grace = 10;
static int stop_pipe[2] = {-1, -1};

static void force_stop(void) {
  stop_forced = 1;
  if (stop_state != NULL) sl_interrupt(stop_state);  /* lua_sethook is signal-safe */
}

static void on_stop_signal(int sig) {
  int saved = errno;
  if (sig == SIGALRM) {
    if (stop_signal != 0) force_stop();
  } else if (stop_signal == 0) {
    stop_signal = sig;
    alarm(stop_grace);  /* the stop must finish within the grace period */
    if (stop_pipe[1] >= 0) { char c = 1; (void)!write(stop_pipe[1], &c, 1); }
  } else {
    force_stop();
  }
  errno = saved;
}

void sl_stop_install(lua_State *L, unsigned grace) {
  stop_grace = grace > 0 ? grace : 1;
  if (stop_pipe[0] < 0 && pipe(stop_pipe) == 0) {
    for (int i = 0; i < 2; i++) {
      fcntl(stop_pipe[i], F_SETFL, fcntl(stop_pipe[i], F_GETFL) | O_NONBLOCK);
      fcntl(stop_pipe[i], F_SETFD, FD_CLOEXEC);
    }
  }
  stop_state = L;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  /* A stop signal must not fail a write the run is doing (EINTR would lose the output
   * in stdio's buffer): interrupted system calls resume. poll() still returns EINTR,
   * and the stop pipe wakes the reader anyway. */
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGALRM, &sa, NULL);
  /* A parent may have started us with these blocked (some process launchers do). */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGALRM);
  sigprocmask(SIG_UNBLOCK, &set, NULL);
}

void sl_stop_uninstall(void) {
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGALRM, SIG_DFL);
  alarm(0);
  stop_state = NULL;
}

int sl_stop_signal(void) { return stop_signal; }
int sl_stop_forced(void) { return stop_forced; }
int sl_stop_fd(void) { return stop_pipe[0]; }

void sl_stop_reset(void) {
  stop_signal = 0;
  stop_forced = 0;
  if (stop_pipe[0] >= 0) { char buf[64]; while (read(stop_pipe[0], buf, sizeof buf) > 0) {} }
}

/* ---- REPL interrupts ---------------------------------------------------------------- */

static lua_State *volatile repl_state = NULL;

static void on_repl_sigint(int sig) {
  signal(sig, SIG_DFL);  /* a second Ctrl-C before the hook fires ends the process */
  if (repl_state != NULL) sl_interrupt(repl_state);
}

void sl_repl_interrupt_install(lua_State *L) {
  repl_state = L;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_repl_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_UNBLOCK, &set, NULL);
}

void sl_repl_interrupt_uninstall(void) {
  signal(SIGINT, SIG_IGN);
  if (repl_state != NULL) sl_clearinterrupt(repl_state);
  repl_state = NULL;
}

void sl_repl_interrupt_now(void) {
  if (repl_state != NULL) sl_interrupt(repl_state);
}
