/*
 * The exit log: the names of processes as they exit, for the drain.
 *
 * A short-lived process (touch, a shell's echo, dd) is often reaped by its
 * parent before the drain has read its events; from then on /proc has no
 * entry for it and the drain cannot name it from /proc.  But every exiting
 * task sends its accounting record (struct taskstats, with ac_comm) to the
 * listeners registered with the kernel's taskstats interface, and it sends it
 * from do_exit, before the task becomes a zombie and so before it can be
 * reaped.  The drain registers for every CPU (CAP_NET_ADMIN, in the initial
 * user and pid namespaces: a root watcher) and keeps the last AFX_RING
 * records in a ring, in arrival order.
 *
 * A name from the log must never be another process's.  A pid is reused only
 * after its process is reaped and the kernel's pid allocator has cycled
 * through the other pids; the record of a process is in the socket before
 * its process can be reaped.  The drain keeps a window per read: the
 * records taken since the kernel's queue was last seen empty (a read that
 * emptied it, or a poll that timed out; afd_read_one's exit_mark; the
 * first window opens at registration, for the events queued after it:
 * those queued before are counted then and get none, afd_early).  Every
 * event the window is used for was queued after it opened, so its process
 * was alive then (a close at exit comes just after the record, which is
 * why that is "give or take a few microseconds").  A process known reaped
 * (no pidfd at the read, or ESRCH from its pidfd after the /proc reads; in
 * a group without pidfds, one whose /proc entry could not be read) is named
 * from the log if exactly one record of its pid is in the window, after
 * every waiting record was taken: its own record is there; a second one
 * means another process of that pid exited in the window too, and it stays
 * unnamed (afx_find).  That goes wrong only if a later holder of the pid
 * exited within the window while the first's record is missing from it,
 * i.e. the pid space wrapped within the window (or a root tool chose the
 * pid: clone3's set_tid, ns_last_pid), so a window older than a second is
 * not used.  When the socket overflows
 * (ENOBUFS) a record may be missing: everything waiting is discarded and
 * no window reaching back before that is used (afx_log.clean); nor one
 * longer than the ring (afx_whole).

 * Off (fd -1) where registration fails: no taskstats in the kernel, no
 * CAP_NET_ADMIN, a user or pid namespace other than the initial one (whose
 * pids the records would not be in), or a network namespace other than the
 * initial one (the kernel takes the registration but sends the records to
 * that port number in the initial namespace: afx_hears finds out).  The
 * drain then names from /proc alone.
 *
 * The kernel may also drop a record without an ENOBUFS (no memory for it,
 * under memory pressure): a process whose record is lost so stays unnamed
 * (afx_find).
 */
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/genetlink.h>
#include <linux/taskstats.h>
#include <poll.h>
#include <sys/wait.h>

static int afd_read_small(const char *path, char *out, int cap);  /* fastpath_drain.c */
struct afx_log;
static void afx_close(struct afx_log *x);

#define AFX_RING 8192
#define AFX_COMM 16          /* the kernel's TASK_COMM_LEN */
#define AFX_RCVBUF (4 << 20)

struct afx_log {
    int fd;             /* -1: off */
    int family;
    uint64_t seq;       /* records taken so far; the newest is seq - 1 */
    uint64_t clean;     /* records before this one may have lost company */
    uint64_t overflows; /* ENOBUFS seen */
    int32_t pid[AFX_RING];
    uint8_t len[AFX_RING];
    char comm[AFX_RING][AFX_COMM];
    unsigned char buf[8192];
};

static int afx_send(int fd, uint16_t type, uint8_t cmd, uint16_t attr,
                    const void *data, uint16_t dlen, uint32_t seq)
{
    unsigned char msg[256];
    uint32_t alen = NLA_HDRLEN + dlen;
    uint32_t total = NLMSG_HDRLEN + GENL_HDRLEN + NLA_ALIGN(alen);
    if (total > sizeof msg)
        return -1;
    memset(msg, 0, total);
    struct nlmsghdr *nh = (struct nlmsghdr *)msg;
    nh->nlmsg_len = total;
    nh->nlmsg_type = type;
    nh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    nh->nlmsg_seq = seq;
    struct genlmsghdr *gh = (struct genlmsghdr *)(msg + NLMSG_HDRLEN);
    gh->cmd = cmd;
    gh->version = 1;
    struct nlattr *na = (struct nlattr *)(msg + NLMSG_HDRLEN + GENL_HDRLEN);
    na->nla_len = (uint16_t)alen;
    na->nla_type = attr;
    memcpy((unsigned char *)na + NLA_HDRLEN, data, dlen);
    return send(fd, msg, total, 0) == (ssize_t)total ? 0 : -1;
}

