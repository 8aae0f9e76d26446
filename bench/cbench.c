/*
 * The C baselines and the event producers for bench/run.py.
 *
 * bench/run.py compiles this file with gcc into a temporary directory at
 * every run, so each figure it prints is a ratio taken against this reader
 * on the same machine, in the same minute.
 *
 *   cbench drain-fd  MNT N     read + readlink(/proc/self/fd/N) + close per event
 *   cbench drain-fid MNT N     FID mode (DFID_NAME): walk the records, find the name
 *   cbench latency-fd MNT N    blocking reads; per event: "index recv_ns" on stdout
 *   cbench create DIR N        create (and close) files DIR/f0000000 ... in order
 *   cbench create-unlink DIR N create N files, then unlink them all
 *   cbench drain-mixed MNT N   as drain-fid, for the mixed burst's events, until the sentinel
 *   cbench mixed DIR N DIRS    DIRS directories, N files spread over them: each created and
 *                              written, then each chmod-ed, renamed, unlinked; then the
 *                              sentinel file DIR/zz-end
 *   cbench pace DIR N RATE     create N files at RATE per second; "index sent_ns" on stdout
 *   cbench spread DIR N DIRS   DIRS directories DIR/dK, N files spread over them, each
 *                              directory's files created, then unlinked, then it is removed
 *
 * The drain readers set up their group (UNLIMITED_QUEUE, so a pre-filled
 * backlog is not cut at 16384 events), print "ready", wait for a line on
 * stdin (the producer has finished by then), drain N events and print
 * "events <count> ns <elapsed> cpu_ns <cpu time> chars <path bytes seen>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (256 * 1024)

static unsigned char buf[BUF_SIZE] __attribute__((aligned(8)));

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static int setup(unsigned init_flags, unsigned mark_flags, uint64_t mask, const char *mnt)
{
    int fd = fanotify_init(init_flags | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE | O_CLOEXEC);
    if (fd < 0)
        die("fanotify_init");
    if (fanotify_mark(fd, FAN_MARK_ADD | mark_flags, mask, AT_FDCWD, mnt) < 0)
        die("fanotify_mark");
    return fd;
}

static void wait_for_go(void)
{
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin))
        exit(1);
}

/* read() once; waits with poll() when the (non-blocking) queue is empty. */
static ssize_t read_some(int fd)
{
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0)
            return n;
        if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 5000) == 0) {
                fprintf(stderr, "cbench: no event for 5 s\n");
                return 0;
            }
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        die("read");
    }
}

/* The fd path: what fatrace does per event. */
static int drain_fd(const char *mnt, long want)
{
    int fd = setup(FAN_CLASS_NOTIF | FAN_UNLIMITED_QUEUE | FAN_NONBLOCK, FAN_MARK_MOUNT,
                   FAN_CLOSE_WRITE, mnt);
    long got = 0, chars = 0;
    char link[32], path[PATH_MAX];
    int64_t t0, c0;

    wait_for_go();
    t0 = now_ns();
    c0 = cpu_ns();
    while (got < want) {
        ssize_t n = read_some(fd);
        struct fanotify_event_metadata *m = (void *)buf;
        if (n == 0)
            break;
        for (; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
            if (m->fd >= 0) {
                snprintf(link, sizeof link, "/proc/self/fd/%d", m->fd);
                ssize_t r = readlink(link, path, sizeof path - 1);
                if (r > 0)
                    chars += r;
                close(m->fd);
            }
            got++;
        }
    }
    printf("events %ld ns %lld cpu_ns %lld chars %ld\n", got, (long long)(now_ns() - t0),
           (long long)(cpu_ns() - c0), chars);
    return 0;
}

