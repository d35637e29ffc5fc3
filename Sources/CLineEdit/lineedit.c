#include "lineedit.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

void le_remember(const char *line) {
  if (line == NULL || *line == '\0') return;
  add_history(line);
  if (history_path != NULL) {
    write_history(history_path);
    history_truncate_file(history_path, history_max);
  }
}