/* The first attribute of type `type` among [p, end); NULL if none. */
static const struct nlattr *afx_attr(const unsigned char *p, const unsigned char *end,
                                     uint16_t type)
{
    while (p + NLA_HDRLEN <= end) {
        const struct nlattr *a = (const struct nlattr *)p;
        if (a->nla_len < NLA_HDRLEN || p + a->nla_len > end)
            return NULL;
        if ((a->nla_type & NLA_TYPE_MASK) == type)
            return a;
        p += NLA_ALIGN(a->nla_len);
    }
    return NULL;
}

/* Keep one taskstats record (a task's exit) if the message is one. */
static void afx_keep(struct afx_log *x, const struct nlmsghdr *nh)
{
    if (nh->nlmsg_type != x->family || nh->nlmsg_len < NLMSG_HDRLEN + GENL_HDRLEN)
        return;
    const unsigned char *p = (const unsigned char *)nh + NLMSG_HDRLEN + GENL_HDRLEN;
    const unsigned char *end = (const unsigned char *)nh + nh->nlmsg_len;
    const struct nlattr *agg = afx_attr(p, end, TASKSTATS_TYPE_AGGR_PID);
    if (agg == NULL)
        return;  /* a thread group's totals (AGGR_TGID) name no single task */
    const unsigned char *ip = (const unsigned char *)agg + NLA_HDRLEN;
    const unsigned char *iend = (const unsigned char *)agg + agg->nla_len;
    const struct nlattr *pa = afx_attr(ip, iend, TASKSTATS_TYPE_PID);
    const struct nlattr *sa = afx_attr(ip, iend, TASKSTATS_TYPE_STATS);
    size_t need = offsetof(struct taskstats, ac_comm) + AFX_COMM;
    if (pa == NULL || sa == NULL || pa->nla_len < NLA_HDRLEN + 4
            || sa->nla_len < NLA_HDRLEN + need)
        return;
    uint32_t pid;
    memcpy(&pid, (const unsigned char *)pa + NLA_HDRLEN, 4);
    const char *comm = (const char *)sa + NLA_HDRLEN + offsetof(struct taskstats, ac_comm);
    uint32_t slot = (uint32_t)(x->seq % AFX_RING);
    x->pid[slot] = (int32_t)pid;
    x->len[slot] = (uint8_t)strnlen(comm, AFX_COMM - 1);
    memcpy(x->comm[slot], comm, x->len[slot]);
    x->seq++;
}

/* Take every record waiting in the socket. */
static void afx_pump(struct afx_log *x)
{
    if (x == NULL || x->fd < 0)
        return;
    for (;;) {
        ssize_t n = recv(x->fd, x->buf, sizeof x->buf, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != ENOBUFS)
                return;  /* EAGAIN: all taken */
            /* Records were lost: what waits now is discarded too, and
             * nothing taken before is trusted again (see the top). */
            x->overflows++;
            while (recv(x->fd, x->buf, sizeof x->buf, MSG_DONTWAIT) >= 0 || errno == EINTR
                   || errno == ENOBUFS)
                ;
            x->clean = x->seq;
            return;
        }
        const unsigned char *p = x->buf;
        size_t left = (size_t)n;
        while (left >= NLMSG_HDRLEN) {
            const struct nlmsghdr *nh = (const struct nlmsghdr *)p;
            if (nh->nlmsg_len < NLMSG_HDRLEN || nh->nlmsg_len > left)
                break;
            afx_keep(x, nh);
            size_t step = NLMSG_ALIGN(nh->nlmsg_len);
            if (step >= left)
                break;
            p += step;
            left -= step;
        }
    }
}

/* Whether every record from `since` on is still in the ring, with no
 * overflow among them. */
static int afx_whole(const struct afx_log *x, uint64_t since)
{
    return since >= x->clean && (x->seq <= AFX_RING || since >= x->seq - AFX_RING);
}

/* The name of the one process of `pid` whose exit was taken at or after
 * record `since`: its length (copied to out), or -1 if none or several, or
 * if the log cannot tell (afx_whole). */
static int afx_find(const struct afx_log *x, int32_t pid, uint64_t since, char *out)
{
    if (x->fd < 0 || !afx_whole(x, since))
        return -1;
    int found = -1;
    for (uint64_t s = x->seq; s > since; s--) {
        uint32_t slot = (uint32_t)((s - 1) % AFX_RING);
        if (x->pid[slot] != pid)
            continue;
        if (found >= 0)
            return -1;  /* two processes of that pid exited: which one? */
        found = (int)slot;
    }
    if (found < 0)
        return -1;
    memcpy(out, x->comm[found], x->len[found]);
    return x->len[found];
}

