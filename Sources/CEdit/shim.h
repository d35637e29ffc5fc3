#ifndef SCOPELUA_CEDIT_SHIM_H
#define SCOPELUA_CEDIT_SHIM_H
#include <stdio.h>
#include <editline/readline.h>
#endif
