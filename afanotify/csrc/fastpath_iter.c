/*
 * `async for event in fan`, its common step in C (afanotify/_consume.py).
 *
 * Once reading has started, nearly every step of the loop finds an event
 * already queued: release the one handed out before, take the next from the
 * queue's deque, hand it out.  In Python that step is a coroutine object, a
 * frame and a StopIteration per event, which cost more than decoding the
 * event.  Here `__anext__` (am_anext) takes the step itself and returns a
 * ready awaitable (AfnReady: its first send returns the event, no
 * exception); every other step goes to the group's Python step: first its
 * part that never waits, a plain call (`step`: the next event, which is
 * handed out the same way, or None), then, when the consumer must wait,
 * the `__anext__` coroutine (`slow`).
 *
 * Which steps are common is decided in Python, not here: each Python step
 * sets `grant`, the number of queued events that can be taken with no
 * bookkeeping at all (OwnQueue._grant: none while the group is closed,
 * failed, paused or signalled full; with events held back or the queue
 * stalled, only down to the point where the Python step must refill it and
 * clear the stall, exactly where it would have).  Reading the group's state
 * from C on every step measured about 1,300 instructions per event, more
 * than the rest of the step.  A grant only ever delays bookkeeping that the
 * consumer's own code could have triggered meanwhile (it may await, and the
 * reader may deliver more), by at most the grant: events arriving go behind
 * those queued, so the order stays; a queue emptied under it (close(),
 * batches()) ends it; a permission event, or an event not made by the
 * builder's class, always goes to the Python step.
 *
 * Like the Python fast path, the step does not yield to the event loop: an
 * event that is already there is returned at once (asyncio.Queue.get does
 * the same), and the loop runs again when the queue runs dry.
 *
 * It needs the builder's class layout (afn_b, fastpath_build.c): the `_owns`
 * and `fd` slots of the event class, read and set as the builder sets them.
 */

typedef struct {
    PyObject_HEAD
    PyObject *value; /* handed out by the first send; NULL after */
} afn_ready;

static void afn_ready_dealloc(afn_ready *r)
{
    Py_XDECREF(r->value);
    PyObject_Free(r);
}

static PyObject *afn_ready_await(PyObject *self)
{
    return Py_NewRef(self);
}

static PySendResult afn_ready_send(afn_ready *r, PyObject *arg, PyObject **result)
{
    (void)arg;
    if (r->value == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited __anext__()");
        *result = NULL;
        return PYGEN_ERROR;
    }
    *result = r->value; /* the reference goes to the caller */
    r->value = NULL;
    return PYGEN_RETURN;
}

/* For callers that iterate instead of sending (a tracing function is set:
 * coverage, debuggers): the value comes in a StopIteration. */
