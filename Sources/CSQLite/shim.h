#ifndef SCOPELUA_CSQLITE_SHIM_H
#define SCOPELUA_CSQLITE_SHIM_H
#include <sqlite3.h>

/* SQLITE_STATIC / SQLITE_TRANSIENT are casts of integers to function pointers, which
 * Swift cannot import as macros. */
static inline sqlite3_destructor_type scopelua_sqlite_static(void) { return SQLITE_STATIC; }
static inline sqlite3_destructor_type scopelua_sqlite_transient(void) { return SQLITE_TRANSIENT; }
#endif
