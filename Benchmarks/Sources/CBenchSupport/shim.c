// Definitions for include/CBenchSupport.h.
#include "CBenchSupport.h"

uint64_t divvy_bench_word;
