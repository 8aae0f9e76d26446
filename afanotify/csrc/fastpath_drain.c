/*
 * The drain: a thread that moves a FID group's events out of the kernel's
 * queue into userspace memory as fast as the kernel fills it, and names the
 * processes behind them while they still exist.
 *
 * afd_run is called from a Python thread and returns only when stopped (or
 * on a read error that ends reading).  cffi releases the GIL around it, so
 * the thread blocks in poll(2) and read(2) without holding up the event
 * loop.  Each read becomes one chunk: the bytes read, and a table of the
 * chunk's processes (pid, comm, and exe/cwd when asked), read from /proc
 * right after the read, once per pid.  The chunks wait in a FIFO under a
 * mutex; when the FIFO goes from empty to non-empty, the thread writes to an
 * eventfd the event loop watches, and the loop takes the chunks
 * (afd_take / afd_free) and decodes them.
 *
 * Memory is bounded: chunks held at once never exceed `limit` bytes.  A read
 * that would go beyond it is still made (the kernel's queue keeps draining,
 * so it does not overflow behind our back), but its events are counted as
 * dropped and discarded, their pidfds closed, and the next chunk kept starts
 * with a synthetic FAN_Q_OVERFLOW record of pid -1 (the kernel's have 0): the decoder then forgets what its
 * directory map learned (events it never saw may have moved directories),
 * and the output marks the place of the gap.
 *
 * Naming.  A pid's details are trusted only as afanotify/_proc.py's
 * batch_processes trusts them: with FAN_REPORT_PIDFD, the pid's first event
 * in the read must carry a pidfd, and after /proc/PID/comm was read (and
 * again after exe and cwd) pidfd_send_signal(pidfd, 0) must not fail with
 * ESRCH (the process was not reaped, so the pid was never free and
 * /proc/PID was that process; see afd_alive).  Without a pidfd the details are read unchecked (an
 * unprivileged group), as before.  The drain then closes every pidfd and
 * writes FAN_NOPIDFD in its place: the events reach the decoder without
 * descriptors (a backlog of pidfds would exhaust RLIMIT_NOFILE, and the
 * kernel reports FAN_EPIDFD once it does).  A process reaped before its
 * read (or before its /proc entry was read) is named from the exit log
 * where the drain has one (fastpath_deaths.c: the record the kernel sends
 * as a task exits), by name alone.  Without the log, what decides whether
 * a short-lived process is named is how soon the thread reads after it is
 * woken (see afd_hint).  With it, the thread waits settle_ns after a read
 * that emptied the queue before it polls again, so that a busy writer's
 * events are read many at a time, and slow_settle_ns instead while the
 * events come slowly (afd_settle_for).
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define AFD_MAX_PIDS 4096
#define AFD_GAP_PID (-1)
#define AFD_TEXT 4096
#define AFD_EXIT_PUMP_MS 100
/* The oldest exit-log window used: a pid reused within it would take about
 * pid_max (32768 by default) less the pids in use new tasks within it (or a
 * root tool choosing the pid, clone3's set_tid or ns_last_pid). */
#define AFD_EXIT_WINDOW_NS 1000000000ull
/* More than one event takes: metadata, three FID records of a full handle
 * and name each (a rename's), a pidfd record. */
#define AFD_EVENT_MAX 4096

struct afd_proc {
    int32_t pid;
    int32_t trusted;    /* 1: the details below belong to the event's process */
    int32_t name_len;   /* -1: not read */
    int32_t exe_len;
    int32_t cwd_len;
    uint32_t name_off;
    uint32_t exe_off;
    uint32_t cwd_off;
};

struct afd_chunk {
    struct afd_chunk *next;
    unsigned char *data;     /* the events, len bytes of cap */
    uint32_t len;
    uint32_t nevents;
    uint32_t nprocs;
    uint32_t size;           /* bytes allocated, for the limit */
    struct afd_proc *procs;
    char *text;              /* names and paths of procs */
    uint32_t cap;
    uint32_t procs_cap;
    uint32_t text_len;
    uint32_t text_cap;
};

struct afd_drain {
    int fd;
    int wake_fd;
    int stop_fd;
    int paths;
    int pidfd_reported;
    int own_pid;
    int latency_hint;   /* ask the scheduler for a short wakeup (afd_hint) */
    int exit_names_on;  /* afd_exit_open got the exit log (fastpath_deaths.c) */
    int hint_slice;     /* afd_hint's results */
    int hint_nice_set;
    int hint_nice;
    uint32_t read_size;
    uint32_t chunk_size;
    uint32_t settle_ns;  /* the wait after a read that emptied the queue (exit log on) */
    uint32_t slow_settle_ns;  /* the wait instead while events come slowly (afd_settle_for) */
    uint64_t limit;
    uint32_t last_read;  /* bytes of the last read that got any */
    uint32_t last_events;    /* its events */
    uint64_t last_read_ns;   /* when it was made (CLOCK_MONOTONIC; exit log on) */
    uint64_t prev_read_ns;   /* and the one before it (0: none) */
    pthread_mutex_t lock;
    struct afd_chunk *head;
    struct afd_chunk *tail;
    uint64_t held;
    uint64_t peak;
    uint64_t chunks_held;
    /* counts, under lock */
    uint64_t reads;
    uint64_t bytes_read;
    uint64_t events_read;
    uint64_t dropped_events;
    uint64_t dropped_reads;
    uint64_t gaps;
    uint64_t named;
    uint64_t unnamed;
    uint64_t exit_named;      /* processes named from the exit log, under lock */
    uint64_t exit_overflows;  /* the log's, as of the last read, under lock */
    int gap_pending;
    int error;
    int running;
    unsigned char *scratch;
    /* The exit log (NULL: off), thread-only: where it stood at the last
     * read, and whether that read emptied the kernel's queue. */
    struct afx_log *exits;
    uint64_t exit_mark;     /* records taken when the queue was last seen empty */
    uint64_t exit_mark_ns;  /* and when (CLOCK_MONOTONIC) */
    int exit_mark_open;     /* 0 until the queue was seen empty once */
    uint32_t exit_early;    /* events still to read that were queued before the log */
    uint8_t *early;         /* per pid of a read: it has an event of those bytes */
};

static int afd_read_small(const char *path, char *out, int cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, out, cap);
    close(fd);
    if (n < 0)
        return -1;
    if (n > 0 && out[n - 1] == '\n')
        n--;
    return (int)n;
}

/* Fields read by memcpy: the kernel aligns records to 4 bytes only (and the
 * metadata struct wants 8), and a synthetic buffer need not be aligned. */
static inline uint16_t afd_u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t afd_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline int32_t afd_s32(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return v; }
static inline void afd_put_s32(unsigned char *p, int32_t v) { memcpy(p, &v, 4); }

#define AFD_EVENT_LEN(ev) afd_u32((ev) + offsetof(struct fanotify_event_metadata, event_len))
#define AFD_EVENT_PID(ev) afd_s32((ev) + offsetof(struct fanotify_event_metadata, pid))

/* Where an event's pidfd is (NULL: no pidfd record). */
static unsigned char *afd_pidfd_slot(unsigned char *ev, uint32_t len)
{
    uint32_t off = sizeof(struct fanotify_event_metadata);
    while (off + sizeof(struct fanotify_event_info_header) <= len) {
        unsigned char *h = ev + off;
        uint32_t hlen = afd_u16(h + offsetof(struct fanotify_event_info_header, len));
        if (hlen < sizeof(struct fanotify_event_info_header) || off + hlen > len)
            return NULL;
        if (h[offsetof(struct fanotify_event_info_header, info_type)] == FAN_EVENT_INFO_TYPE_PIDFD
                && hlen >= sizeof(struct fanotify_event_info_pidfd))
            return h + offsetof(struct fanotify_event_info_pidfd, pidfd);
        off += hlen;
    }
    return NULL;
}

/* Walk the events of buf: count them, collect each pid's first pidfd (in
 * pidfds[i]) and last one (in pidfds[AFD_MAX_PIDS + i]), and take every
 * pidfd out of its record (written FAN_NOPIDFD): all of them go to fds[]
 * (*nfds of them), to be closed at once after the naming. */
static uint32_t afd_walk(unsigned char *buf, uint32_t n, int32_t *pids, int32_t *pidfds,
                         uint32_t *npids, int own_pid, int32_t *fds, uint32_t *nfds)
{
    uint32_t off = 0, count = 0;
    while (off + sizeof(struct fanotify_event_metadata) <= n) {
        uint32_t event_len = AFD_EVENT_LEN(buf + off);
        int32_t pid = AFD_EVENT_PID(buf + off);
        if (event_len < sizeof(struct fanotify_event_metadata) || off + event_len > n)
            break;
        count++;
        unsigned char *slot = afd_pidfd_slot(buf + off, event_len);
        int32_t pidfd = slot ? afd_s32(slot) : FAN_NOPIDFD;
        if (slot) {
            if (pidfd >= 0)
                fds[(*nfds)++] = pidfd;
            afd_put_s32(slot, FAN_NOPIDFD);
        }
        if (pid > 0 && pid != own_pid && *npids < AFD_MAX_PIDS) {
            uint32_t i;
            for (i = 0; i < *npids; i++)
                if (pids[i] == pid)
                    break;
            if (i == *npids) {
                pids[i] = pid;
                pidfds[i] = pidfd;   /* the first event's: open until fds[] is closed */
                (*npids)++;
            }
            pidfds[AFD_MAX_PIDS + i] = pidfd;  /* and the last event's (afd_reused) */
        }
        off += event_len;
    }
    return count;
}

/* Close the pidfds of one read, in as few system calls as is safe.
 *
 * The kernel gives a read's pidfds the lowest free numbers, one event after
 * the other, so they are mostly runs of consecutive numbers.  A run
 * lo, lo+1, ..., hi of fds[] is closed with one close_range(lo, hi): every
 * number in it is a descriptor of this read, open until now, so no other
 * thread of the process can hold one of them (a number is in one use at a
 * time).  Where another thread took a number meanwhile the run ends there,
 * and that number is never in a range.  Without close_range (before Linux
 * 5.9), or should it fail, each is closed alone. */
static void afd_close_fds(const int32_t *fds, uint32_t n)
{
    uint32_t i = 0;
    while (i < n) {
        uint32_t j = i + 1;
        while (j < n && fds[j] == fds[j - 1] + 1)
            j++;
        if (j - i == 1 || syscall(SYS_close_range, (unsigned)fds[i], (unsigned)fds[j - 1], 0) != 0)
            for (uint32_t k = i; k < j; k++)
                close(fds[k]);
        i = j;
    }
}

/* Whether the reads of /proc/PID made so far were of the event's process.
 *
 * A pid is reused only after its process has exited and been reaped; from
 * then on pidfd_send_signal on a pidfd of it fails with ESRCH (a zombie
 * still takes signal 0).  So a process not yet reaped after the reads held
 * the pid all along.  EPERM: alive, not ours to signal.  Without
 * REPORT_PIDFD nothing can be checked: trusted, as fatrace trusts /proc.
 * (Checking /proc against the exit log instead was tried and given up: a
 * non-leader thread's exec makes the old leader send a record of the pid
 * while the process lives on, and a window that cannot be had would leave
 * live processes unnamed.) */
static int afd_alive(struct afd_drain *d, int32_t pidfd, int32_t pid, uint64_t since)
{
    if (pidfd >= 0) {
        long r = syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0);
        return r == 0 || errno == EPERM;
    }
    (void)pid;
    (void)since;
    return !d->pidfd_reported;  /* no pidfd: gone at the read; no pidfds: unchecked */
}

/* Whether the i-th pid of a read stands for a second process too.  Each
 * event holds its own process (a struct pid, not a number), and the kernel
 * makes each pidfd at the read: FAN_NOPIDFD exactly for a process reaped by
 * then.  So when the first event's process was reaped before the read (the
 * case the exit log names) and a later event of the same pid number got a
 * pidfd, or an error making one (FAN_EPIDFD), that event is the number's
 * next holder's, whether or not it is still alive now: one name from the log
 * would be the reaped writer's for the holder's events too.  A first event
 * with a pidfd means the number was not free before the read: every event of
 * it in the read is that one process's. */
static int afd_reused(const int32_t *pidfds, uint32_t i)
{
    return pidfds[i] == FAN_NOPIDFD && pidfds[AFD_MAX_PIDS + i] != FAN_NOPIDFD;
}

/* Whether the exit log may name the process of a pid not named from /proc:
 * with pidfds, only one known reaped (no pidfd at the read, or ESRCH from
 * its pidfd now; not FAN_EPIDFD, which a live process can get, nor a /proc
 * read that failed for want of descriptors); without, one whose /proc
 * entry could not be read (afd_alive trusts every one that could). */
static int afd_gone(struct afd_drain *d, int32_t pidfd)
{
    if (!d->pidfd_reported)
        return 1;
    if (pidfd == FAN_NOPIDFD)
        return 1;
    return pidfd >= 0 && syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) != 0
           && errno == ESRCH;
}

static uint64_t afd_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

#define AFD_FROM_EXIT 2   /* afd_proc.trusted: the name alone, from the exit log */
/* The window of the i-th pid of a read: none for one with an event queued
 * before the log existed (afd_early). */
#define AFD_SINCE(d, i, since) ((d)->early != NULL && (d)->early[i] ? UINT64_MAX : (since))

/* Read one chunk's processes; returns the text bytes used.  `since`: the
 * first exit-log record that can be of a process of this read (UINT64_MAX:
 * the log may not be used, see afd_read_one). */
static uint32_t afd_name(struct afd_drain *d, int32_t *pids, int32_t *pidfds, uint32_t npids,
                         struct afd_proc *procs, char **textp,
                         uint32_t *named, uint64_t since, uint32_t *from_exit)
{
    char path[64];
    char tmp[AFD_TEXT];
    uint32_t used = 0, cap = 64 * npids + 1;
    char *text = malloc(cap);
    *textp = text;
    if (text == NULL) {
        for (uint32_t i = 0; i < npids; i++) {
            memset(&procs[i], 0, sizeof procs[i]);
            procs[i].pid = pids[i];
            procs[i].name_len = procs[i].exe_len = procs[i].cwd_len = -1;
        }
        return 0;
    }
    /* Every name first: what a process about to go loses first. */
    for (uint32_t i = 0; i < npids; i++) {
        struct afd_proc *p = &procs[i];
        p->pid = pids[i];
        p->trusted = 0;
        p->name_len = p->exe_len = p->cwd_len = -1;
        if (d->pidfd_reported && pidfds[i] < 0)
            continue;  /* the process was gone at the read: its pid proves nothing */
        snprintf(path, sizeof path, "/proc/%d/comm", pids[i]);
        int n = afd_read_small(path, tmp, 63);
        if (n >= 0 && used + n <= cap) {
            memcpy(text + used, tmp, n);
            p->name_off = used;
            p->name_len = n;
            used += n;
        }
    }
    /* Each name is checked as soon as all are read, before the slower
     * links: a process reaped during those must not cost its name.  The
     * exit log is taken first: a record sent before a process was reaped
     * is then in it (afd_alive, and the naming below). */
    afx_pump(d->exits);
    int look = 0;
    for (uint32_t i = 0; i < npids; i++) {
        struct afd_proc *p = &procs[i];
        p->trusted = p->name_len >= 0 && afd_alive(d, pidfds[i], pids[i], AFD_SINCE(d, i, since));
        if (!p->trusted)
            p->name_len = -1;
        look |= !p->trusted;
    }
    /* Then those not named are looked up in the exit log, which is taken
     * again first: the record of a process reaped during the checks above
     * was sent before it was reaped. */
    if (look && since != UINT64_MAX)
        afx_pump(d->exits);
    for (uint32_t i = 0; look && since != UINT64_MAX && i < npids; i++) {
        struct afd_proc *p = &procs[i];
        if (p->trusted || AFD_SINCE(d, i, since) == UINT64_MAX || !afd_gone(d, pidfds[i])
                || afd_reused(pidfds, i))
            continue;
        int n = afx_find(d->exits, pids[i], since, tmp);
        if (n > 0 && used + n <= cap) {
            memcpy(text + used, tmp, n);
            p->name_off = used;
            p->name_len = n;
            used += n;
            p->trusted = AFD_FROM_EXIT;
            (*from_exit)++;
        }
    }
    if (d->paths) {
        for (uint32_t i = 0; i < npids; i++) {
            struct afd_proc *p = &procs[i];
            if (p->trusted != 1)
                continue;  /* a reaped process's links are gone, or another's */
            for (int k = 0; k < 2; k++) {
                snprintf(path, sizeof path, k ? "/proc/%d/cwd" : "/proc/%d/exe", pids[i]);
                ssize_t n = readlink(path, tmp, sizeof tmp);
                if (n < 0 || n >= (ssize_t)sizeof tmp)
                    continue;
                if (used + n > cap) {
                    uint32_t ncap = cap * 2 + n;
                    char *t = realloc(text, ncap);
                    if (t == NULL)
                        continue;
                    text = t;
                    cap = ncap;
                }
                memcpy(text + used, tmp, n);
                if (k) {
                    p->cwd_off = used;
                    p->cwd_len = n;
                } else {
                    p->exe_off = used;
                    p->exe_len = n;
                }
                used += n;
            }
        }
    }
    /* Then the links are checked the same way: kept only if the process
     * was still not reaped after they were read. */
    afx_pump(d->exits);
    for (uint32_t i = 0; i < npids; i++) {
        struct afd_proc *p = &procs[i];
        if (!p->trusted)
            continue;
        (*named)++;
        if (p->trusted == 1 && (p->exe_len >= 0 || p->cwd_len >= 0)
                && !afd_alive(d, pidfds[i], pids[i], AFD_SINCE(d, i, since)))
            p->exe_len = p->cwd_len = -1;
    }
    *textp = text;
    return used;
}

static void afd_wake(int fd)
{
    uint64_t one = 1;
    ssize_t r = write(fd, &one, sizeof one);
    (void)r;
}

/* Whether the processes of a read agree with a chunk's: a pid in both must
 * have the same details (or none in both), so that one table names the
 * events of both reads as each read's own table would. */
static int afd_agree(struct afd_chunk *c, struct afd_proc *procs, const char *text,
                     uint32_t npids)
{
    for (uint32_t i = 0; i < npids; i++) {
        struct afd_proc *p = &procs[i];
        for (uint32_t j = 0; j < c->nprocs; j++) {
            struct afd_proc *q = &c->procs[j];
            if (q->pid != p->pid)
                continue;
            if (q->trusted != p->trusted || q->name_len != p->name_len
                    || q->exe_len != p->exe_len || q->cwd_len != p->cwd_len)
                return 0;
            if ((p->name_len > 0 && memcmp(c->text + q->name_off, text + p->name_off,
                                           p->name_len))
                    || (p->exe_len > 0 && memcmp(c->text + q->exe_off, text + p->exe_off,
                                                 p->exe_len))
                    || (p->cwd_len > 0 && memcmp(c->text + q->cwd_off, text + p->cwd_off,
                                                 p->cwd_len)))
                return 0;
            break;
        }
    }
    return 1;
}

/* Count a read that is thrown away (over the bound, or no memory for it): its
 * events are lost, and the next kept read starts with an overflow record. */
static int afd_dropped(struct afd_drain *d, ssize_t n, uint32_t nev)
{
    pthread_mutex_lock(&d->lock);
    d->reads++;
    d->bytes_read += n;
    d->events_read += nev;
    d->dropped_events += nev;
    d->dropped_reads++;
    d->gap_pending = 1;
    pthread_mutex_unlock(&d->lock);
    return 1;
}

/* Add a read's processes (those the chunk lacks) to the chunk; 0 on ENOMEM. */
static int afd_add_procs(struct afd_chunk *c, struct afd_proc *procs, const char *text,
                         uint32_t npids, uint32_t used)
{
    if (c->nprocs + npids > c->procs_cap) {
        uint32_t ncap = (c->nprocs + npids) * 2 + 8;
        struct afd_proc *np = realloc(c->procs, ncap * sizeof *np);
        if (np == NULL)
            return 0;
        c->procs = np;
        c->size += (ncap - c->procs_cap) * sizeof *np;
        c->procs_cap = ncap;
    }
    if (c->text_len + used > c->text_cap) {
        uint32_t ncap = (c->text_len + used) * 2 + 64;
        char *nt = realloc(c->text, ncap);
        if (nt == NULL)
            return 0;
        c->text = nt;
        c->size += ncap - c->text_cap;
        c->text_cap = ncap;
    }
    uint32_t base = c->text_len;
    if (used > 0)  /* c->text is still NULL when no read brought text */
        memcpy(c->text + base, text, used);
    c->text_len += used;
    for (uint32_t i = 0; i < npids; i++) {
        uint32_t j;
        for (j = 0; j < c->nprocs; j++)
            if (c->procs[j].pid == procs[i].pid)
                break;
        if (j < c->nprocs)
            continue;  /* agreed: the same details are there */
        struct afd_proc p = procs[i];
        p.name_off += base;
        p.exe_off += base;
        p.cwd_off += base;
        c->procs[c->nprocs++] = p;
    }
    return 1;
}

