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

// --- Unix sockets and event polling (DivvyTransport) ------------------------------------------------------------
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>

long divvy_send_with_fds(int socket, const void *buffer, size_t length, const int *descriptors, int count, int flags) {
    if (count < 0 || count > 8) { errno = EINVAL; return -1; }
    struct iovec io = { .iov_base = (void *)buffer, .iov_len = length };
    union { char bytes[CMSG_SPACE(sizeof(int) * 8)]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = { .msg_iov = &io, .msg_iovlen = 1 };
    if (count > 0) {
        message.msg_control = control.bytes;
        message.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
        memcpy(CMSG_DATA(header), descriptors, sizeof(int) * (size_t)count);
    }
    return (long)sendmsg(socket, &message, flags);
}

long divvy_recv_with_fds(int socket, void *buffer, size_t length, int *descriptors, int capacity, int *count,
                         int *truncated, int flags) {
    struct iovec io = { .iov_base = buffer, .iov_len = length };
    union { char bytes[CMSG_SPACE(sizeof(int) * 8)]; struct cmsghdr align; } control;
    struct msghdr message = { .msg_iov = &io, .msg_iovlen = 1,
                              .msg_control = control.bytes, .msg_controllen = sizeof control.bytes };
    *count = 0;
    *truncated = 0;
    ssize_t received = recvmsg(socket, &message, flags | MSG_CMSG_CLOEXEC);
    if (received < 0) return -1;
    for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
        size_t n = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(header) + i * sizeof(int), sizeof(int));
            if (*count < capacity) descriptors[(*count)++] = fd; else close(fd);
        }
    }
    // Bit 1: the data was cut (MSG_TRUNC); bit 2: the control data was cut (MSG_CTRUNC: descriptors were lost,
    // the kernel closed them).
    if (message.msg_flags & MSG_TRUNC) *truncated |= 1;
    if (message.msg_flags & MSG_CTRUNC) *truncated |= 2;
    return (long)received;
}

long divvy_send_with_fd(int socket, const void *buffer, size_t length, int descriptor, int flags) {
    return divvy_send_with_fds(socket, buffer, length, &descriptor, 1, flags);
}

long divvy_recv_with_fd(int socket, void *buffer, size_t length, int *descriptor, int *truncated, int flags) {
    int count = 0;
    long received = divvy_recv_with_fds(socket, buffer, length, descriptor, 1, &count, truncated, flags);
    if (count == 0) *descriptor = -1;
    return received;
}

int divvy_peer_credentials(int socket, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred credentials;
    socklen_t size = sizeof credentials;
    if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &size) != 0) return -1;
    *pid = credentials.pid;
    *uid = credentials.uid;
    *gid = credentials.gid;
    return 0;
}

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59 // include/uapi/asm-generic/socket.h; older headers lack it
#endif
int divvy_peer_groups(int socket, uint32_t *groups, int capacity) {
    socklen_t size = (socklen_t)(sizeof(uint32_t) * (size_t)(capacity > 0 ? capacity : 0));
    if (getsockopt(socket, SOL_SOCKET, SO_PEERGROUPS, groups, &size) == 0) return (int)(size / sizeof(uint32_t));
    if (errno == ERANGE) return (int)(size / sizeof(uint32_t));
    return -1;
}

int divvy_epoll_ctl(int epoll, int operation, int descriptor, uint32_t events, uint64_t data) {
    struct epoll_event event = { .events = events, .data = { .u64 = data } };
    return epoll_ctl(epoll, operation, descriptor, &event);
}

int divvy_epoll_wait(int epoll, uint64_t *data, uint32_t *events, int capacity, int timeout_ms) {
    struct epoll_event ready[64];
    if (capacity > 64) capacity = 64;
    int count = epoll_wait(epoll, ready, capacity, timeout_ms);
    for (int i = 0; i < count; i++) {
        data[i] = ready[i].data.u64;
        events[i] = ready[i].events;
    }
    return count;
}

uint32_t divvy_epollin(void) { return EPOLLIN; }
uint32_t divvy_epollout(void) { return EPOLLOUT; }
uint32_t divvy_epollrdhup(void) { return EPOLLRDHUP; }
uint32_t divvy_epollhup(void) { return EPOLLHUP; }
uint32_t divvy_epollerr(void) { return EPOLLERR; }
int divvy_epoll_ctl_add(void) { return EPOLL_CTL_ADD; }
int divvy_epoll_ctl_mod(void) { return EPOLL_CTL_MOD; }
int divvy_epoll_ctl_del(void) { return EPOLL_CTL_DEL; }
int divvy_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
int divvy_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
int divvy_accept_nonblocking(int socket) { return accept4(socket, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); }

#include <sys/syscall.h>
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 // include/uapi/asm-generic/unistd.h; older headers lack it
#endif
int divvy_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424 // include/uapi/asm-generic/unistd.h; older headers lack it
#endif
int divvy_pidfd_send_signal(int pidfd, int signal) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0);
}
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 // include/uapi/asm-generic/socket.h; older headers lack it
#endif
int divvy_peer_pidfd(int socket) {
    int pidfd = -1;
    socklen_t size = sizeof pidfd;
    if (getsockopt(socket, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &size) != 0) return -1;
    return pidfd;
}

#include <pthread.h>
int divvy_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }
