// CDivvy: the few things Swift cannot express on its own. No logic lives here.
// Every symbol is prefixed `divvy_`.
#ifndef CDIVVY_H
#define CDIVVY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// mremap(2) is variadic in glibc; Swift cannot call variadic C functions.
/// Returns the new address, or MAP_FAILED with errno set.
void *divvy_mremap(void *old_address, size_t old_size, size_t new_size, int flags);

/// mmap(2) flag values that glibc only exposes as macros built from shifts, or only under _GNU_SOURCE.
int divvy_map_hugetlb(void);
int divvy_map_huge_2mb(void);
int divvy_map_huge_1gb(void);
int divvy_map_noreserve(void);
int divvy_map_populate(void);
int divvy_map_fixed_noreplace(void);
int divvy_mremap_maymove(void);
int divvy_madv_hugepage(void);
int divvy_madv_nohugepage(void);
int divvy_madv_dontneed(void);

/// madvise(2) MADV_POPULATE_WRITE (Linux 5.14): prefault page tables writable, failing cleanly if memory is short.
int divvy_madv_populate_write(void);

/// The errno of the calling thread (a macro around a TLS slot in glibc).
int divvy_errno(void);

/// Sets the calling thread's errno (the malloc-family adapter reports ENOMEM/EINVAL through it, as C does).
void divvy_set_errno(int value);

#ifdef __cplusplus
}
#endif

#endif
