/*
 * LD_PRELOAD shim: a disk that fails. Once FAIL_IO_AFTER_BYTES bytes were written to files
 * whose path contains FAIL_IO_PATH (e.g. "/log/" for the Raft log's segments, "/db/" for
 * RocksDB), the call named by FAIL_IO_CALL fails on those files with FAIL_IO_ERRNO:
 * - FAIL_IO_CALL=write: write, pwrite and pwrite64 return -1 (nothing written);
 * - FAIL_IO_CALL=fsync: fsync and fdatasync return -1 (what was written may or may not be
 *   on the disk, as after a real failed fsync).
 * FAIL_IO_ERRNO is ENOSPC or EIO. The failure stays (a full or broken disk does not heal by
 * itself); a restart without the shim is the disk made whole again.
 *
 * Build: cc -shared -fPIC -O2 -o fail_io.so fail_io.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FDS 4096

enum { UNKNOWN = 0, PLAIN, WATCHED };

static unsigned char kinds[MAX_FDS];
static atomic_ullong written;
static unsigned long long after = (unsigned long long)-1;
static const char *path_part = "";
static int fail_errno = EIO;
static int fail_writes, fail_syncs;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_close)(int);

static void setup(void) {
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_close = dlsym(RTLD_NEXT, "close");
    const char *v = getenv("FAIL_IO_AFTER_BYTES");
    if (v) after = strtoull(v, NULL, 10);
    v = getenv("FAIL_IO_PATH");
    if (v) path_part = v;
    v = getenv("FAIL_IO_ERRNO");
    if (v && strcmp(v, "ENOSPC") == 0) fail_errno = ENOSPC;
    v = getenv("FAIL_IO_CALL");
    fail_writes = v && strcmp(v, "write") == 0;
    fail_syncs = v && strcmp(v, "fsync") == 0;
}

static void init(void) { pthread_once(&once, setup); }

/* Whether fd's file path contains FAIL_IO_PATH (decided once per open file). */
static int watched(int fd) {
    if (fd < 0 || fd >= MAX_FDS || !*path_part) return 0;
    if (kinds[fd] == UNKNOWN) {
        char link[64], path[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        int k = PLAIN;
        if (n > 0) {
            path[n] = 0;
            if (strstr(path, path_part)) k = WATCHED;
        }
        kinds[fd] = (unsigned char)k;
    }
    return kinds[fd] == WATCHED;
}

static int tripped(void) { return atomic_load(&written) >= after; }

/* Counts a write to a watched file; -1 (errno set) if writes fail by now. */
static int before_write(int fd, size_t count) {
    if (!watched(fd)) return 0;
    if (fail_writes && tripped()) {
        errno = fail_errno;
        return -1;
    }
    atomic_fetch_add(&written, count);
    return 0;
}

ssize_t write(int fd, const void *buf, size_t count) {
    init();
    if (before_write(fd, count) < 0) return -1;
    return real_write(fd, buf, count);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    init();
    if (before_write(fd, count) < 0) return -1;
    return real_pwrite64(fd, buf, count, offset);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    return pwrite64(fd, buf, count, offset);
}

static int sync_with(int fd, int (*f)(int)) {
    init();
    if (fail_syncs && watched(fd) && tripped()) {
        errno = fail_errno;
        return -1;
    }
    return f(fd);
}

int fsync(int fd) { return sync_with(fd, real_fsync); }
int fdatasync(int fd) {
    init();
    return sync_with(fd, real_fdatasync);
}

int close(int fd) {
    init();
    if (fd >= 0 && fd < MAX_FDS) kinds[fd] = UNKNOWN;
    return real_close(fd);
}