/* Wait for the kernel's answer to request `seq`: 0, or -1 on an error. */
static int afx_ack(struct afx_log *x, uint32_t seq, int *family)
{
    for (int tries = 0; tries < 65536; tries++) {  /* exit records may come first */
        ssize_t n = recv(x->fd, x->buf, sizeof x->buf, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;  /* EAGAIN after the 1 s timeout, or an error */
        }
        const unsigned char *p = x->buf;
        size_t left = (size_t)n;
        while (left >= NLMSG_HDRLEN) {
            const struct nlmsghdr *nh = (const struct nlmsghdr *)p;
            if (nh->nlmsg_len < NLMSG_HDRLEN || nh->nlmsg_len > left)
                break;
            if (nh->nlmsg_seq == seq && nh->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = (const struct nlmsgerr *)NLMSG_DATA(nh);
                return nh->nlmsg_len >= NLMSG_HDRLEN + sizeof *e && e->error == 0 ? 0 : -1;
            }
            if (nh->nlmsg_seq == seq && family != NULL && nh->nlmsg_type == GENL_ID_CTRL) {
                const unsigned char *a = p + NLMSG_HDRLEN + GENL_HDRLEN;
                const struct nlattr *id = afx_attr(a, p + nh->nlmsg_len, CTRL_ATTR_FAMILY_ID);
                if (id != NULL && id->nla_len >= NLA_HDRLEN + 2) {
                    uint16_t v;
                    memcpy(&v, (const unsigned char *)id + NLA_HDRLEN, 2);
                    *family = v;
                }
            }
            size_t step = NLMSG_ALIGN(nh->nlmsg_len);
            if (step >= left)
                break;
            p += step;
            left -= step;
        }
    }
    return -1;
}

/* Whether the records reach this socket: the kernel takes a registration
 * from a network namespace other than the initial one, but sends the
 * records to that port number in the initial one.  A child that exits at
 * once must be heard of within AFX_HEAR_MS. */
#define AFX_HEAR_MS 500
static int afx_hears(struct afx_log *x)
{
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    if (child < 0)
        return 0;
    (void)waitpid(child, NULL, 0);  /* ECHILD if someone else reaped it: fine */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        uint64_t before = x->seq;
        afx_pump(x);
        for (uint64_t s = before; s < x->seq; s++)
            if (x->pid[s % AFX_RING] == child)
                return 1;
        clock_gettime(CLOCK_MONOTONIC, &t);
        long ms = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
        if (ms >= AFX_HEAR_MS)
            return 0;
        struct pollfd p = {x->fd, POLLIN, 0};
        (void)poll(&p, 1, (int)(AFX_HEAR_MS - ms));
    }
}

/* Open and register; x->fd stays -1 when the log cannot be had. */
static void afx_open(struct afx_log *x)
{
    x->fd = -1;
    x->seq = x->clean = x->overflows = 0;
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
    if (fd < 0)
        return;
    struct sockaddr_nl sa;
    memset(&sa, 0, sizeof sa);
    sa.nl_family = AF_NETLINK;
    int size = AFX_RCVBUF;
    char cpus[256];
    int n = afd_read_small("/sys/devices/system/cpu/possible", cpus, sizeof cpus - 1);
    int family = -1;
    struct timeval tv = {1, 0};  /* the answers are immediate: never hang the start */
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || n <= 0
            || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0)
        goto fail;
    cpus[n] = '\0';
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    x->fd = fd;
    if (afx_send(fd, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_NAME,
                 TASKSTATS_GENL_NAME, sizeof TASKSTATS_GENL_NAME, 1) != 0
            || afx_ack(x, 1, &family) != 0 || family < 0)
        goto fail;
    x->family = family;
    if (afx_send(fd, (uint16_t)family, TASKSTATS_CMD_GET, TASKSTATS_CMD_ATTR_REGISTER_CPUMASK,
                 cpus, (uint16_t)(n + 1), 2) != 0
            || afx_ack(x, 2, NULL) != 0)
        goto fail;
    if (!afx_hears(x)) {
        afx_close(x);
        return;
    }
    x->seq = x->clean = 0;  /* the records taken so far are dropped */
    return;
fail:
    if (family >= 0) {  /* the registration may have been taken: end it */
        x->family = family;
        afx_close(x);
        return;
    }
    close(fd);
    x->fd = -1;
}

static void afx_close(struct afx_log *x)
{
    if (x->fd < 0)
        return;
    /* Closing the socket would also end the registration, but only when the
     * kernel next fails to send to it. */
    char cpus[256];
    int n = afd_read_small("/sys/devices/system/cpu/possible", cpus, sizeof cpus - 1);
    if (n > 0) {
        cpus[n] = '\0';
        (void)afx_send(x->fd, (uint16_t)x->family, TASKSTATS_CMD_GET,
                       TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK, cpus, (uint16_t)(n + 1), 3);
    }
    close(x->fd);
    x->fd = -1;
}
