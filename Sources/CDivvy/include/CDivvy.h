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

// --- Unix sockets and event polling (DivvyTransport) ------------------------------------------------------------

/// sendmsg(2) of one datagram carrying one descriptor as SCM_RIGHTS ancillary data (CMSG_* are macros).
/// `flags` as for sendmsg (e.g. MSG_NOSIGNAL). Returns bytes sent, or -1 with errno set.
long divvy_send_with_fd(int socket, const void *buffer, size_t length, int descriptor, int flags);

/// recvmsg(2) of one datagram, taking at most one SCM_RIGHTS descriptor (received close-on-exec; any extra
/// descriptors are closed). `*descriptor` is -1 when none came. Returns bytes received, 0 on EOF, or -1 with errno
/// set. `*truncated` has bit 1 set when the datagram did not fit (MSG_TRUNC) and bit 2 when its ancillary data did
/// not (MSG_CTRUNC: the descriptors that did not fit were closed by the kernel).
long divvy_recv_with_fd(int socket, void *buffer, size_t length, int *descriptor, int *truncated, int flags);

/// sendmsg(2) of one datagram carrying `count` descriptors (at most 8) as one SCM_RIGHTS message.
long divvy_send_with_fds(int socket, const void *buffer, size_t length, const int *descriptors, int count, int flags);

/// recvmsg(2) of one datagram, taking up to `capacity` (at most 8) SCM_RIGHTS descriptors into `descriptors`
/// (received close-on-exec; any beyond `capacity` are closed); `*count` is how many were taken. Returns bytes
/// received, 0 on EOF, or -1 with errno set. `*truncated` as for `divvy_recv_with_fd`.
long divvy_recv_with_fds(int socket, void *buffer, size_t length, int *descriptors, int capacity, int *count,
                         int *truncated, int flags);

/// getsockopt(SO_PEERCRED): the peer's pid, uid and gid (struct ucred needs _GNU_SOURCE). Returns 0, or -1.
int divvy_peer_credentials(int socket, int32_t *pid, uint32_t *uid, uint32_t *gid);

/// getsockopt(SO_PEERGROUPS) (Linux 4.13): the peer's supplementary groups, at most `capacity`. Returns how many
/// there are (which may exceed `capacity`: call again with more room), or -1 with errno set.
int divvy_peer_groups(int socket, uint32_t *groups, int capacity);

/// epoll_ctl(2) without the packed `struct epoll_event` (packed on x86_64; Swift imports it awkwardly).
int divvy_epoll_ctl(int epoll, int operation, int descriptor, uint32_t events, uint64_t data);
/// epoll_wait(2) writing each ready event's data and event mask into two parallel arrays. Returns the count,
/// or -1 with errno set.
int divvy_epoll_wait(int epoll, uint64_t *data, uint32_t *events, int capacity, int timeout_ms);
/// epoll event bits and operations (EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLHUP, EPOLLERR; EPOLL_CTL_*).
uint32_t divvy_epollin(void);
uint32_t divvy_epollout(void);
uint32_t divvy_epollrdhup(void);
uint32_t divvy_epollhup(void);
uint32_t divvy_epollerr(void);
int divvy_epoll_ctl_add(void);
int divvy_epoll_ctl_mod(void);
int divvy_epoll_ctl_del(void);
/// epoll_create1(EPOLL_CLOEXEC). Returns the descriptor, or -1 with errno set.
int divvy_epoll_create(void);
/// eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK). Returns the descriptor, or -1 with errno set.
int divvy_eventfd(void);
/// pidfd_open(2) (Linux 5.3; glibc has no wrapper before 2.36): a descriptor that becomes readable when the
/// process exits. Returns it, or -1 with errno set (ESRCH: no such process; ENOSYS: kernel too old).
int divvy_pidfd_open(int pid);
/// getsockopt(SO_PEERPIDFD) (Linux 6.5): a pidfd for the process that connected a Unix socket, taken by the
/// kernel at connect time, so it cannot name a later process that reused the pid. Returns it (close-on-exec), or -1
/// with errno set (ENOPROTOOPT: kernel too old; ESRCH: the peer has exited).
int divvy_peer_pidfd(int socket);
/// pidfd_send_signal(2) (Linux 5.1) with no siginfo and no flags: signals exactly the process the pidfd names, or
/// fails with ESRCH once it has exited (never a process that reused its pid). Returns 0, or -1 with errno set
/// (EPERM: not allowed to signal it; ENOSYS: kernel too old).
int divvy_pidfd_send_signal(int pidfd, int signal);

/// pthread_setname_np(3) on the calling thread (a _GNU_SOURCE function): `name` is at most 15 bytes. Returns 0 or
/// an error number (ERANGE: too long).
int divvy_set_thread_name(const char *name);
/// accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK (declared only under _GNU_SOURCE).
int divvy_accept_nonblocking(int socket);

#ifdef __cplusplus
}
#endif

#endif
