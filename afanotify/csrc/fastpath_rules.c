/*
 * Static permission decisions: afanotify/_static.py's rules, applied in C to
 * a buffer just read from a permission group, before anything is decoded.
 *
 * afr_apply walks the events once.  A permission event with an fd whose
 * process is not the group's own is matched against the rules in order (the
 * first match decides, else the set's default); a decided event is answered
 * (one write(2) of struct fanotify_response), its fd and pidfd are closed,
 * and it leaves the buffer.  Every other event (not a permission event, no
 * fd, our own process, a malformed one, or one no rule decides when the set
 * has no default) is moved down to the front of the buffer, in order, for
 * the Python decoder: *kept is how many bytes of it there are.  So no Python
 * object exists for an event decided here.
 *
 * What the rules look at is read lazily, once per event and only if a rule
 * asks: the file's path (readlink of /proc/self/fd/N, " (deleted)" removed),
 * the process's executable (readlink of /proc/PID/exe) and its effective uid
 * (the owner of /proc/PID, as in the Uid: line of /proc/PID/status).  A value that cannot be read
 * matches no rule that needs it, as for afanotify.FanoRule.
 *
 * The response is written before anything is recorded, except the
 * process's executable and uid for a log line, which are read first (an
 * answered process may exit before we look).  If the kernel
 * refuses a response that carries FAN_AUDIT or an errno (EINVAL: an older
 * kernel, or audit not enabled), the plain FAN_ALLOW / FAN_DENY is written
 * instead, so the process never waits on a response we could not send.
 */
#include <poll.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>

#define AFR_DELETED " (deleted)"
#define AFR_DELETED_LEN 10
#define AFR_UNKNOWN (-1)
#define AFR_NOT_READ (-2)
#define AFR_DEFAULT_RULE (-1)
#define AFR_RESPONSE_MASK 0xff0000ffu

struct afr_rule {
    uint64_t mask;
    const char *path;
    const char *exe;
    const uint32_t *uids;
    uint32_t nuids;
    uint32_t response;
    uint32_t has_range;
    uint32_t pad;
    uint64_t range_lo;
    uint64_t range_hi;
    uint64_t hits;
};

struct afr_ruleset {
    struct afr_rule *rules;
    uint32_t nrules;
    uint32_t default_response;
    int32_t own_pid;
    uint32_t record;
    uint64_t default_hits;
    uint64_t allowed;
    uint64_t denied;
    uint64_t write_errors;
    uint64_t fallbacks;
    uint32_t answer_kept;
    uint32_t pad;
    uint64_t passed;
    uint64_t reads;
    int32_t fddir;
    int32_t fddir_pid;
};

struct afr_decision {
    uint64_t mask;
    uint64_t range_offset;
    uint64_t range_count;
    int32_t pid;
    int32_t rule;
    uint32_t response;
    int32_t write_errno;
    int32_t uid;
    uint32_t path_off;
    int32_t path_len;
    uint32_t exe_off;
    int32_t exe_len;
    uint32_t has_range;
};

/* What the rules have read about the event being decided. */
struct afr_facts {
    int fd, pid, fddir;
    int path_len, exe_len, uid;
    char path[PATH_MAX];
    char exe[PATH_MAX];
};

static inline uint32_t afr_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t afr_u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint64_t afr_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline int32_t afr_s32(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return v; }

static int afr_readlink(const char *link, char *out)
{
    ssize_t r = readlink(link, out, PATH_MAX);
    if (r < 0 || r >= PATH_MAX)
        return AFR_UNKNOWN;
    out[r] = '\0';
    return (int)r;
}

static const char *afr_path(struct afr_facts *f)
{
    if (f->path_len == AFR_NOT_READ) {
        char link[40];
        ssize_t r;
        if (f->fddir >= 0) {
            snprintf(link, sizeof link, "%d", f->fd);
            r = readlinkat(f->fddir, link, f->path, PATH_MAX);
            f->path_len = r < 0 || r >= PATH_MAX ? AFR_UNKNOWN : (int)r;
            if (f->path_len >= 0)
                f->path[f->path_len] = '\0';
        } else {
            snprintf(link, sizeof link, "/proc/self/fd/%d", f->fd);
            f->path_len = afr_readlink(link, f->path);
        }
        if (f->path_len >= AFR_DELETED_LEN &&
            !memcmp(f->path + f->path_len - AFR_DELETED_LEN, AFR_DELETED, AFR_DELETED_LEN)) {
            f->path_len -= AFR_DELETED_LEN;
            f->path[f->path_len] = '\0';
        }
    }
    return f->path_len >= 0 ? f->path : NULL;
}