static struct afd_chunk *afd_new_chunk(uint32_t cap)
{
    struct afd_chunk *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->data = malloc(cap);
    if (c->data == NULL) {
        free(c);
        return NULL;
    }
    c->cap = cap;
    c->size = sizeof *c + cap;
    return c;
}

static void afd_drop_chunk(struct afd_chunk *c)
{
    free(c->procs);
    free(c->text);
    free(c->data);
    free(c);
}

/* One read; 0 when the kernel had nothing more, -1 on a read error that ends reading.
 *
 * A read is appended to the newest chunk not yet taken when it fits and
 * the processes agree (afd_agree): the loop then decodes one buffer of many
 * reads (the kernel's records are whole events, so reads concatenate), not
 * many buffers of a few events each. */
/* Mark the pids (d->early) with an event among the first d->exit_early
 * events of this read: those were queued before the exit log existed. */
static void afd_early(struct afd_drain *d, const unsigned char *buf, uint32_t n,
                      const int32_t *pids, uint32_t npids)
{
    memset(d->early, 0, npids);
    uint32_t off = 0;
    while (d->exit_early > 0 && off + sizeof(struct fanotify_event_metadata) <= n) {
        uint32_t event_len = AFD_EVENT_LEN(buf + off);
        int32_t pid = AFD_EVENT_PID(buf + off);
        if (event_len < sizeof(struct fanotify_event_metadata) || off + event_len > n)
            break;
        for (uint32_t i = 0; i < npids; i++)
            if (pids[i] == pid)
                d->early[i] = 1;
        off += event_len;
        d->exit_early--;
    }
}

static int afd_read_one(struct afd_drain *d, int32_t *pids, int32_t *pidfds,
                        struct afd_proc *procs, int32_t *fds)
{
    /* The exit log's window (fastpath_deaths.c): this read's events were
     * all queued after the queue was last seen empty, so their processes
     * were alive after the log stood at exit_mark (give or take a close at
     * exit, which follows the record).  A window older than
     * AFD_EXIT_WINDOW_NS is not used: the argument needs the pid space not
     * to wrap within it. */
    uint64_t since = UINT64_MAX, mark = 0, now = 0;
    if (d->exits != NULL) {
        afx_pump(d->exits);
        mark = d->exits->seq;
        now = afd_now_ns();
        if (d->exit_mark_open && now - d->exit_mark_ns <= AFD_EXIT_WINDOW_NS)
            since = d->exit_mark;
    }
    ssize_t n = read(d->fd, d->scratch, d->read_size);
    if (n <= 0) {
        int e = n < 0 ? errno : 0;
        if (n < 0 && e != EAGAIN && e != EINTR) {
            d->error = e;
            return -1;
        }
        if (e != EINTR) {  /* the queue was empty */
            d->exit_mark = mark;
            d->exit_mark_ns = now;
            d->exit_mark_open = 1;
        }
        return 0;
    }
    d->last_read = (uint32_t)n;
    d->prev_read_ns = d->last_read_ns;
    d->last_read_ns = now;
    if ((uint32_t)n + AFD_EVENT_MAX <= d->read_size) {  /* it emptied the queue */
        d->exit_mark = mark;
        d->exit_mark_ns = now;
        d->exit_mark_open = 1;
    }
    uint32_t npids = 0, nfds = 0;
    uint32_t nev = afd_walk(d->scratch, (uint32_t)n, pids, pidfds, &npids, d->own_pid,
                            fds, &nfds);
    d->last_events = nev;
    /* Counted off even for a read dropped below. */
    int early = d->exits != NULL && d->exit_early > 0;
    if (early)
        afd_early(d, d->scratch, (uint32_t)n, pids, npids);
    uint32_t lead, cap;
    pthread_mutex_lock(&d->lock);
    int gap = d->gap_pending;
    uint64_t held = d->held;
    /* A read that fits in the newest chunk costs no new chunk: it is counted
     * against the bound by its processes alone (it was counted as a whole
     * new chunk, so a bound of two chunks dropped every read once one chunk
     * waited, though that chunk had room). */
    int fits = !gap && d->tail != NULL && d->tail->len + n <= d->tail->cap;
    pthread_mutex_unlock(&d->lock);
    lead = gap ? sizeof(struct fanotify_event_metadata) : 0;
    cap = d->chunk_size > lead + n ? d->chunk_size : lead + n;
    if (held + (fits ? 0 : cap) + npids * (sizeof(struct afd_proc) + 64 * 3) > d->limit) {
        if (early)
            memset(d->early, 0, npids);
        afd_close_fds(fds, nfds);
        return afd_dropped(d, n, nev);
    }
    char *text = NULL;
    uint32_t named = 0, from_exit = 0;
    uint32_t used = afd_name(d, pids, pidfds, npids, procs, &text, &named, since, &from_exit);
    if (early)
        memset(d->early, 0, npids);
    afd_close_fds(fds, nfds);

