// See include/CDivvy.h. Only macros and variadics are wrapped here.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <sys/mman.h>
#include <linux/mman.h>

#include "CDivvy.h"

void *divvy_mremap(void *old_address, size_t old_size, size_t new_size, int flags) {
    return mremap(old_address, old_size, new_size, flags);
}

int divvy_map_hugetlb(void) { return MAP_HUGETLB; }
int divvy_map_huge_2mb(void) { return MAP_HUGE_2MB; }
int divvy_map_huge_1gb(void) { return MAP_HUGE_1GB; }
int divvy_map_noreserve(void) { return MAP_NORESERVE; }
int divvy_map_populate(void) { return MAP_POPULATE; }
int divvy_map_fixed_noreplace(void) { return MAP_FIXED_NOREPLACE; }
int divvy_mremap_maymove(void) { return MREMAP_MAYMOVE; }
int divvy_madv_hugepage(void) { return MADV_HUGEPAGE; }
int divvy_madv_nohugepage(void) { return MADV_NOHUGEPAGE; }
int divvy_madv_dontneed(void) { return MADV_DONTNEED; }
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 // include/uapi/asm-generic/mman-common.h; older headers lack it
#endif
int divvy_madv_populate_write(void) { return MADV_POPULATE_WRITE; }
int divvy_errno(void) { return errno; }

// --- Shared-memory regions (DivvyShm) -------------------------------------------------------------------------
#include <fcntl.h>

#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26) // include/uapi/linux/memfd.h: log2(size) << MFD_HUGE_SHIFT
#endif
#ifndef MFD_HUGE_1GB
#define MFD_HUGE_1GB (30U << 26)
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 // include/uapi/asm-generic/mman-common.h; older headers lack it
#endif

int divvy_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }
unsigned int divvy_mfd_cloexec(void) { return MFD_CLOEXEC; }
unsigned int divvy_mfd_allow_sealing(void) { return MFD_ALLOW_SEALING; }
unsigned int divvy_mfd_hugetlb(void) { return MFD_HUGETLB; }
unsigned int divvy_mfd_huge_2mb(void) { return MFD_HUGE_2MB; }
unsigned int divvy_mfd_huge_1gb(void) { return MFD_HUGE_1GB; }
int divvy_fallocate(int fd, int64_t offset, int64_t length) { return fallocate(fd, 0, (off_t)offset, (off_t)length); }
int divvy_f_add_seals(void) { return F_ADD_SEALS; }
int divvy_f_get_seals(void) { return F_GET_SEALS; }
int divvy_f_seal_seal(void) { return F_SEAL_SEAL; }
int divvy_f_seal_shrink(void) { return F_SEAL_SHRINK; }
int divvy_f_seal_grow(void) { return F_SEAL_GROW; }
int divvy_fcntl_int(int fd, int command, int argument) { return fcntl(fd, command, argument); }
int divvy_madv_populate_read(void) { return MADV_POPULATE_READ; }
void divvy_set_errno(int value) { errno = value; }
