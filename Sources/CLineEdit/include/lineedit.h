/*
 * CLineEdit: the REPL's line editor, on libedit's readline interface. Only the terminal
 * plumbing lives here (history file, completion hook, Ctrl-C at the prompt); what a line
 * means is the ScopeLua library's business.
 */
#ifndef CLINEEDIT_H
#define CLINEEDIT_H

/* Returns the completions of `text` as a malloc'd, NULL-terminated array of malloc'd
 * strings (libedit frees them), or NULL for none. */
typedef char **(*le_completer)(const char *text);

/* Loads the history file (kept to `max_history` lines) and installs the completer. */
void le_setup(const char *history_file, int max_history, le_completer completer);

/* Reads a line with editing. Returns NULL at end of input (Ctrl-D); sets *cancelled when
 * Ctrl-C abandoned the line (the result is then an empty string). The caller frees it. */
char *le_readline(const char *prompt, int *cancelled);

/* While the prompt waits for a key: `timeout()` says how many milliseconds it may wait
 * (-1: forever) before calling `idle()`, which returns nonzero when it printed something
 * (the prompt and the line being typed are then drawn again). The REPL fires due timers
 * this way. Call it before le_setup (libedit chooses its key reader when it starts). */
typedef int (*le_timeout_fn)(void);
typedef int (*le_idle_fn)(void);
void le_set_idle(le_timeout_fn timeout, le_idle_fn idle);

/* Adds a line to the history and appends it to the history file. */
void le_remember(const char *line);

#endif