static PyObject *afn_ready_next(afn_ready *r)
{
    PyObject *v = r->value, *exc;
    if (v == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited __anext__()");
        return NULL;
    }
    r->value = NULL;
    exc = PyObject_CallOneArg(PyExc_StopIteration, v);
    Py_DECREF(v);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *afn_ready_send_method(afn_ready *r, PyObject *arg)
{
    if (arg != Py_None) {
        PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started awaitable");
        return NULL;
    }
    return afn_ready_next(r);
}

static PyObject *afn_ready_close(afn_ready *r, PyObject *unused)
{
    (void)unused;
    Py_CLEAR(r->value);
    Py_RETURN_NONE;
}

static PyMethodDef afn_ready_methods[] = {
    {"send", (PyCFunction)afn_ready_send_method, METH_O, NULL},
    {"close", (PyCFunction)afn_ready_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods afn_ready_async = {
    .am_await = afn_ready_await,
    .am_send = (sendfunc)afn_ready_send,
};

static PyTypeObject afn_ready_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "afanotify._fanotify.ReadyEvent",
    .tp_basicsize = sizeof(afn_ready),
    .tp_dealloc = (destructor)afn_ready_dealloc,
    .tp_as_async = &afn_ready_async,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An awaitable whose result is already there (an event for async for).",
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)afn_ready_next,
    .tp_methods = afn_ready_methods,
};

typedef struct {
    PyObject_HEAD
    PyObject *group;   /* the Fanotify group */
    PyObject *queue;   /* its EventQueue */
    PyObject *popleft; /* that queue's deque's popleft */
    PyObject *items;   /* that deque */
    PyObject *reader;  /* the group's Reader */
    PyObject *slow;    /* the group's Python __anext__ (a coroutine function) */
    PyObject *step;    /* its part that never waits: the next event, or None (NULL: none) */
    PyObject *last;    /* the event handed out last, released on the next step */
    afn_ready *spare;  /* the awaitable handed out last, used again once freed by all */
    Py_ssize_t grant;  /* events it may take before asking the Python step again */
} afn_iter;

static PyObject *afn_s_close;
/* The int 0: most events own nothing, and CPython keeps one object for each
 * small int, so a pointer comparison answers for them (any other 0 still
 * reads as 0 below). */
static PyObject *afn_int_zero;

/* The event's `_owns` as a C long, or -1 when it is not the builder's class
 * (or not a plain int there): the caller takes the Python way then. */
static long afn_owns_of(PyObject *ev)
{
    PyObject *owns;
    if (afn_b.event_type == NULL || Py_TYPE(ev) != afn_b.event_type)
        return -1;
    owns = AFN_SLOT(ev, afn_b.field_off[AFN_F_OWNS]);
    if (owns == afn_int_zero)
        return 0;
    if (owns == NULL || !PyLong_CheckExact(owns))
        return -1;
    return PyLong_AsLong(owns);
}

/* What moving past `last` does: FanotifyData._moved_past(), which is close()
 * (inline for an event that owns only its fd, as the Python step does; an
 * event of another class, such as IterPathEvent, decides in Python). */
static int afn_iter_release(PyObject *last)
{
    long owns = afn_owns_of(last);
    PyObject *r;

    if (owns == 0)
        return 0;
    if (owns == afn_b.own_fd) {
        PyObject *fdobj = AFN_SLOT(last, afn_b.field_off[AFN_F_FD]);
        PyObject *zero;
        long fd;
        if (fdobj == NULL || !PyLong_CheckExact(fdobj))
            goto python;
        fd = PyLong_AsLong(fdobj);
        if (fd == -1 && PyErr_Occurred())
            return -1;
        if ((zero = PyLong_FromLong(0)) == NULL)
            return -1;
        /* Ownership goes first, as in FanotifyData._release. */
        Py_SETREF(AFN_SLOT(last, afn_b.field_off[AFN_F_OWNS]), zero);
        if (close((int)fd) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        return 0;
    }
python:
    r = PyObject_CallMethodNoArgs(last, afn_s_close);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The next queued event when the grant covers it (a new reference); NULL
 * without an error when the Python step must run, NULL with one on failure. */
static PyObject *afn_iter_take(afn_iter *it)
{
    PyObject *ev, *got;
    Py_ssize_t n;
    long owns;

    if (it->grant <= 0)
        return NULL;
    n = PyObject_Length(it->items);
    if (n <= 0) {
        if (n < 0)
            return NULL;
        it->grant = 0; /* emptied under us (close, batches()): ask Python again */
        return NULL;
    }
    ev = PySequence_GetItem(it->items, 0);
    if (ev == NULL)
        return NULL;
    owns = afn_owns_of(ev);
    if (owns < 0 || (owns & afn_b.unanswered)) {
        Py_DECREF(ev);
        return NULL; /* not ours to judge, or a permission event to register */
    }
    got = PyObject_CallNoArgs(it->popleft);
    if (got == NULL) {
        Py_DECREF(ev);
        return NULL;
    }
    Py_DECREF(got); /* the same object: no other code took one in between */
    it->grant--;
    return ev;
}

static PyObject *afn_iter_anext(afn_iter *it)
{
    PyObject *last = it->last, *ev;
    afn_ready *r;

    if (last != NULL) {
        int rc;
        it->last = NULL;
        rc = afn_iter_release(last);
        Py_DECREF(last);
        if (rc < 0)
            return NULL;
    }
    ev = afn_iter_take(it);
    if (ev == NULL) {
        if (PyErr_Occurred())
            return NULL;
        if (it->step == NULL)
            return PyObject_CallNoArgs(it->slow);
        /* The Python step's bookkeeping, as a plain call (no coroutine): it
         * hands out an event it found (or read ahead), or None when the
         * consumer must wait, which the coroutine does. */
        ev = PyObject_CallNoArgs(it->step);
        if (ev == NULL)
            return NULL;
        if (ev == Py_None) {
            Py_DECREF(ev);
            return PyObject_CallNoArgs(it->slow);
        }
    }
    /* `await` drops the awaitable at once: when only the iterator still
     * holds the last one, it serves again (one allocation less per event). */
    r = it->spare;
    if (r != NULL && Py_REFCNT(r) == 1 && r->value == NULL)
        Py_INCREF(r);
    else {
        Py_XDECREF(r);
        it->spare = r = PyObject_New(afn_ready, &afn_ready_type);
        Py_XINCREF(r);
    }
    if (r == NULL) {
        /* Handed out all the same: the next step (or close()) releases it. */
        it->last = ev;
        return NULL;
    }
    it->last = Py_NewRef(ev);
    r->value = ev;
    return (PyObject *)r;
}

static PyObject *afn_iter_aiter(PyObject *self)
{
    return Py_NewRef(self);
}

static int afn_iter_traverse(afn_iter *it, visitproc visit, void *arg)
{
    Py_VISIT(it->group);
    Py_VISIT(it->queue);
    Py_VISIT(it->popleft);
    Py_VISIT(it->items);
    Py_VISIT(it->reader);
    Py_VISIT(it->slow);
    Py_VISIT(it->step);
    Py_VISIT(it->last);
    return 0;
}

static int afn_iter_clear(afn_iter *it)
{
    Py_CLEAR(it->group);
    Py_CLEAR(it->queue);
    Py_CLEAR(it->popleft);
    Py_CLEAR(it->items);
    Py_CLEAR(it->reader);
    Py_CLEAR(it->slow);
    Py_CLEAR(it->step);
    Py_CLEAR(it->last);
    Py_CLEAR(it->spare);
    return 0;
}

static void afn_iter_dealloc(afn_iter *it)
{
    PyObject_GC_UnTrack(it);
    afn_iter_clear(it);
    PyObject_GC_Del(it);
}

static PyObject *afn_iter_get_last(afn_iter *it, void *closure)
{
    (void)closure;
    return Py_NewRef(it->last != NULL ? it->last : Py_None);
}

static int afn_iter_set_last(afn_iter *it, PyObject *v, void *closure)
{
    (void)closure;
    Py_XSETREF(it->last, v == NULL || v == Py_None ? NULL : Py_NewRef(v));
    return 0;
}

static PyMemberDef afn_iter_members[] = {
    {"grant", T_PYSSIZET, offsetof(afn_iter, grant), 0,
     "Queued events the C step may take before the Python step runs again."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef afn_iter_getset[] = {
    {"last", (getter)afn_iter_get_last, (setter)afn_iter_set_last,
     "The event handed out last (None): released by the next step.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyAsyncMethods afn_iter_async = {
    .am_aiter = afn_iter_aiter,
    .am_anext = (unaryfunc)afn_iter_anext,
};

static PyTypeObject afn_iter_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "afanotify._fanotify.EventIterator",
    .tp_basicsize = sizeof(afn_iter),
    .tp_dealloc = (destructor)afn_iter_dealloc,
    .tp_as_async = &afn_iter_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "async for over a Fanotify group's own queue (see afanotify/_consume.py).",
    .tp_traverse = (traverseproc)afn_iter_traverse,
    .tp_clear = (inquiry)afn_iter_clear,
    .tp_getset = afn_iter_getset,
    .tp_members = afn_iter_members,
};

/* _events_iter(group, queue, items, reader, slow[, step]) -> EventIterator */
static PyObject *afn_events_iter(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    afn_iter *it;
    PyObject *popleft;

    (void)self;
    if (nargs < 5 || nargs > 6 || !PyCallable_Check(args[4])
        || (nargs == 6 && !PyCallable_Check(args[5]))) {
        PyErr_SetString(PyExc_TypeError, "_events_iter(group, queue, items, reader, slow[, step])");
        return NULL;
    }
    if (afn_b.event_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_events_iter before _builder_setup");
        return NULL;
    }
    if (afn_s_close == NULL && (afn_s_close = PyUnicode_InternFromString("_moved_past")) == NULL)
        return NULL;
    if (afn_int_zero == NULL && (afn_int_zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    if (PyType_Ready(&afn_ready_type) < 0 || PyType_Ready(&afn_iter_type) < 0)
        return NULL;
    popleft = PyObject_GetAttrString(args[2], "popleft");
    if (popleft == NULL)
        return NULL;
    it = PyObject_GC_New(afn_iter, &afn_iter_type);
    if (it == NULL) {
        Py_DECREF(popleft);
        return NULL;
    }
    it->group = Py_NewRef(args[0]);
    it->queue = Py_NewRef(args[1]);
    it->items = Py_NewRef(args[2]);
    it->popleft = popleft;
    it->reader = Py_NewRef(args[3]);
    it->slow = Py_NewRef(args[4]);
    it->step = nargs == 6 ? Py_NewRef(args[5]) : NULL;
    it->last = NULL;
    it->spare = NULL;
    it->grant = 0;
    PyObject_GC_Track(it);
    return (PyObject *)it;
}
