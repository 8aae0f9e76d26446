/*
 * The read-ahead thread of a FID group (afanotify/_threaded.py).
 *
 * Draining a FID group's backlog costs two things of about the same size:
 * the kernel's copy of the events in read(2), and building them into Python
 * objects in the event loop's thread.  The loop's own reader does one after
 * the other.  With this thread, when a read comes back full (a backlog is
 * there, so the loop would read again at once), the loop asks the thread to
 * go on reading (aft_request) and builds the read it has meanwhile.  The
 * thread reads without the GIL (cffi releases it around aft_run) into a ring
 * of AFT_SLOTS buffers, and goes on by itself for as long as its reads come
 * back full: it stops after a read that is not (the queue was emptied),
 * fails, or when every buffer is in use (all read and not yet taken, and
 * the one the loop builds), and then waits for a request or a free buffer.
 * On two cores a backlog drains in about the longer of the two times, not
 * their sum.  (It does not stop between full reads for the loop to ask
 * again: waking a sleeping thread took 0.3-1.3 ms on the test machine, as
 * long as a read.)
 *
 * So the thread reads only where the loop would have read next (after a
 * full read, at once), never while the group is idle: which events share a
 * read is as without it.  While the loop does not take its reads (a paused
 * group), at most AFT_SLOTS - 1 reads wait here, whole, and the rest of the
 * backlog waits in the kernel's queue.
 *
 * The loop takes the oldest read with aft_take: its buffer and its length,
 * or -errno when the read failed (-EAGAIN: the queue was empty).  The buffer
 * stays the loop's until its next aft_take.  If no read is done yet,
 * aft_take returns NULL and leaves a note: the thread then writes wake_fd
 * (an eventfd the loop watches) after its next read.  aft_wait blocks until
 * a read is done, for a synchronous caller.  aft_stop ends the thread at
 * once (a read of the group fd never blocks: it is O_NONBLOCK).
 */
#include <pthread.h>

#define AFT_SLOTS 3

struct aft_reader {
    int fd;
    int wake_fd;
    uint32_t slot_size;
    int error;
    pthread_mutex_t lock;
    pthread_cond_t cond;      /* the thread waits for a request, a free buffer or the stop */
    pthread_cond_t done;      /* aft_wait waits for a read */
    unsigned char *slots[AFT_SLOTS];
    int64_t results[AFT_SLOTS];
    uint32_t head;            /* the oldest read not yet taken */
    uint32_t count;           /* reads done and not yet taken */
    int held;                 /* the loop holds slots[(head + AFT_SLOTS - 1) % AFT_SLOTS] */
    int active;               /* the thread is to read (asked, and its reads came back full) */
    int waiting;              /* the loop waits on wake_fd */
    int stop;
    int ready;                /* aft_init succeeded: aft_destroy has work */
    uint64_t reads;
};

int aft_init(struct aft_reader *r)
{
    if (r->slot_size < 4096) {
        r->error = EINVAL;
        return -1;
    }
    for (int i = 0; i < AFT_SLOTS; i++) {
        r->slots[i] = malloc(r->slot_size);
        if (r->slots[i] == NULL) {
            for (int k = 0; k < i; k++)
                free(r->slots[k]);
            r->error = ENOMEM;
            return -1;
        }
    }
    if (pthread_mutex_init(&r->lock, NULL) != 0 || pthread_cond_init(&r->cond, NULL) != 0
            || pthread_cond_init(&r->done, NULL) != 0) {
        for (int i = 0; i < AFT_SLOTS; i++)
            free(r->slots[i]);
        r->error = ENOMEM;
        return -1;
    }
    r->ready = 1;
    return 0;
}

/* The thread: returns when aft_stop was called. */
int aft_run(struct aft_reader *r)
{
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->stop && !(r->active && r->count + (uint32_t)r->held < AFT_SLOTS))
            pthread_cond_wait(&r->cond, &r->lock);
        if (r->stop)
            break;
        uint32_t slot = (r->head + r->count) % AFT_SLOTS;
        unsigned char *buf = r->slots[slot];
        pthread_mutex_unlock(&r->lock);
        ssize_t n = read(r->fd, buf, r->slot_size);
        int64_t result = n < 0 ? -(int64_t)errno : (int64_t)n;
        pthread_mutex_lock(&r->lock);
        r->results[slot] = result;
        r->count++;
        r->reads++;
        /* As the loop decides whether to read again (see _threaded.py). */
        r->active = result >= (int64_t)(r->slot_size / 2);
        int wake = r->waiting;
        r->waiting = 0;
        pthread_cond_broadcast(&r->done);
        if (wake) {
            uint64_t one = 1;
            ssize_t w = write(r->wake_fd, &one, sizeof one);
            (void)w;
        }
    }
    pthread_mutex_unlock(&r->lock);
    return 0;
}

/* Ask the thread to read on; -1 if stopped.  (A request while it reads
 * changes nothing: it reads on after a full read by itself.) */
int aft_request(struct aft_reader *r)
{
    pthread_mutex_lock(&r->lock);
    int ok = !r->stop;
    if (ok && !r->active) {
        r->active = 1;
        pthread_cond_signal(&r->cond);
    }
    pthread_mutex_unlock(&r->lock);
    return ok ? 0 : -1;
}

/* The oldest read done, if any: its buffer, and in *result its length or
 * -errno; the buffer the loop took before is free again.  NULL if none is
 * done (the thread writes wake_fd after its next read). */
unsigned char *aft_take(struct aft_reader *r, int64_t *result)
{
    unsigned char *p = NULL;
    pthread_mutex_lock(&r->lock);
    if (r->count > 0) {
        p = r->slots[r->head];
        *result = r->results[r->head];
        r->head = (r->head + 1) % AFT_SLOTS;
        r->count--;
        if (!r->held) {
            r->held = 1;
        } else if (r->active) {
            pthread_cond_signal(&r->cond);  /* a buffer came free */
        }
    } else {
        if (r->held) {
            r->held = 0;  /* the loop is done with the one it had */
            if (r->active)
                pthread_cond_signal(&r->cond);
        }
        r->waiting = 1;
    }
    pthread_mutex_unlock(&r->lock);
    return p;
}

/* Wait until a read is done, or the thread is not reading (a synchronous
 * caller; a read of the nonblocking group fd takes no longer than its copy). */
void aft_wait(struct aft_reader *r)
{
    pthread_mutex_lock(&r->lock);
    while (r->count == 0 && r->active && !r->stop)
        pthread_cond_wait(&r->done, &r->lock);
    pthread_mutex_unlock(&r->lock);
}

/* End the thread: aft_run returns as soon as its read, if any, is done. */
void aft_stop(struct aft_reader *r)
{
    pthread_mutex_lock(&r->lock);
    r->stop = 1;
    pthread_cond_broadcast(&r->cond);
    pthread_cond_broadcast(&r->done);
    pthread_mutex_unlock(&r->lock);
}

/* Reads the thread made. */
uint64_t aft_reads(struct aft_reader *r)
{
    pthread_mutex_lock(&r->lock);
    uint64_t n = r->reads;
    pthread_mutex_unlock(&r->lock);
    return n;
}

/* Free the buffers (the thread has returned, or never ran). */
void aft_destroy(struct aft_reader *r)
{
    if (!r->ready)
        return;
    r->ready = 0;
    for (int i = 0; i < AFT_SLOTS; i++) {
        free(r->slots[i]);
        r->slots[i] = NULL;
    }
    pthread_cond_destroy(&r->cond);
    pthread_cond_destroy(&r->done);
    pthread_mutex_destroy(&r->lock);
}
