/*
 * The batch decoder: one pass over a buffer of fanotify events, filling one
 * fixed-size struct afn_event per event for afanotify/_fastparse.py.
 *
 * Its accept/reject decisions are those of afanotify/_parser.py, rule for
 * rule and in the same order, so that both produce the same events and the
 * same errors; tests/test_fastparse_differential.py holds them to it.  An
 * error status carries up to two numbers (arg1, arg2) that the Python side
 * puts in the same message the pure parser writes.
 *
 * Nothing here reads outside [buf, buf + nbytes): every length taken from
 * the buffer is checked against what is left before it is used, in size_t
 * arithmetic so that no sum can wrap.  Fields are read with memcpy because a
 * synthetic buffer need not be aligned.
 */
#include <limits.h>

#define AFN_OK 0
#define AFN_E_SHORT_BUFFER 1     /* arg1: bytes left; the walk stops */
#define AFN_E_EVENT_LEN 2        /* arg1: event_len, arg2: bytes left; the walk stops */
#define AFN_E_VERSION 3          /* arg1: vers */
#define AFN_E_META_LEN 4         /* arg1: metadata_len */
#define AFN_E_STRAY_BYTES 5      /* arg1: bytes after the last record */
#define AFN_E_RECORD_LEN 6       /* arg1: info_type, arg2: len */
#define AFN_E_RECORD_PAST_END 7  /* arg1: info_type, arg2: len */
#define AFN_E_FID_SHORT 8        /* arg1: info_type, arg2: len */
#define AFN_E_HANDLE_PAST_END 9  /* arg1: info_type, arg2: handle_bytes */
#define AFN_E_NAME_NUL 10        /* arg1: info_type */
#define AFN_E_RECORD_SHORT 11    /* arg1: info_type, arg2: len */

#define AFN_HAS_FID 0x1
#define AFN_HAS_DFID 0x2
#define AFN_HAS_NAME 0x4
#define AFN_HAS_OLD 0x8
#define AFN_HAS_NEW 0x10
#define AFN_HAS_PIDFD 0x20
#define AFN_HAS_ERROR 0x40
#define AFN_HAS_RANGE 0x80
#define AFN_HAS_MNT 0x100
#define AFN_HAS_UNKNOWN 0x200

#define AFN_RESOLVE_FD_PATHS 0x1
#define AFN_FID_BATCH 0x4

/* With AFN_FID_BATCH: dir_idx of an event whose directory record is not
 * numbered (the table is full); name_text is always this. */
#define AFN_NONE UINT32_MAX
/* Distinct directory records numbered per batch (see afn_dir_index). */
#define AFN_MAX_DIRS 512

#define AFN_PATH_NONE (-1)    /* not asked for, or the event has no fd */
#define AFN_PATH_RETRY (-2)   /* did not fit in the arena: the caller resolves it */
#define AFN_PATH_FAILED (-3)  /* readlink failed; arg1 is its errno */

/* The fixed part of a FID-like record's body, before the handle bytes: the
 * fsid, then struct file_handle's handle_bytes and handle_type. */
#define AFN_FH(field) (sizeof(__kernel_fsid_t) + offsetof(struct file_handle, field))
#define AFN_FID_FIXED AFN_FH(f_handle)

/* One FID-like record: `rec` is the buffer offset of its body (the fsid),
 * followed by handle_bytes, handle_type and `handle_len` handle bytes. */
struct afn_fidref {
    uint32_t rec;
    uint32_t handle_len;
    uint32_t name_off;
    uint32_t name_len;
};

/* Keep in step with _EVENT in afanotify/_fastparse.py (a test compares them). */
struct afn_event {
    uint64_t mask;
    uint32_t offset;
    uint32_t event_len;
    int32_t fd;
    int32_t pid;
    uint32_t status;
    uint32_t has;
    int32_t pidfd;
    int32_t error;
    uint32_t error_count;
    uint32_t arg1;
    uint32_t arg2;
    uint32_t path_off;
    int32_t path_len;
    uint32_t reserved;
    uint64_t range_offset;
    uint64_t range_count;
    uint64_t mnt_id;
    struct afn_fidref fid;
    struct afn_fidref dfid;
    struct afn_fidref old;
    struct afn_fidref new;
    uint32_t dir_idx;    /* AFN_FID_BATCH: the dfid record's number in this batch */
    uint32_t name_text;  /* unused, always AFN_NONE (the builder reads names from buf) */
};

