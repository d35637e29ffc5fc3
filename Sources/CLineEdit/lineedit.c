#include "lineedit.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <unistd.h>
#include <editline/readline.h>

static char *history_path = NULL;
static int history_max = 1000;
static le_completer completer = NULL;
static volatile sig_atomic_t cancelled_flag = 0;

/* libedit asks for completions of the word before the cursor; words include dots and
 * colons so that `string.fo` and `:res` complete as a whole. */
static char **complete(const char *text, int start, int end) {
  (void)start; (void)end;
  rl_attempted_completion_over = 1;  /* no file-name completion as a fallback */
  return completer != NULL ? completer(text) : NULL;
}

void le_setup(const char *history_file, int max_history, le_completer fn) {
  completer = fn;
  history_max = max_history;
  rl_attempted_completion_function = complete;
  rl_basic_word_break_characters = " \t\n\"'`@$><=;|&{(,[+-*/%^#~";
  using_history();
  stifle_history(max_history);
  if (history_file != NULL) {
    history_path = strdup(history_file);
    read_history(history_path);
  }
}

/* Why a handler: Ctrl-C at the prompt abandons the line (as in lua.c's REPL) instead of
 * ending the process. The read is interrupted; readline returns and we report it. */
static void on_sigint(int sig) {
  (void)sig;
  cancelled_flag = 1;
}

char *le_readline(const char *prompt, int *cancelled) {
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old);  /* no SA_RESTART: the read returns */
  cancelled_flag = 0;
  char *line = readline(prompt);
  sigaction(SIGINT, &old, NULL);
  *cancelled = cancelled_flag;
  if (cancelled_flag) {
    free(line);
    return strdup("");
  }
  return line;
}

static le_timeout_fn idle_timeout = NULL;
static le_idle_fn idle_work = NULL;

/* Why: libedit blocks in read(2) for each key, so nothing else could happen at the
 * prompt. This getc waits with poll instead, running the idle work (due timers) each
 * time the wait ends without a key. An interrupted wait (Ctrl-C) ends the read as
 * libedit's own getc would, so le_readline still sees the cancel. */
static int idle_getc(FILE *f) {
  int fd = fileno(f);
  for (;;) {
    int ms = idle_timeout != NULL ? idle_timeout() : -1;
    struct pollfd p = { .fd = fd, .events = POLLIN, .revents = 0 };
    int n = poll(&p, 1, ms);
    if (n < 0) {
      if (errno == EINTR && !cancelled_flag) continue;
      return EOF;
    }
    if (n == 0) {
      /* A timer is due: what it prints goes on lines of its own, above the prompt, which
       * is then drawn again with the line typed so far. */
      fputs("\r\033[K", stdout);
      fflush(stdout);
      idle_work();
      fflush(stdout);
      rl_forced_update_display();
      continue;
    }
    unsigned char c;
    ssize_t r = read(fd, &c, 1);
    if (r == 1) return c;
    if (r < 0 && errno == EINTR && !cancelled_flag) continue;
    return EOF;
  }
}

void le_set_idle(le_timeout_fn timeout, le_idle_fn idle) {
  idle_timeout = timeout;
  idle_work = idle;
  rl_getc_function = idle_getc;
}

void le_remember(const char *line) {
  if (line == NULL || *line == '\0') return;
  add_history(line);
  if (history_path != NULL) {
    write_history(history_path);
    history_truncate_file(history_path, history_max);
  }
}