/* FID + DFID_NAME: no fds; find the name record of each event. */
static int drain_fid(const char *mnt, long want)
{
    int fd = setup(FAN_CLASS_NOTIF | FAN_UNLIMITED_QUEUE | FAN_NONBLOCK | FAN_REPORT_DFID_NAME,
                   FAN_MARK_FILESYSTEM, FAN_CREATE | FAN_DELETE, mnt);
    long got = 0, chars = 0;
    int64_t t0, c0;

    wait_for_go();
    t0 = now_ns();
    c0 = cpu_ns();
    while (got < want) {
        ssize_t n = read_some(fd);
        struct fanotify_event_metadata *m = (void *)buf;
        if (n == 0)
            break;
        for (; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
            unsigned char *p = (unsigned char *)m + m->metadata_len;
            unsigned char *end = (unsigned char *)m + m->event_len;
            while (p + sizeof(struct fanotify_event_info_header) <= end) {
                struct fanotify_event_info_header *h = (void *)p;
                if (h->len < sizeof *h)
                    break;
                if (h->info_type == FAN_EVENT_INFO_TYPE_DFID_NAME) {
                    struct fanotify_event_info_fid *fid = (void *)p;
                    struct file_handle *fh = (void *)fid->handle;
                    chars += strlen((char *)fh->f_handle + fh->handle_bytes);
                }
                p += h->len;
            }
            got++;
        }
    }
    printf("events %ld ns %lld cpu_ns %lld chars %ld\n", got, (long long)(now_ns() - t0),
           (long long)(cpu_ns() - c0), chars);
    return 0;
}

static void create_one_path(const char *path)
{
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die(path);
    close(fd);
}

#define SENTINEL "zz-end"
#define MIXED_MASK                                                                        \
    (FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_ATTRIB | FAN_CLOSE_WRITE  \
     | FAN_ONDIR)

/* The mixed burst (see mixed()): like drain_fid, until the sentinel's name,
 * counting what it read (the kernel merges some events of one file, so the
 * count is only known at the end). */
static int drain_mixed(const char *mnt)
{
    int fd = setup(FAN_CLASS_NOTIF | FAN_UNLIMITED_QUEUE | FAN_NONBLOCK | FAN_REPORT_DFID_NAME,
                   FAN_MARK_FILESYSTEM, MIXED_MASK, mnt);
    long got = 0, chars = 0;
    int done = 0;
    int64_t t0, c0;

    wait_for_go();
    t0 = now_ns();
    c0 = cpu_ns();
    while (!done) {
        ssize_t n = read_some(fd);
        struct fanotify_event_metadata *m = (void *)buf;
        if (n == 0)
            break;
        for (; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
            unsigned char *p = (unsigned char *)m + m->metadata_len;
            unsigned char *end = (unsigned char *)m + m->event_len;
            while (p + sizeof(struct fanotify_event_info_header) <= end) {
                struct fanotify_event_info_header *h = (void *)p;
                if (h->len < sizeof *h)
                    break;
                if (h->info_type == FAN_EVENT_INFO_TYPE_DFID_NAME) {
                    struct fanotify_event_info_fid *fid = (void *)p;
                    struct file_handle *fh = (void *)fid->handle;
                    const char *name = (char *)fh->f_handle + fh->handle_bytes;
                    size_t len = strlen(name);
                    chars += len;
                    if (len == sizeof SENTINEL - 1 && !memcmp(name, SENTINEL, len))
                        done = 1;
                }
                p += h->len;
            }
            got++;
        }
    }
    printf("events %ld ns %lld cpu_ns %lld chars %ld\n", got, (long long)(now_ns() - t0),
           (long long)(cpu_ns() - c0), chars);
    return 0;
}

static int mixed(const char *dir, long n, long dirs)
{
    char path[PATH_MAX], to[PATH_MAX];
    long i;
    if (dirs < 1)
        dirs = 1;
    for (i = 0; i < dirs; i++) {
        snprintf(path, sizeof path, "%s/d%04ld", dir, i);
        if (mkdir(path, 0755) < 0)
            die(path);
    }
    for (i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/d%04ld/f%07ld", dir, i % dirs, i);
        int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, "x", 1) != 1)
            die(path);
        close(fd);
    }
    for (i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/d%04ld/f%07ld", dir, i % dirs, i);
        if (chmod(path, 0600) < 0)
            die(path);
    }
    for (i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/d%04ld/f%07ld", dir, i % dirs, i);
        snprintf(to, sizeof to, "%s/d%04ld/f%07ld.r", dir, i % dirs, i);
        if (rename(path, to) < 0)
            die(path);
    }
    for (i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/d%04ld/f%07ld.r", dir, i % dirs, i);
        if (unlink(path) < 0)
            die(path);
    }
    snprintf(path, sizeof path, "%s/" SENTINEL, dir);
    create_one_path(path);
    return 0;
}