static inline uint16_t afn_u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t afn_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline int32_t afn_s32(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t afn_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int afn_fail(struct afn_event *ev, uint32_t status, uint32_t a1, uint32_t a2)
{
    ev->status = status;
    ev->arg1 = a1;
    ev->arg2 = a2;
    return -1;
}

/* A record's body is at least `need` bytes (header included), as _parser._need. */
static int afn_need(struct afn_event *ev, unsigned type, size_t rlen, size_t need)
{
    if (rlen < need)
        return afn_fail(ev, AFN_E_RECORD_SHORT, type, (uint32_t)rlen);
    return 0;
}

/* The offset of the first NUL byte in [q, q + n), or -1.  A name is short:
 * 8-byte words tested inline (a word has a zero byte when (w - 0x01..01) &
 * ~w & 0x80..80 is nonzero, and on a little-endian machine its lowest set
 * bit is in the first zero byte) cost less than a memchr call. */
static inline ssize_t afn_nul(const unsigned char *q, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    size_t k = 0;
    uint64_t w, z;

    for (; n - k >= 8; k += 8) {
        memcpy(&w, q + k, 8);
        z = (w - 0x0101010101010101ull) & ~w & 0x8080808080808080ull;
        if (z)
            return (ssize_t)(k + ((unsigned)__builtin_ctzll(z) >> 3));
    }
    for (; k < n; k++)
        if (q[k] == 0)
            return (ssize_t)k;
    return -1;
#else
    const unsigned char *nul = memchr(q, 0, n);
    return nul != NULL ? (ssize_t)(nul - q) : -1;
#endif
}

/* Decode the info records of one event whose own bounds are checked:
 * [base + meta_len, base + event_len) lies inside the buffer.  `boff` is
 * base's offset in the buffer, for the offsets stored in `ev`. */
static int afn_records(const unsigned char *base, size_t boff, size_t meta_len,
                       size_t event_len, struct afn_event *ev)
{
    size_t pos = meta_len, end = event_len;

    while (pos < end) {
        unsigned type;
        size_t rlen, body, rend;

        if (end - pos < sizeof(struct fanotify_event_info_header))
            return afn_fail(ev, AFN_E_STRAY_BYTES, (uint32_t)(end - pos), 0);
        type = base[pos];
        rlen = afn_u16(base + pos + offsetof(struct fanotify_event_info_header, len));
        if (rlen < sizeof(struct fanotify_event_info_header))
            return afn_fail(ev, AFN_E_RECORD_LEN, type, (uint32_t)rlen);
        if (rlen > end - pos)
            return afn_fail(ev, AFN_E_RECORD_PAST_END, type, (uint32_t)rlen);
        body = pos + sizeof(struct fanotify_event_info_header);
        rend = pos + rlen;

        switch (type) {
        case FAN_EVENT_INFO_TYPE_FID:
        case FAN_EVENT_INFO_TYPE_DFID:
        case FAN_EVENT_INFO_TYPE_DFID_NAME:
        case FAN_EVENT_INFO_TYPE_OLD_DFID_NAME:
        case FAN_EVENT_INFO_TYPE_NEW_DFID_NAME: {
            /* fsid (2 x u32), handle_bytes (u32), handle_type (s32) */
            size_t hstart, hend, hbytes, name_len = 0;
            struct afn_fidref *ref;
            if (rend - body < AFN_FID_FIXED)
                return afn_fail(ev, AFN_E_FID_SHORT, type, (uint32_t)rlen);
            hbytes = afn_u32(base + body + AFN_FH(handle_bytes));
            hstart = body + AFN_FID_FIXED;
            if (hbytes > rend - hstart)
                return afn_fail(ev, AFN_E_HANDLE_PAST_END, type, (uint32_t)hbytes);
            hend = hstart + hbytes;
            if (type != FAN_EVENT_INFO_TYPE_FID && type != FAN_EVENT_INFO_TYPE_DFID) {
                ssize_t at = afn_nul(base + hend, rend - hend);
                if (at < 0)
                    return afn_fail(ev, AFN_E_NAME_NUL, type, 0);
                name_len = (size_t)at;
            }
            /* A repeated record replaces the earlier one, as in the pure parser;
             * DFID and DFID_NAME both set dfid, only DFID_NAME sets the name. */
            switch (type) {
            case FAN_EVENT_INFO_TYPE_FID:
                ref = &ev->fid;
                ev->has |= AFN_HAS_FID;
                break;
            case FAN_EVENT_INFO_TYPE_OLD_DFID_NAME:
                ref = &ev->old;
                ev->has |= AFN_HAS_OLD;
                break;
            case FAN_EVENT_INFO_TYPE_NEW_DFID_NAME:
                ref = &ev->new;
                ev->has |= AFN_HAS_NEW;
                break;
            default:
                ref = &ev->dfid;
                ev->has |= AFN_HAS_DFID;
                break;
            }
            ref->rec = (uint32_t)(boff + body);
            ref->handle_len = (uint32_t)hbytes;
            if (type != FAN_EVENT_INFO_TYPE_FID && type != FAN_EVENT_INFO_TYPE_DFID) {
                ref->name_off = (uint32_t)(boff + hend);
                ref->name_len = (uint32_t)name_len;
                if (type == FAN_EVENT_INFO_TYPE_DFID_NAME)
                    ev->has |= AFN_HAS_NAME;
            }
            break;
        }
        case FAN_EVENT_INFO_TYPE_PIDFD:
            if (afn_need(ev, type, rlen, sizeof(struct fanotify_event_info_pidfd)))
                return -1;
            ev->pidfd = afn_s32(base + body);
            ev->has |= AFN_HAS_PIDFD;
            break;
        case FAN_EVENT_INFO_TYPE_ERROR:
            if (afn_need(ev, type, rlen, sizeof(struct fanotify_event_info_error)))
                return -1;
            ev->error = afn_s32(base + pos + offsetof(struct fanotify_event_info_error, error));
            ev->error_count =
                afn_u32(base + pos + offsetof(struct fanotify_event_info_error, error_count));
            ev->has |= AFN_HAS_ERROR;
            break;
        case FAN_EVENT_INFO_TYPE_RANGE:
            if (afn_need(ev, type, rlen, sizeof(struct fanotify_event_info_range)))
                return -1;
            ev->range_offset =
                afn_u64(base + pos + offsetof(struct fanotify_event_info_range, offset));
            ev->range_count =
                afn_u64(base + pos + offsetof(struct fanotify_event_info_range, count));
            ev->has |= AFN_HAS_RANGE;
            break;
        case FAN_EVENT_INFO_TYPE_MNT:
            if (afn_need(ev, type, rlen, sizeof(struct fanotify_event_info_mnt)))
                return -1;
            ev->mnt_id = afn_u64(base + pos + offsetof(struct fanotify_event_info_mnt, mnt_id));
            ev->has |= AFN_HAS_MNT;
            break;
        default:
            /* Newer than us: the caller collects these by walking the event
             * again; the bounds are already checked. */
            ev->has |= AFN_HAS_UNKNOWN;
            break;
        }
        pos = rend;
    }
    return 0;
}

/* readlink of the event fd's /proc/self/fd entry, into the arena.  `fddir`
 * is a descriptor of /proc/self/fd (the caller's, see afn_decode_at), so each
 * lookup is a single component (readlinkat) instead of a walk through
 * /proc/self.  Without it (-1), or if it is no longer a directory (EBADF,
 * ENOTDIR: somebody closed it under us), the full path is used. */
static void afn_resolve(struct afn_event *ev, int fddir, char *arena, size_t arena_cap,
                        size_t *used)
{
    char link[32] = "/proc/self/fd/";
    char digits[12];
    size_t room, nd = 0, i;
    unsigned v = (unsigned)ev->fd;
    ssize_t r;

    do {
        digits[nd++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < nd; i++)
        link[14 + i] = digits[nd - 1 - i];
    link[14 + nd] = '\0';

    room = arena_cap - *used;
    if (room > PATH_MAX)
        room = PATH_MAX;
    if (room == 0) {
        ev->path_len = AFN_PATH_RETRY;
        return;
    }
    r = -1;
    if (fddir >= 0)
        r = readlinkat(fddir, link + 14, arena + *used, room);
    if (fddir < 0 || (r < 0 && (errno == EBADF || errno == ENOTDIR)))
        r = readlink(link, arena + *used, room);
    if (r < 0) {
        ev->path_len = AFN_PATH_FAILED;
        ev->arg1 = (uint32_t)errno;
        return;
    }
    /* readlink() truncates silently: a full buffer may be a cut path. */
    if ((size_t)r >= room) {
        ev->path_len = AFN_PATH_RETRY;
        return;
    }
    ev->path_off = (uint32_t)*used;
    ev->path_len = (int32_t)r;
    *used += (size_t)r;
}

/* Number the distinct directory records of a batch (fsid, handle size, type
 * and bytes compared), so that the caller makes one FileHandle per directory
 * without slicing and hashing each record.  `dirs` holds the first record of
 * each number; `ndirs` how many there are. */
/* The numbers are found through a small open-addressing table (`slot`: a
 * number + 1, 0 for empty, at most a quarter full), not by comparing the
 * record with every directory seen: on a burst over many directories the
 * linear search was 52 memcmp calls per event, a quarter of a mixed
 * drain's instructions. */
#define AFN_DIR_SLOTS 2048
_Static_assert(AFN_MAX_DIRS * 4 <= AFN_DIR_SLOTS && AFN_MAX_DIRS < UINT16_MAX, "dir table size");
_Static_assert((AFN_DIR_SLOTS & (AFN_DIR_SLOTS - 1)) == 0, "a power of two");
struct afn_dirs {
    const unsigned char *rec[AFN_MAX_DIRS];
    size_t len[AFN_MAX_DIRS];
    unsigned n, last;
    uint16_t slot[AFN_DIR_SLOTS];
};

/* A hash of the record's bytes (len >= AFN_FID_FIXED >= 8: 8-byte words,
 * the last one read ending at the record's end). */
static unsigned afn_dir_hash(const unsigned char *rec, size_t len)
{
    uint64_t h = len, w;
    size_t at;

    for (at = 0; at + 8 <= len; at += 8) {
        memcpy(&w, rec + at, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    if (at < len) {
        memcpy(&w, rec + len - 8, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    }
    h *= 0xBF58476D1CE4E5B9ull;
    return (unsigned)(h >> 53) & (AFN_DIR_SLOTS - 1);
}

/* Whether the len bytes at a and b are equal (len >= 8, as in afn_dir_hash):
 * 8-byte words compared inline, the last one ending at the end.  A record
 * is a few words long: a memcmp call cost more than the compare. */
static inline int afn_rec_eq(const unsigned char *a, const unsigned char *b, size_t len)
{
    uint64_t x, y;
    size_t at;

    for (at = 0; at + 8 <= len; at += 8) {
        memcpy(&x, a + at, 8);
        memcpy(&y, b + at, 8);
        if (x != y)
            return 0;
    }
    if (at < len) {
        memcpy(&x, a + len - 8, 8);
        memcpy(&y, b + len - 8, 8);
        return x == y;
    }
    return 1;
}

static uint32_t afn_dir_index(struct afn_dirs *d, const unsigned char *rec, size_t len)
{
    unsigned at, i;

    if (d->n && d->len[d->last] == len && afn_rec_eq(d->rec[d->last], rec, len))
        return d->last;
    for (at = afn_dir_hash(rec, len); d->slot[at]; at = (at + 1) & (AFN_DIR_SLOTS - 1)) {
        i = d->slot[at] - 1u;
        if (d->len[i] == len && afn_rec_eq(d->rec[i], rec, len)) {
            d->last = i;
            return i;
        }
    }
    if (d->n == AFN_MAX_DIRS)
        return AFN_NONE;
    d->rec[d->n] = rec;
    d->len[d->n] = len;
    d->slot[at] = (uint16_t)(d->n + 1);
    d->last = d->n;
    return d->n++;
}

/*
 * Decode the events in buf[0, nbytes) into out[0, cap); returns how many
 * entries were written (good events and malformed ones alike, in buffer
 * order), or -EOVERFLOW if nbytes does not fit the 32-bit offsets.  *stop is
 * where the walk ended: nbytes, unless `cap` ran out first.
 *
 * With AFN_RESOLVE_FD_PATHS, a good event's fd is resolved to a path in the
 * arena.  No fd is ever closed here: the events own them.
 *
 * With AFN_FID_BATCH, a good event with a dfid record gets dir_idx (its
 * names are read from buf by the builder: the arena is not used).
 *
 * afn_decode_at takes `fddir`, a descriptor of /proc/self/fd the caller keeps
 * open across batches (or -1), for AFN_RESOLVE_FD_PATHS: opening it costs
 * more than the readlinks of a small batch.  The caller reopens it after a
 * fork, since a descriptor opened on /proc/self still names the process that
 * opened it.  afn_decode opens one for the batch and closes it.
 */
/* What a new entry starts as: no fd, no pidfd, no path, not numbered. */
static const struct afn_event afn_event_init = {
    .fd = -1, .pidfd = -1, .path_len = AFN_PATH_NONE, .dir_idx = AFN_NONE,
    .name_text = AFN_NONE,
};

long afn_decode_at(const unsigned char *buf, size_t nbytes, struct afn_event *out, size_t cap,
                   unsigned int flags, char *arena, size_t arena_cap,
                   size_t *arena_used, size_t *stop, int fddir)
{
    const size_t meta = FAN_EVENT_METADATA_LEN;
    size_t off = 0, n = 0, used = 0;
    struct afn_dirs dirs;

    dirs.n = dirs.last = 0;
    memset(dirs.slot, 0, sizeof dirs.slot);

    if (nbytes > UINT32_MAX || arena_cap > UINT32_MAX)
        return -EOVERFLOW;
    while (off < nbytes && n < cap) {
        struct afn_event *ev = &out[n++];
        size_t left = nbytes - off, event_len, meta_len;
        unsigned vers;
        const unsigned char *p = buf + off;

        /* One copy of a constant (inline stores), not a memset call and
         * the stores over it. */
        *ev = afn_event_init;
        ev->offset = (uint32_t)off;
        if (left < meta) {
            afn_fail(ev, AFN_E_SHORT_BUFFER, (uint32_t)left, 0);
            off = nbytes;
            break;
        }
        event_len = afn_u32(p + offsetof(struct fanotify_event_metadata, event_len));
        meta_len = afn_u16(p + offsetof(struct fanotify_event_metadata, metadata_len));
        ev->event_len = (uint32_t)event_len;
        ev->mask = afn_u64(p + offsetof(struct fanotify_event_metadata, mask));
        ev->fd = afn_s32(p + offsetof(struct fanotify_event_metadata, fd));
        ev->pid = afn_s32(p + offsetof(struct fanotify_event_metadata, pid));
        if (event_len < meta || event_len > left) {
            afn_fail(ev, AFN_E_EVENT_LEN, (uint32_t)event_len, (uint32_t)left);
            off = nbytes;
            break;
        }
        vers = p[offsetof(struct fanotify_event_metadata, vers)];
        if (vers != FANOTIFY_METADATA_VERSION)
            afn_fail(ev, AFN_E_VERSION, vers, 0);
        else if (meta_len < meta || meta_len > event_len)
            afn_fail(ev, AFN_E_META_LEN, (uint32_t)meta_len, 0);
        else if (event_len > meta_len)
            afn_records(p, off, meta_len, event_len, ev);

        if ((flags & AFN_FID_BATCH) && ev->status == AFN_OK && (ev->has & AFN_HAS_DFID)) {
            /* The fsid, handle_bytes, handle_type and handle of the record. */
            ev->dir_idx = afn_dir_index(&dirs, buf + ev->dfid.rec,
                                        AFN_FID_FIXED + (size_t)ev->dfid.handle_len);
        }
        if (ev->status == AFN_OK && ev->fd >= 0) {
            if (flags & AFN_RESOLVE_FD_PATHS)
                afn_resolve(ev, fddir, arena, arena_cap, &used);
        }
        off += event_len;
    }
    *arena_used = used;
    *stop = off;
    return (long)n;
}

/* What the first n entries hold that makes paths looked up now unsafe for
 * the batch: bit 1, a good event with a bit of `moves` and FAN_ONDIR (a
 * directory moved, so a path looked up now may not be the one an earlier
 * event had); bit 2, a queue overflow (events were lost before it). */
int afn_has_move(const struct afn_event *ev, size_t n, uint64_t moves)
{
    size_t i;
    int r = 0;

    const uint64_t any = moves | FAN_Q_OVERFLOW;

    for (i = 0; i < n; i++) {
        /* One test for the common entry, which has none of these bits. */
        if (!(ev[i].mask & any) || ev[i].status != AFN_OK)
            continue;
        if ((ev[i].mask & moves) && (ev[i].mask & FAN_ONDIR))
            r |= 1;
        if (ev[i].mask & FAN_Q_OVERFLOW)
            r |= 2;
    }
    return r;
}

long afn_decode(const unsigned char *buf, size_t nbytes, struct afn_event *out, size_t cap,
                unsigned int flags, char *arena, size_t arena_cap,
                size_t *arena_used, size_t *stop)
{
    int fddir = -1;
    long n;

    if ((flags & AFN_RESOLVE_FD_PATHS) && nbytes > 0)
        fddir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_PATH);
    n = afn_decode_at(buf, nbytes, out, cap, flags, arena, arena_cap, arena_used, stop, fddir);
    if (fddir >= 0)
        close(fddir);
    return n;
}