    pthread_mutex_lock(&d->lock);
    struct afd_chunk *t = d->tail;
    int was_empty = d->head == NULL;
    int ok = 0;
    if (!gap && t != NULL && t->len + n <= t->cap && afd_agree(t, procs, text, npids)) {
        uint32_t before = t->size;
        ok = afd_add_procs(t, procs, text, npids, used);
        /* Counted even when it failed halfway: a realloc that succeeded grew
         * the chunk, and afd_free takes off the whole size. */
        d->held += t->size - before;
        if (ok) {
            memcpy(t->data + t->len, d->scratch, n);
            t->len += n;
            t->nevents += nev;
        }
    }
    if (!ok && d->held + cap > d->limit) {
        /* The chunk it fitted in was taken meanwhile, or its processes did
         * not agree: a new chunk would pass the bound. */
        pthread_mutex_unlock(&d->lock);
        free(text);
        return afd_dropped(d, n, nev);
    }
    if (!ok) {
        pthread_mutex_unlock(&d->lock);
        struct afd_chunk *c = afd_new_chunk(cap);
        if (c == NULL || !afd_add_procs(c, procs, text, npids, used)) {
            if (c != NULL)
                afd_drop_chunk(c);
            free(text);
            return afd_dropped(d, n, nev);
        }
        if (gap) {
            struct fanotify_event_metadata *m = (void *)c->data;
            memset(m, 0, sizeof *m);
            m->event_len = sizeof *m;
            m->vers = FANOTIFY_METADATA_VERSION;
            m->metadata_len = sizeof *m;
            m->mask = FAN_Q_OVERFLOW;
            m->fd = FAN_NOFD;
            /* The kernel's overflow records have pid 0: -1 tells the
             * decoder (and its log line) that the drain made the gap. */
            m->pid = AFD_GAP_PID;
        }
        memcpy(c->data + lead, d->scratch, n);
        c->len = lead + n;
        c->nevents = nev + (gap ? 1 : 0);
        pthread_mutex_lock(&d->lock);
        was_empty = d->head == NULL;
        if (d->tail)
            d->tail->next = c;
        else
            d->head = c;
        d->tail = c;
        d->held += c->size;
        d->chunks_held++;
        if (gap) {
            d->gaps++;
            d->gap_pending = 0;
        }
    }
    free(text);
    d->reads++;
    d->bytes_read += n;
    d->events_read += nev;
    d->named += named;
    d->exit_named += from_exit;
    if (d->exits != NULL)
        d->exit_overflows = d->exits->overflows;
    d->unnamed += npids - named;
    if (d->held > d->peak)
        d->peak = d->held;
    pthread_mutex_unlock(&d->lock);
    if (was_empty)
        afd_wake(d->wake_fd);
    return 1;
}

/* Events come slowly below AFD_SLOW_EVENTS per AFD_SLOW_SPAN_NS (6,400 a
 * second): a rate, whatever slow_settle_ns is. */
#define AFD_SLOW_EVENTS 256
#define AFD_SLOW_SPAN_NS 40000000u
/* Bytes of a small FID event (metadata, one record with a short name). */
#define AFD_SMALL_EVENT 64

/* The wait after a read that emptied the queue.
 *
 * Each read costs about the same whatever it brings (the wakeups, the read,
 * /proc for its processes, the exit log): at 300 files a second a 10 ms
 * settle made ~100 reads a second of a few files each, and the thread's CPU
 * was mostly that.  So while the events come slowly the thread waits
 * slow_settle_ns instead: when the last read's events, at the rate they came
 * since the read before it, are fewer than AFD_SLOW_EVENTS per
 * AFD_SLOW_SPAN_NS (the rate, not the wait: a longer slow_settle_ns leaves
 * the writers it applies to as they were, 1,000 files a second among them).
 * A busy writer (or a burst, whose reads come back full and so wait not at
 * all) keeps settle_ns, and the kernel's queue (16384 events unless
 * unlimited) never gets near full in the longer wait: afd_settle ends it
 * once AFD_SLOW_EVENTS small events' worth has queued.  The first read
 * after a quiet spell is made at once, as before (it is the poll's). */
static uint64_t afd_settle_for(const struct afd_drain *d)
{
    uint64_t slow = d->slow_settle_ns;
    if (slow <= d->settle_ns)
        return d->settle_ns;
    if (d->prev_read_ns == 0)
        return slow;
    uint64_t gap = d->last_read_ns - d->prev_read_ns;
    if ((uint64_t)d->last_events * AFD_SLOW_SPAN_NS <= (uint64_t)AFD_SLOW_EVENTS * gap)
        return slow;
    return d->settle_ns;
}

/* The wait after a read that emptied the queue: afd_settle_for's, in steps
 * of settle_ns.  After each step but the last, the queue is looked at
 * (FIONREAD): a burst that starts during a slow wait is read at once once
 * AFD_SLOW_EVENTS small events' worth has queued, so the longer wait never
 * leaves the kernel's queue (16,384 events) less room than settle_ns does.
 * Returns 1 if a stop was asked for. */
