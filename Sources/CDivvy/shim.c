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
void divvy_set_errno(int value) { errno = value; }