/* Blocking reads; the time each event reaches the reader, by file index. */
static int latency_fd(const char *mnt, long want)
{
    int fd = setup(FAN_CLASS_NOTIF | FAN_UNLIMITED_QUEUE, FAN_MARK_MOUNT, FAN_CLOSE_WRITE, mnt);
    long got = 0;
    char link[32], path[PATH_MAX];
    long *idx = calloc((size_t)want, sizeof *idx);
    int64_t *at = calloc((size_t)want, sizeof *at);

    if (!idx || !at)
        die("calloc");
    printf("ready\n");
    fflush(stdout);
    while (got < want) {
        ssize_t n = read(fd, buf, sizeof buf);
        struct fanotify_event_metadata *m = (void *)buf;
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("read");
        for (; FAN_EVENT_OK(m, n) && got < want; m = FAN_EVENT_NEXT(m, n)) {
            if (m->fd < 0)
                continue;
            snprintf(link, sizeof link, "/proc/self/fd/%d", m->fd);
            ssize_t r = readlink(link, path, sizeof path - 1);
            close(m->fd);
            if (r <= 0)
                continue;
            path[r] = '\0';
            char *base = strrchr(path, '/');
            if (!base || base[1] != 'f')
                continue;
            idx[got] = strtol(base + 2, NULL, 10);
            at[got] = now_ns();
            got++;
        }
    }
    for (long i = 0; i < got; i++)
        printf("%ld %lld\n", idx[i], (long long)at[i]);
    return 0;
}

static void create_one(const char *dir, long i)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/f%07ld", dir, i);
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die(path);
    close(fd);
}

static int create(const char *dir, long n, int unlink_after)
{
    char path[PATH_MAX];
    for (long i = 0; i < n; i++)
        create_one(dir, i);
    /* Unlinking only after every file exists keeps each DELETE far from its
     * CREATE in the queue, so the kernel does not merge the two. */
    for (long i = 0; unlink_after && i < n; i++) {
        snprintf(path, sizeof path, "%s/f%07ld", dir, i);
        if (unlink(path) < 0)
            die(path);
    }
    return 0;
}

static int spread(const char *dir, long n, long dirs)
{
    char sub[PATH_MAX];
    if (dirs < 1)
        dirs = 1;
    for (long d = 0; d < dirs; d++) {
        long files = n / dirs + (d < n % dirs);
        snprintf(sub, sizeof sub, "%s/d%05ld", dir, d);
        if (mkdir(sub, 0755) < 0)
            die(sub);
        create(sub, files, 1);
        if (rmdir(sub) < 0)
            die(sub);
    }
    return 0;
}

static int pace(const char *dir, long n, long rate)
{
    int64_t *sent = calloc((size_t)n, sizeof *sent);
    int64_t start = now_ns() + 1000000, step = 1000000000 / rate;
    if (!sent)
        die("calloc");
    for (long i = 0; i < n; i++) {
        int64_t due = start + i * step;
        struct timespec ts = {.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        sent[i] = now_ns();
        create_one(dir, i);
    }
    for (long i = 0; i < n; i++)
        printf("%ld %lld\n", i, (long long)sent[i]);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: cbench MODE PATH N [RATE]\n");
        return 2;
    }
    const char *mode = argv[1], *path = argv[2];
    long n = atol(argv[3]);
    if (!strcmp(mode, "drain-fd"))
        return drain_fd(path, n);
    if (!strcmp(mode, "drain-fid"))
        return drain_fid(path, n);
    if (!strcmp(mode, "drain-mixed"))
        return drain_mixed(path);
    if (!strcmp(mode, "mixed") && argc >= 5)
        return mixed(path, n, atol(argv[4]));
    if (!strcmp(mode, "latency-fd"))
        return latency_fd(path, n);
    if (!strcmp(mode, "create"))
        return create(path, n, 0);
    if (!strcmp(mode, "create-unlink"))
        return create(path, n, 1);
    if (!strcmp(mode, "spread") && argc >= 5)
        return spread(path, n, atol(argv[4]));
    if (!strcmp(mode, "pace") && argc >= 5)
        return pace(path, n, atol(argv[4]));
    fprintf(stderr, "cbench: unknown mode %s\n", mode);
    return 2;
}