static int afd_settle(const struct afd_drain *d)
{
    uint64_t left = afd_settle_for(d);
    while (left > 0) {
        uint64_t step = left < d->settle_ns ? left : d->settle_ns;
        struct pollfd s = {d->stop_fd, POLLIN, 0};
        struct timespec t = {(time_t)(step / 1000000000u), (long)(step % 1000000000u)};
        if (ppoll(&s, 1, &t, NULL) > 0)
            return 1;
        left -= step;
        int queued = 0;
        if (left > 0 && ioctl(d->fd, FIONREAD, &queued) == 0
                && queued >= AFD_SLOW_EVENTS * AFD_SMALL_EVENT)
            break;
    }
    return 0;
}

/* sched_setattr(2)'s argument, as far as SCHED_ATTR_SIZE_VER0. */
struct afd_sched_attr {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime;
    uint64_t sched_deadline;
    uint64_t sched_period;
};

#define AFD_SLICE_NS 100000   /* the fair scheduler's shortest slice (0.1 ms) */
#define AFD_NICE_BOOST 10

/* Ask the scheduler to run this thread soon after it wakes.
 *
 * A process that writes a file and exits at once (touch, a shell's echo) is
 * reaped by its parent a fraction of a millisecond after its last event;
 * from then on the kernel gives its events no pidfd and /proc has no entry,
 * so it can be named only if this thread reads before that.  Nearly every
 * unnamed short-lived process was one whose events were read after it was
 * reaped: the thread had been woken but was waiting for a CPU (the event
 * loop's thread, the writers).  Two hints shorten that wait, and neither
 * gives the thread more than its share while it is busy:
 *
 * - a slice of 0.1 ms (sched_setattr's sched_runtime, the fair scheduler's
 *   latency hint since Linux 6.12; ignored before): a thread with a
 *   shorter slice has an earlier deadline, so it preempts the running one
 *   when it wakes.  Unprivileged.  Only for SCHED_OTHER, at the nice the
 *   thread has (a thread under another policy is left as the user set it).
 * - nice lowered by 10 where that is permitted (CAP_SYS_NICE, which a root
 *   watcher has): a heavier thread is placed earlier on waking.
 *
 * Under a steady writer the two made the thread preempt the writer at
 * nearly every event and read a few events a time (about a fifth more CPU
 * per line in bench_cli.py's burst).
 *
 * d->hint_slice and d->hint_nice say what was done (nice: the new value, or
 * d->hint_nice_set 0 when it was left). */
static void afd_hint(struct afd_drain *d)
{
    pid_t tid = (pid_t)syscall(SYS_gettid);
    if (!d->latency_hint || sched_getscheduler(0) != SCHED_OTHER)
        return;
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, (id_t)tid);
    if (nice == -1 && errno != 0)
        return;
    struct afd_sched_attr a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    a.sched_policy = SCHED_OTHER;
    a.sched_nice = nice;
    a.sched_runtime = AFD_SLICE_NS;
    d->hint_slice = syscall(SYS_sched_setattr, tid, &a, 0) == 0;
    int want = nice - AFD_NICE_BOOST < -20 ? -20 : nice - AFD_NICE_BOOST;
    if (want < nice && setpriority(PRIO_PROCESS, (id_t)tid, want) == 0) {
        d->hint_nice_set = 1;
        d->hint_nice = want;
    }
}

int afd_run(struct afd_drain *d)
{
    afd_hint(d);
    /* The log started empty when it was registered, so its window opens
     * then, if the queue was empty (afd_exit_open). */
    d->exit_mark = 0;
    int32_t *pids = malloc(AFD_MAX_PIDS * sizeof(int32_t));
    d->early = calloc(AFD_MAX_PIDS, 1);
    int32_t *pidfds = malloc(2 * AFD_MAX_PIDS * sizeof(int32_t)); /* first, last: afd_walk */
    /* a pidfd per event at most, an event at least its metadata */
    int32_t *fds = malloc((d->read_size / sizeof(struct fanotify_event_metadata) + 1)
                          * sizeof(int32_t));
    struct afd_proc *procs = malloc(AFD_MAX_PIDS * sizeof(struct afd_proc));
    d->scratch = malloc(d->read_size);
    if (pids == NULL || pidfds == NULL || procs == NULL || fds == NULL || d->scratch == NULL
            || d->early == NULL) {
        free(d->early);
        d->early = NULL;
        free(fds);
        free(pids);
        free(pidfds);
        free(procs);
        free(d->scratch);
        d->scratch = NULL;
        d->error = ENOMEM;
        return -1; /* the caller sets its error, then wakes the loop */
    }
    struct pollfd pfd[2] = {{d->fd, POLLIN, 0}, {d->stop_fd, POLLIN, 0}};
    int rc = 0;
    for (;;) {
        /* While the group is quiet the exit log is still taken, every
         * AFD_EXIT_PUMP_MS, so that its socket does not overflow. */
        int r = poll(pfd, 2, d->exits != NULL ? AFD_EXIT_PUMP_MS : -1);
        if (r == 0) {
            /* The queue was empty until now: the window opens here. */
            d->exit_mark = d->exits->seq;
            d->exit_mark_ns = afd_now_ns();
            d->exit_mark_open = 1;
            afx_pump(d->exits);
            continue;
        }
        if (r < 0) {
            if (errno == EINTR)
                continue;
            d->error = errno;
            rc = -1;
            break;
        }
        if (pfd[1].revents)
            break;
        if (pfd[0].revents & (POLLERR | POLLNVAL)) {
            d->error = EBADF;
            rc = -1;
            break;
        }
        int got;
        while ((got = afd_read_one(d, pids, pidfds, procs, fds)) > 0) {
            /* A read that left room for the largest event emptied the
             * queue: the next is the poll's (it would find nothing). */
            if (d->last_read + AFD_EVENT_MAX <= d->read_size) {
                if (d->exits != NULL && d->settle_ns > 0 && afd_settle(d))
                    goto out;
                break;
            }
            /* Look at the stop request between reads of a long backlog. */
            struct pollfd s = {d->stop_fd, POLLIN, 0};
            if (poll(&s, 1, 0) > 0)
                goto out;
        }
        if (got < 0) {
            rc = -1;
            break;
        }
    }
out:
    if (d->exits != NULL) {
        afx_pump(d->exits);
        pthread_mutex_lock(&d->lock);
        d->exit_overflows = d->exits->overflows;
        pthread_mutex_unlock(&d->lock);
    }
    free(fds);
    free(pids);
    free(pidfds);
    free(procs);
    free(d->scratch);
    d->scratch = NULL;
    free(d->early);
    d->early = NULL;
    /* On an error the caller wakes the loop, after it has recorded the
     * error: a wakeup before that could be taken, and the error missed. */
    return rc;
}

