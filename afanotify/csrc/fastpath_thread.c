/*
 * The read-ahead thread of a FID group (afanotify/_threaded.py).
 *
 * Draining a FID group's backlog costs two things of about the same size:
 * the kernel's copy of the events in read(2), and building them into Python
 * objects in the event loop's thread.  The loop's own reader does one after
 * the other.  With this thread, when a read came back full (a backlog is
 * there, so the loop would read again at once), the loop asks the thread for
 * the next read (aft_request) and builds the one it has meanwhile; the
 * thread makes the read without the GIL (cffi releases it around aft_run)
 * into the other of two buffers.  On two cores a backlog then drains in
 * about the longer of the two times, not their sum.
 *
 * The thread reads only when asked, once per request, exactly where the
 * loop would have read next: the group's reads (and so which events share a
 * read) are the same as without it, a read is never made while the loop
 * does not want one (a paused group's backlog stays in the kernel's queue),
 * and at most one read waits here, whole, for the loop.
 *
 * The loop takes the result with aft_take: the buffer and its length, or
 * -errno when the read failed (-EAGAIN: the queue was empty).  If the read
 * is not done yet, aft_take returns NULL and leaves a note: the thread then
 * writes wake_fd (an eventfd the loop watches) when it is.  aft_wait blocks
 * until it is, for a synchronous caller.  aft_stop ends the thread at once
 * (a read of the group fd never blocks: it is O_NONBLOCK).
 */
#include <pthread.h>

#define AFT_IDLE 0
#define AFT_ASKED 1     /* the thread is to read, or reads */
#define AFT_DONE 2      /* the read is done, not yet taken */

struct aft_reader {
    int fd;
    int wake_fd;
    uint32_t slot_size;
    int error;
    pthread_mutex_t lock;
    pthread_cond_t cond;      /* the thread waits for a request or the stop */
    pthread_cond_t done;      /* aft_wait waits for the read */
    unsigned char *slots[2];
    int state;
    int slot;                 /* the buffer of the read asked for */
    int cur;                  /* the buffer the loop took last (it may still build it) */
    int64_t result;           /* bytes read, or -errno */
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
    r->slots[0] = malloc(r->slot_size);
    r->slots[1] = malloc(r->slot_size);
    if (r->slots[0] == NULL || r->slots[1] == NULL) {
        free(r->slots[0]);
        free(r->slots[1]);
        r->error = ENOMEM;
        return -1;
    }
    if (pthread_mutex_init(&r->lock, NULL) != 0 || pthread_cond_init(&r->cond, NULL) != 0
            || pthread_cond_init(&r->done, NULL) != 0) {
        free(r->slots[0]);
        free(r->slots[1]);
        r->error = ENOMEM;
        return -1;
    }
    r->state = AFT_IDLE;
    r->cur = 1;
    r->ready = 1;
    return 0;
}

/* The thread: returns when aft_stop was called. */
int aft_run(struct aft_reader *r)
{
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (r->state != AFT_ASKED && !r->stop)
            pthread_cond_wait(&r->cond, &r->lock);
        if (r->stop)
            break;
        unsigned char *buf = r->slots[r->slot];
        pthread_mutex_unlock(&r->lock);
        ssize_t n = read(r->fd, buf, r->slot_size);
        int64_t result = n < 0 ? -(int64_t)errno : (int64_t)n;
        pthread_mutex_lock(&r->lock);
        r->result = result;
        r->state = AFT_DONE;
        r->reads++;
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

/* Ask for a read into the buffer the loop did not take last (it may be
 * building that one); 0 if asked, -1 if a read is outstanding or stopped. */
int aft_request(struct aft_reader *r)
{
    pthread_mutex_lock(&r->lock);
    int ok = r->state == AFT_IDLE && !r->stop;
    if (ok) {
        r->slot = r->cur ^ 1;
        r->state = AFT_ASKED;
        pthread_cond_signal(&r->cond);
    }
    pthread_mutex_unlock(&r->lock);
    return ok ? 0 : -1;
}

/* The read asked for, if done: its buffer, and in *result its length or
 * -errno.  The buffer is the loop's until the one after next is taken (the
 * next read goes to the other).  NULL if it is not done yet (wake_fd will
 * be written when it is) or none was asked for. */
unsigned char *aft_take(struct aft_reader *r, int64_t *result)
{
    unsigned char *p = NULL;
    pthread_mutex_lock(&r->lock);
    if (r->state == AFT_DONE) {
        r->state = AFT_IDLE;
        r->cur = r->slot;
        *result = r->result;
        p = r->slots[r->slot];
    } else if (r->state == AFT_ASKED) {
        r->waiting = 1;
    }
    pthread_mutex_unlock(&r->lock);
    return p;
}

/* Wait until the read asked for is done (a read of the nonblocking group fd
 * takes no longer than its copy). */
void aft_wait(struct aft_reader *r)
{
    pthread_mutex_lock(&r->lock);
    while (r->state == AFT_ASKED && !r->stop)
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
    free(r->slots[0]);
    free(r->slots[1]);
    r->slots[0] = r->slots[1] = NULL;
    pthread_cond_destroy(&r->cond);
    pthread_cond_destroy(&r->done);
    pthread_mutex_destroy(&r->lock);
}