static const char *afr_exe(struct afr_facts *f)
{
    if (f->exe_len == AFR_NOT_READ) {
        char link[40];
        snprintf(link, sizeof link, "/proc/%d/exe", f->pid);
        f->exe_len = f->pid > 0 ? afr_readlink(link, f->exe) : AFR_UNKNOWN;
    }
    return f->exe_len >= 0 ? f->exe : NULL;
}

/* The effective uid: the owner of the /proc/PID directory, one stat(2).
 * The kernel gives that directory (and only the per-process directories of
 * mode 0555) the task's euid even when the process is not dumpable, so it is
 * the second Uid: field of /proc/PID/status without formatting that file
 * (5-11 us here, against about 1.4 for the stat). */
static int afr_uid(struct afr_facts *f)
{
    if (f->uid == AFR_NOT_READ) {
        char name[32];
        struct stat st;
        f->uid = AFR_UNKNOWN;
        if (f->pid <= 0)
            return f->uid;
        snprintf(name, sizeof name, "/proc/%d", f->pid);
        if (stat(name, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid <= INT32_MAX)
            f->uid = (int)st.st_uid;
    }
    return f->uid;
}

static int afr_match(const struct afr_rule *r, uint64_t mask, int has_range, uint64_t roff,
                     uint64_t rcount, struct afr_facts *f)
{
    if (r->mask && !(mask & r->mask))
        return 0;
    if (r->has_range) {
        uint64_t last;
        if (!has_range || rcount == 0)
            return 0;
        last = roff + rcount - 1;
        if (last < roff)
            last = UINT64_MAX;
        if (last < r->range_lo || roff > r->range_hi)
            return 0;
    }
    if (r->nuids) {
        int uid = afr_uid(f);
        uint32_t i, ok = 0;
        if (uid < 0)
            return 0;
        for (i = 0; i < r->nuids && !ok; i++)
            ok = r->uids[i] == (uint32_t)uid;
        if (!ok)
            return 0;
    }
    if (r->exe) {
        const char *exe = afr_exe(f);
        if (!exe || fnmatch(r->exe, exe, FNM_EXTMATCH) != 0)
            return 0;
    }
    if (r->path) {
        const char *path = afr_path(f);
        if (!path || fnmatch(r->path, path, FNM_EXTMATCH) != 0)
            return 0;
    }
    return 1;
}

static int afr_write(int group_fd, int32_t fd, uint32_t response)
{
    struct fanotify_response r = { .fd = fd, .response = response };
    ssize_t n;
    do {
        n = write(group_fd, &r, sizeof r);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? errno : 0;
}

static void afr_store(char *arena, size_t arena_cap, size_t *used, const char *s, int len,
                      uint32_t *off, int32_t *out_len)
{
    if (len < 0 || arena_cap - *used < (size_t)len) {
        *out_len = -1;
        return;
    }
    memcpy(arena + *used, s, (size_t)len);
    *off = (uint32_t)*used;
    *out_len = len;
    *used += (size_t)len;
}

long afr_apply(struct afr_ruleset *rs, int group_fd, unsigned char *buf, size_t nbytes,
               struct afr_decision *out, size_t cap, char *arena, size_t arena_cap,
               size_t *kept)
{
    const size_t meta = FAN_EVENT_METADATA_LEN;
    size_t off = 0, keep = 0, used = 0;
    long nout = 0;
    struct afr_facts facts;
    /* Once per batch, not per event: getpid() is a system call. */
    pid_t self_pid = getpid();

    while (off < nbytes) {
        unsigned char *p = buf + off;
        size_t left = nbytes - off, event_len, meta_len, pos;
        uint64_t mask, roff = 0, rcount = 0;
        int32_t fd, pid, pidfd = -1;
        int has_range = 0, rule = AFR_DEFAULT_RULE, err = 0;
        uint32_t response, i;

        if (left < meta)
            break;
        event_len = afr_u32(p + offsetof(struct fanotify_event_metadata, event_len));
        meta_len = afr_u16(p + offsetof(struct fanotify_event_metadata, metadata_len));
        mask = afr_u64(p + offsetof(struct fanotify_event_metadata, mask));
        fd = afr_s32(p + offsetof(struct fanotify_event_metadata, fd));
        pid = afr_s32(p + offsetof(struct fanotify_event_metadata, pid));
        if (event_len < meta || event_len > left) {
            /* The walk cannot go on.  The Python decoder reports it; alone,
             * allow its first event so that nobody waits on it. */
            if (rs->answer_kept && fd >= 0) {
                afr_write(group_fd, fd, FAN_ALLOW);
                close(fd);
                rs->passed++;
                off = nbytes;
            }
            break;
        }
        if (p[offsetof(struct fanotify_event_metadata, vers)] != FANOTIFY_METADATA_VERSION ||
            meta_len < meta || meta_len > event_len || !(mask & (FAN_OPEN_PERM |
            FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM | FAN_PRE_ACCESS)) || fd < 0 ||
            pid == rs->own_pid || nout >= (long)cap)
            goto keep_it;
        for (pos = meta_len; pos + sizeof(struct fanotify_event_info_header) <= event_len;) {
            unsigned type = p[pos];
            size_t rlen = afr_u16(p + pos + offsetof(struct fanotify_event_info_header, len));
            if (rlen < sizeof(struct fanotify_event_info_header) || rlen > event_len - pos)
                goto keep_it;
            if (type == FAN_EVENT_INFO_TYPE_RANGE &&
                rlen >= sizeof(struct fanotify_event_info_range)) {
                roff = afr_u64(p + pos + offsetof(struct fanotify_event_info_range, offset));
                rcount = afr_u64(p + pos + offsetof(struct fanotify_event_info_range, count));
                has_range = 1;
            } else if (type == FAN_EVENT_INFO_TYPE_PIDFD &&
                       rlen >= sizeof(struct fanotify_event_info_pidfd)) {
                pidfd = afr_s32(p + pos + offsetof(struct fanotify_event_info_pidfd, pidfd));
            }
            pos += rlen;
        }
        if (pos != event_len)
            goto keep_it;

        if (rs->fddir_pid != self_pid) {
            /* First use, or a forked child holding its parent's /proc/self. */
            if (rs->fddir >= 0)
                close(rs->fddir);
            rs->fddir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_PATH);
            rs->fddir_pid = self_pid;
        }
        facts.fddir = rs->fddir;
        facts.fd = fd;
        facts.pid = pid;
        facts.path_len = facts.exe_len = facts.uid = AFR_NOT_READ;
        for (i = 0; i < rs->nrules; i++) {
            if (afr_match(&rs->rules[i], mask, has_range, roff, rcount, &facts)) {
                rule = (int)i;
                break;
            }
        }
        if (rule == AFR_DEFAULT_RULE && !rs->default_response)
            goto keep_it;
        response = rule == AFR_DEFAULT_RULE ? rs->default_response : rs->rules[rule].response;

        if (rs->record) {
            /* The process is read for the log line before it is answered:
             * once allowed it may exit at once, and a zombie's
             * /proc/PID/exe and status name nobody. */
            afr_exe(&facts);
            afr_uid(&facts);
        }
        err = afr_write(group_fd, fd, response);
        if (err == EINVAL && response != (response & (FAN_ALLOW | FAN_DENY))) {
            rs->fallbacks++;
            response &= FAN_ALLOW | FAN_DENY;
            err = afr_write(group_fd, fd, response);
        }
        if (rs->record)
            afr_path(&facts);  /* for the log line, while the fd is still open */
        close(fd);
        if (pidfd >= 0)
            close(pidfd);
        if (err)
            rs->write_errors++;
        if (rule == AFR_DEFAULT_RULE)
            rs->default_hits++;
        else
            rs->rules[rule].hits++;
        if (response & FAN_DENY)
            rs->denied++;
        else
            rs->allowed++;

        {
            struct afr_decision *d = &out[nout++];
            memset(d, 0, sizeof *d);
            d->mask = mask;
            d->pid = pid;
            d->rule = rule;
            d->response = response;
            d->write_errno = err;
            d->has_range = (uint32_t)has_range;
            d->range_offset = roff;
            d->range_count = rcount;
            d->path_len = d->exe_len = -1;
            d->uid = -1;
            if (rs->record) {
                afr_store(arena, arena_cap, &used, facts.path, facts.path_len,
                              &d->path_off, &d->path_len);
                afr_store(arena, arena_cap, &used, facts.exe, facts.exe_len,
                          &d->exe_off, &d->exe_len);
                d->uid = facts.uid;
            }
        }
        off += event_len;
        continue;

    keep_it:
        if (rs->answer_kept) {
            /* No Python reader behind us (afr_serve): our own events and
             * malformed ones are allowed, as the Python pipeline does, and
             * every fd is closed. */
            if (fd >= 0) {
                if (mask & (FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM | FAN_PRE_ACCESS))
                    if (afr_write(group_fd, fd, FAN_ALLOW))
                        rs->write_errors++;
                close(fd);
                if (pidfd >= 0)
                    close(pidfd);
            }
            rs->passed++;
            off += event_len;
            continue;
        }
        if (keep != off)
            memmove(buf + keep, p, event_len);
        keep += event_len;
        off += event_len;
    }
    if (off < nbytes) {
        /* A malformed tail: keep it whole for the Python decoder's error. */
        if (keep != off)
            memmove(buf + keep, buf + off, nbytes - off);
        keep += nbytes - off;
    }
    *kept = keep;
    return nout;
}

/* Close what afr_apply keeps open between calls. */
void afr_release(struct afr_ruleset *rs)
{
    if (rs->fddir >= 0 && rs->fddir_pid == getpid())
        close(rs->fddir);
    rs->fddir = -1;
}

#define AFR_WOKEN (-100000)
#define AFR_READ_FIRST 64
#define AFR_SERVE_SLICE_NS 100000000LL

static long long afr_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/*
 * Wait up to timeout_ms for group_fd or wake_fd, and read group_fd once:
 * the bytes read, 0 on a timeout, AFR_WOKEN once wake_fd is readable, or
 * -errno of a failed poll or read (EINTR and EAGAIN are waited again).
 */
static long afr_wait_read(int group_fd, int wake_fd, int timeout_ms, unsigned char *buf,
                          size_t bufsize, int read_first)
{
    struct pollfd pfd[2];
    if (read_first) {
        /* The group fd is non-blocking.  Right after a batch is answered the
         * next event is often queued already (the answered process ran on
         * and opened again): one read(2) then instead of poll(2) + read(2).
         * wake_fd is still looked at by the poll of the next empty read. */
        ssize_t n;
        do {
            n = read(group_fd, buf, bufsize);
        } while (n < 0 && errno == EINTR);
        if (n > 0)
            return (long)n;
        if (n < 0 && errno != EAGAIN)
            return -errno;
    }
    pfd[0].fd = group_fd;
    pfd[0].events = POLLIN;
    pfd[1].fd = wake_fd;
    pfd[1].events = POLLIN;
    for (;;) {
        ssize_t n;
        int r = poll(pfd, 2, timeout_ms);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (pfd[1].revents)
            return AFR_WOKEN;
        if (r == 0)
            return 0;
        if (pfd[0].revents & (POLLERR | POLLNVAL))
            return -EBADF;
        n = read(group_fd, buf, bufsize);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        return (long)n;
    }
}

/*
 * Read group_fd and decide in C until there is something for the caller:
 * returns the number of decisions in out[] when rs->record is set and a
 * batch made some, 0 after about 100 ms (so the caller can update its
 * counters), AFR_WOKEN once wake_fd is readable (new rules, or stop), or
 * -errno of a failed poll or read (EMFILE/ENFILE: the kernel dropped an
 * event it could not open an fd for).  Called without the GIL from the
 * guard's serving thread; rs->answer_kept must be set.
 */
long afr_serve(struct afr_ruleset *rs, int group_fd, int wake_fd, unsigned char *buf,
               size_t bufsize, struct afr_decision *out, size_t cap, char *arena,
               size_t arena_cap)
{
    long long start = afr_now_ns();
    size_t kept;
    int read_first = 0;

    for (;;) {
        long count;
        long n = afr_wait_read(group_fd, wake_fd, 100, buf, bufsize, read_first);
        if (n <= 0)
            return n; /* a timeout, AFR_WOKEN or -errno */
        /* At most AFR_READ_FIRST reads in a row without a poll, so a wake-up
         * (new rules, stop) is seen within that many batches. */
        read_first = read_first < AFR_READ_FIRST ? read_first + 1 : 0;
        rs->reads++;
        count = afr_apply(rs, group_fd, buf, (size_t)n, out, cap, arena, arena_cap, &kept);
        if (count > 0 && rs->record)
            return count;
        if (afr_now_ns() - start > AFR_SERVE_SLICE_NS)
            return 0;
    }
}

/*
 * The permission thread's read (afanotify/_permthread.py): wait up to
 * timeout_ms for group_fd or wake_fd, read group_fd once, and walk the batch
 * (afn_decode_at, fd paths read through fddir), all before the caller takes
 * the GIL back.  Returns the walk's entry count with *nread set to the bytes
 * read (0 and *nread = 0 on a timeout), AFR_WOKEN once wake_fd is readable,
 * or -errno of a failed poll or read (EMFILE/ENFILE: the kernel dropped an
 * event it could not open an fd for).
 */
long afp_read_walk(int group_fd, int wake_fd, int timeout_ms, unsigned char *buf,
                   size_t bufsize, long *nread, struct afn_event *out, size_t cap,
                   unsigned int flags, char *arena, size_t arena_cap, size_t *arena_used,
                   size_t *stop, int fddir)
{
    long n = afr_wait_read(group_fd, wake_fd, timeout_ms, buf, bufsize, 0);
    *nread = n > 0 ? n : 0;
    if (n <= 0)
        return n; /* a timeout, AFR_WOKEN or -errno */
    return afn_decode_at(buf, (size_t)n, out, cap, flags, arena, arena_cap, arena_used, stop,
                         fddir);
}

/*
 * The event loop's read for an on_permission handler (afanotify/_permloop.py):
 * the loop already said group_fd is readable, so no poll.  One read into
 * buf, then (walk) the C walk with the fd paths, as afp_read_walk does.
 * Returns the number of entries walked (or, without walk, 0) with *nread the
 * bytes read; 0 with *nread 0 when nothing is queued (EAGAIN); -errno of a
 * failed read.
 */
long afp_read_walk_now(int group_fd, unsigned char *buf, size_t bufsize, long *nread,
                       int walk, struct afn_event *out, size_t cap, unsigned int flags,
                       char *arena, size_t arena_cap, size_t *arena_used, size_t *stop,
                       int fddir)
{
    ssize_t n;
    do {
        n = read(group_fd, buf, bufsize);
    } while (n < 0 && errno == EINTR);
    *nread = n > 0 ? (long)n : 0;
    if (n < 0)
        return errno == EAGAIN ? 0 : -errno;
    if (n == 0 || !walk)
        return 0;
    return afn_decode_at(buf, (size_t)n, out, cap, flags, arena, arena_cap, arena_used, stop,
                         fddir);
}

/* afp_read_walk_now with its arguments in one struct, filled once by the
 * caller: a call from Python then converts one pointer instead of thirteen
 * arguments (about 2,000 instructions of cffi's per read, callgrind). */
struct afp_read_args {
    int group_fd;
    int walk;
    int fddir;
    unsigned int flags;
    unsigned char *buf;
    size_t bufsize;
    long nread;
    struct afn_event *out;
    size_t cap;
    char *arena;
    size_t arena_cap;
    size_t *arena_used;
    size_t *stop;
};

long afp_read_walk_args(struct afp_read_args *a)
{
    return afp_read_walk_now(a->group_fd, a->buf, a->bufsize, &a->nread, a->walk, a->out,
                             a->cap, a->flags, a->arena, a->arena_cap, a->arena_used, a->stop,
                             a->fddir);
}

/* Write one response and then close the event's fd (close_fd), in one call
 * from the permission thread; returns 0 or the errno of the write. */
int afp_answer(int group_fd, int fd, uint32_t response, int close_fd)
{
    int err = afr_write(group_fd, fd, response);
    if (close_fd)
        close(fd);
    return err;
}