int afd_init(struct afd_drain *d)
{
    memset(d, 0, sizeof *d);
    if (pthread_mutex_init(&d->lock, NULL) != 0)
        return -1;
    return 0;
}

/* Whether afd_exit_open would get the exit log here (registers, then
 * ends the registration at once). */
int afd_exit_probe(void)
{
    struct afx_log *x = malloc(sizeof *x);
    if (x == NULL)
        return 0;
    afx_open(x);
    int on = x->fd >= 0;
    afx_close(x);
    free(x);
    return on;
}

/* Register the exit log (before afd_run: a process that exits between this
 * and the thread's first read is named too); 1 if it is on. */
int afd_exit_open(struct afd_drain *d)
{
    if (d->exits == NULL) {
        d->exits = malloc(sizeof *d->exits);
        if (d->exits == NULL)
            return 0;
        afx_open(d->exits);
        /* The window opens now, but not for the events already queued: one
         * queued before the log existed may be of a process whose record it
         * never got.  The queue is read in order, so they are the first
         * exit_early events read (afd_early; FIONREAD counts the metadata
         * length alone per queued event, whatever its records).  If that
         * cannot be had, the window opens when the queue is next seen empty. */
        int queued = 0;
        d->exit_mark_ns = afd_now_ns();
        d->exit_mark_open = ioctl(d->fd, FIONREAD, &queued) == 0 && queued >= 0;
        d->exit_early = (uint32_t)queued / FAN_EVENT_METADATA_LEN;
        if (d->exits->fd < 0) {
            free(d->exits);
            d->exits = NULL;
        }
    }
    d->exit_names_on = d->exits != NULL;
    return d->exit_names_on;
}

struct afd_chunk *afd_take(struct afd_drain *d)
{
    pthread_mutex_lock(&d->lock);
    struct afd_chunk *c = d->head;
    if (c) {
        d->head = c->next;
        if (d->head == NULL)
            d->tail = NULL;
    }
    pthread_mutex_unlock(&d->lock);
    return c;
}

void afd_free(struct afd_drain *d, struct afd_chunk *c)
{
    pthread_mutex_lock(&d->lock);
    d->held -= c->size;
    d->chunks_held--;
    pthread_mutex_unlock(&d->lock);
    afd_drop_chunk(c);
}

/* Counts, copied under the lock: reads, bytes, events, dropped events,
 * dropped reads, gaps, held bytes, peak bytes, chunks held, named, unnamed. */
void afd_counts(struct afd_drain *d, uint64_t out[11])
{
    pthread_mutex_lock(&d->lock);
    out[0] = d->reads;
    out[1] = d->bytes_read;
    out[2] = d->events_read;
    out[3] = d->dropped_events;
    out[4] = d->dropped_reads;
    out[5] = d->gaps;
    out[6] = d->held;
    out[7] = d->peak;
    out[8] = d->chunks_held;
    out[9] = d->named;
    out[10] = d->unnamed;
    pthread_mutex_unlock(&d->lock);
}

/* Free what is still held (the thread has returned). */
void afd_destroy(struct afd_drain *d)
{
    struct afd_chunk *c;
    while ((c = afd_take(d)) != NULL) {
        /* pidfds were all closed by the thread */
        afd_free(d, c);
    }
    if (d->exits != NULL) {
        afx_close(d->exits);
        free(d->exits);
        d->exits = NULL;
    }
    pthread_mutex_destroy(&d->lock);
}

/* The exit log's counts: on (the log could be had), processes named from
 * it, and its overflows (as of the last read; final once the thread has
 * returned). */
void afd_exit_counts(struct afd_drain *d, uint64_t out[3])
{
    pthread_mutex_lock(&d->lock);
    out[0] = (uint64_t)d->exit_names_on;
    out[1] = d->exit_named;
    out[2] = d->exit_overflows;
    pthread_mutex_unlock(&d->lock);
}
