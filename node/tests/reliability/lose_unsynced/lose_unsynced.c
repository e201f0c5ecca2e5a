/*
 * LD_PRELOAD shim: writes that a power cut could lose are kept in this process's memory until
 * the file is fsynced (fsync/fdatasync), closed or truncated:
 * - write() to files in a "db" folder whose name ends in ".log" (RocksDB's write-ahead logs;
 *   not the node's own stderr log);
 * - pwrite() to files in a "log" folder whose name ends in ".seg" (the Raft log's segments).
 * A SIGKILL then loses exactly what a power cut loses from those files: every byte written
 * since the last sync. (The page cache survives a plain SIGKILL, so without this a killed node
 * never loses anything.) Closed files are handed to the kernel unsynced, as a clean close
 * would; only a crash with the file open loses its tail. A pread() of a held file first hands
 * its held writes to the kernel, so the process reads what it wrote (those bytes then survive
 * a SIGKILL, which a power cut may also allow).
 *
 * For the control test only: with LOSE_UNSYNCED_LYING_SEGMENT_SYNC=1 an fsync of a log segment
 * keeps its held writes (a disk that acknowledges a sync it did not do), so a SIGKILL loses
 * entries the node acknowledged: the test shows the shim really holds segment writes.
 *
 * Build: cc -shared -fPIC -O2 -o lose_unsynced.so lose_unsynced.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FDS 4096

enum { UNKNOWN = 0, PLAIN, HELD, HELD_AT };

/* HELD: bytes appended in order. HELD_AT: a sequence of (offset, length, bytes) writes. */
struct held {
    int kind;
    char *buf;
    size_t len, cap;
};

struct at_header {
    off_t off;
    size_t count;
};

static struct held fds[MAX_FDS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int lying_segment_sync = -1;

static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_close)(int);
static int (*real_ftruncate)(int, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_pread64)(int, void *, size_t, off_t);

static void init(void) {
    if (!real_write) {
        real_write = dlsym(RTLD_NEXT, "write");
        real_fsync = dlsym(RTLD_NEXT, "fsync");
        real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
        real_close = dlsym(RTLD_NEXT, "close");
        real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
        real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
        real_pread64 = dlsym(RTLD_NEXT, "pread64");
    }
    if (lying_segment_sync < 0) {
        const char *v = getenv("LOSE_UNSYNCED_LYING_SEGMENT_SYNC");
        lying_segment_sync = v && strcmp(v, "1") == 0;
    }
}

/* Whether fd is a write-ahead log or a log segment (decided once per open file, from /proc). */
static int kind_of(int fd) {
    if (fd < 0 || fd >= MAX_FDS) return PLAIN;
    if (fds[fd].kind != UNKNOWN) return fds[fd].kind;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    int k = PLAIN;
    if (n > 4) {
        path[n] = 0;
        if (strcmp(path + n - 4, ".log") == 0 && strstr(path, "/db/")) k = HELD;
        if (strcmp(path + n - 4, ".seg") == 0 && strstr(path, "/log/")) k = HELD_AT;
    }
    fds[fd].kind = k;
    return k;
}

/* Hands held bytes to the kernel. Called with the lock held. */
static int drain(int fd) {
    struct held *h = &fds[fd];
    size_t off = 0;
    if (h->kind == HELD_AT) {
        while (off < h->len) {
            struct at_header a;
            memcpy(&a, h->buf + off, sizeof a);
            off += sizeof a;
            size_t done = 0;
            while (done < a.count) {
                ssize_t w = real_pwrite64(fd, h->buf + off + done, a.count - done,
                                          a.off + (off_t)done);
                if (w < 0) return -1;
                done += (size_t)w;
            }
            off += a.count;
        }
        h->len = 0;
        return 0;
    }
    while (off < h->len) {
        ssize_t w = real_write(fd, h->buf + off, h->len - off);
        if (w < 0) return -1;
        off += (size_t)w;
    }
    h->len = 0;
    return 0;
}

/* Appends to fd's held bytes. Called with the lock held. */
static int hold(int fd, const void *buf, size_t count) {
    struct held *h = &fds[fd];
    if (h->len + count > h->cap) {
        size_t cap = h->cap ? h->cap : 1 << 16;
        while (cap < h->len + count) cap *= 2;
        char *nb = realloc(h->buf, cap);
        if (!nb) return -1;
        h->buf = nb;
        h->cap = cap;
    }
    memcpy(h->buf + h->len, buf, count);
    h->len += count;
    return 0;
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    init();
    pthread_mutex_lock(&lock);
    if (kind_of(fd) != HELD_AT) {
        pthread_mutex_unlock(&lock);
        return real_pwrite64(fd, buf, count, offset);
    }
    struct at_header a = {offset, count};
    int rc = hold(fd, &a, sizeof a);
    if (rc == 0) rc = hold(fd, buf, count);
    pthread_mutex_unlock(&lock);
    return rc < 0 ? -1 : (ssize_t)count;
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    return pwrite64(fd, buf, count, offset);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    init();
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (fd >= 0 && fd < MAX_FDS && fds[fd].kind == HELD_AT) rc = drain(fd);
    pthread_mutex_unlock(&lock);
    return rc < 0 ? rc : real_pread64(fd, buf, count, offset);
}

ssize_t pread(int fd, void *buf, size_t count, off_t offset) {
    return pread64(fd, buf, count, offset);
}

ssize_t write(int fd, const void *buf, size_t count) {
    init();
    pthread_mutex_lock(&lock);
    if (kind_of(fd) != HELD) {
        pthread_mutex_unlock(&lock);
        return real_write(fd, buf, count);
    }
    int rc = hold(fd, buf, count);
    pthread_mutex_unlock(&lock);
    return rc < 0 ? -1 : (ssize_t)count;
}

static int sync_with(int fd, int (*f)(int)) {
    init();
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (fd >= 0 && fd < MAX_FDS && (fds[fd].kind == HELD || (fds[fd].kind == HELD_AT && !lying_segment_sync)))
        rc = drain(fd);
    pthread_mutex_unlock(&lock);
    return rc < 0 ? rc : f(fd);
}

int fsync(int fd) { init(); return sync_with(fd, real_fsync); }
int fdatasync(int fd) { init(); return sync_with(fd, real_fdatasync); }

int ftruncate(int fd, off_t len) {
    init();
    pthread_mutex_lock(&lock);
    if (fd >= 0 && fd < MAX_FDS && (fds[fd].kind == HELD || fds[fd].kind == HELD_AT)) drain(fd);
    pthread_mutex_unlock(&lock);
    return real_ftruncate(fd, len);
}

int close(int fd) {
    init();
    pthread_mutex_lock(&lock);
    if (fd >= 0 && fd < MAX_FDS) {
        if (fds[fd].kind == HELD || fds[fd].kind == HELD_AT) drain(fd);
        fds[fd].kind = UNKNOWN;
    }
    pthread_mutex_unlock(&lock);
    return real_close(fd);
}
