/*
 * Helpers for bench/bench_permission.py, built by it with gcc at run time.
 *
 *   perm_responder respond PATH   mark PATH for FAN_OPEN_PERM and allow every
 *                                 event, as fast as C can (the floor); prints
 *                                 "ready" once the mark is in place, exits on
 *                                 SIGTERM.
 *   perm_responder respond-facts PATH
 *                                 the same, but reads for each event what the
 *                                 guard's path+exe+uid rules read first: the
 *                                 file's path (readlink /proc/self/fd/N), the
 *                                 process's executable (readlink /proc/PID/exe)
 *                                 and its effective uid (stat /proc/PID).
 *   perm_responder open PATH N    open(2) PATH N times, timing each open with
 *                                 CLOCK_MONOTONIC; prints "p50 p99 mean" in ns.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig) { (void)sig; stop = 1; }

/* What a rule on path, executable and uid needs, read the cheapest way. */
static void read_facts(const struct fanotify_event_metadata *m)
{
    char link[64], out[4096];
    struct stat st;
    snprintf(link, sizeof link, "/proc/self/fd/%d", m->fd);
    if (readlink(link, out, sizeof out) < 0) perror("readlink fd");
    snprintf(link, sizeof link, "/proc/%d/exe", m->pid);
    if (readlink(link, out, sizeof out) < 0) perror("readlink exe");
    snprintf(link, sizeof link, "/proc/%d", m->pid);
    if (stat(link, &st) < 0) perror("stat");
}

static int respond(const char *path, int facts)
{
    int fan = fanotify_init(FAN_CLOEXEC | FAN_CLASS_CONTENT, O_RDONLY | O_LARGEFILE);
    if (fan < 0) { perror("fanotify_init"); return 1; }
    if (fanotify_mark(fan, FAN_MARK_ADD, FAN_OPEN_PERM, AT_FDCWD, path) < 0) {
        perror("fanotify_mark"); return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;          /* no SA_RESTART: read() returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    char buf[8192] __attribute__((aligned(8)));
    while (!stop) {
        ssize_t n = read(fan, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("read"); return 1;
        }
        struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf;
        for (; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
            if (m->fd < 0) continue;
            if (m->mask & FAN_OPEN_PERM) {
                if (facts) read_facts(m);
                struct fanotify_response r = { .fd = m->fd, .response = FAN_ALLOW };
                if (write(fan, &r, sizeof r) < 0) perror("write");
            }
            close(m->fd);
        }
    }
    close(fan);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int opener(const char *path, long n)
{
    uint64_t *lat = calloc((size_t)n, sizeof *lat);
    if (!lat) return 1;
    for (long i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        int fd = open(path, O_RDONLY);
        uint64_t t1 = now_ns();
        if (fd < 0) { perror("open"); return 1; }
        close(fd);
        lat[i] = t1 - t0;
    }
    uint64_t sum = 0;
    for (long i = 0; i < n; i++) sum += lat[i];
    qsort(lat, (size_t)n, sizeof *lat, cmp_u64);
    printf("%llu %llu %llu\n", (unsigned long long)lat[n / 2],
           (unsigned long long)lat[(n * 99) / 100], (unsigned long long)(sum / (uint64_t)n));
    free(lat);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "respond") == 0)
        return respond(argv[2], 0);
    if (argc == 3 && strcmp(argv[1], "respond-facts") == 0)
        return respond(argv[2], 1);
    if (argc == 4 && strcmp(argv[1], "open") == 0)
        return opener(argv[2], atol(argv[3]));
    fprintf(stderr, "usage: %s respond PATH | respond-facts PATH | open PATH N\n", argv[0]);
    return 2;
}
