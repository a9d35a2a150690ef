// The suite's stopwatch: runs one workload with a given LD_PRELOAD and reports what the kernel saw of it.
//
//   measure LIBRARY PROGRAM [ARGS...]     # LIBRARY "" (or "none") runs PROGRAM with the system's malloc
//
// Only the child gets LD_PRELOAD (set in its environment just before execv), so this program itself always runs on
// glibc and its own allocations never count. After the child's own output it prints one line:
//   measure <wall ms> <peak RSS KiB> <minor faults> <major faults> <user ms> <system ms> <exit status>
// Wall time is the child's whole life (fork to wait4), start-up and teardown included; the rest is wait4's rusage
// of that child alone.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static double ms(struct timeval t) { return (double)t.tv_sec * 1e3 + (double)t.tv_usec / 1e3; }

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: measure LIBRARY|\"\" PROGRAM [ARGS...]\n");
        return 2;
    }
    const char *library = argv[1];
    fflush(stdout);
    double start = now_ms();
    pid_t child = fork();
    if (child < 0) {
        perror("measure: fork");
        return 2;
    }
    if (child == 0) {
        if (library[0] != '\0' && strcmp(library, "none") != 0) setenv("LD_PRELOAD", library, 1);
        else unsetenv("LD_PRELOAD");
        execv(argv[2], argv + 2);
        perror("measure: execv");
        _exit(127);
    }
    int status;
    struct rusage usage;
    if (wait4(child, &status, 0, &usage) < 0) {
        perror("measure: wait4");
        return 2;
    }
    double wall = now_ms() - start;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("measure %.1f %ld %ld %ld %.0f %.0f %d\n", wall, usage.ru_maxrss, usage.ru_minflt, usage.ru_majflt,
           ms(usage.ru_utime), ms(usage.ru_stime), code);
    return code == 0 ? 0 : 1;
}
