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

// --- Shared-memory regions (DivvyShm) -------------------------------------------------------------------------

/// memfd_create(2): glibc declares it only under _GNU_SOURCE. Returns the descriptor, or -1 with errno set.
int divvy_memfd_create(const char *name, unsigned int flags);

/// memfd_create(2) flag values (MFD_*), macros in <sys/mman.h> / <linux/memfd.h>.
unsigned int divvy_mfd_cloexec(void);
unsigned int divvy_mfd_allow_sealing(void);
unsigned int divvy_mfd_hugetlb(void);
unsigned int divvy_mfd_huge_2mb(void);
unsigned int divvy_mfd_huge_1gb(void);

/// fallocate(2) with mode 0: allocates backing blocks for the range (extending the file if the range ends past it).
/// Declared only under _GNU_SOURCE. Returns 0, or -1 with errno set.
int divvy_fallocate(int fd, int64_t offset, int64_t length);

/// fcntl(2) file-sealing commands and seals (F_ADD_SEALS, F_GET_SEALS, F_SEAL_*), _GNU_SOURCE macros.
int divvy_f_add_seals(void);
int divvy_f_get_seals(void);
int divvy_f_seal_seal(void);
int divvy_f_seal_shrink(void);
int divvy_f_seal_grow(void);

/// fcntl(2) with an int argument (fcntl is variadic in glibc). Returns its result, or -1 with errno set.
int divvy_fcntl_int(int fd, int command, int argument);

/// madvise(2) MADV_POPULATE_READ (Linux 5.14): prefault page tables readable (for read-only mappings).
int divvy_madv_populate_read(void);
/// Sets the calling thread's errno (the malloc-family adapter reports ENOMEM/EINVAL through it, as C does).
void divvy_set_errno(int value);

#ifdef __cplusplus
}
#endif

#endif
