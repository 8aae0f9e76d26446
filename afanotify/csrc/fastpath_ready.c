/*
 * Ready awaitables for Fanotify.__anext__ (afanotify/group.py).
 *
 * When an event is already queued, __anext__ (a plain function) takes it
 * and returns `_ready(event, group)`: an object that awaits to the event
 * without suspending.  An `async def` would cost a coroutine object, a
 * frame and a StopIteration per event; this costs one small allocation and
 * a StopIteration whose value is stored unnormalised where CPython allows.
 *
 * The object acts as a coroutine that has not started yet and returns at
 * once, so that code written for coroutines keeps working with it:
 *   - `__await__` returns the object itself, an iterator whose first
 *     `__next__()` / `send(None)` raises StopIteration(event); any further
 *     step raises RuntimeError, as for an already awaited coroutine;
 *   - `throw()` raises what it is given, `close()` returns None;
 *   - having `__await__`, `send`, `throw` and `close`, it is a
 *     collections.abc.Coroutine, which asyncio.create_task() and
 *     asyncio.ensure_future() accept.
 *
 * An event whose awaitable is thrown into, closed or dropped before it
 * delivered was not received: the object then calls
 * `group._anext_unget(event)`, which puts the event back at the head of the
 * queue (unless the consumer has moved on since).  A task cancelled before
 * its first step therefore takes no event, as with a coroutine.
 *
 * GC: the object holds the event and the group, and the event of a
 * permission group points back at the group; user code could also store an
 * awaitable on the group.  So the type takes part in garbage collection.
 */

typedef struct {
    PyObject_HEAD
    PyObject *value; /* what awaiting gives; NULL once delivered or discarded */
    PyObject *owner; /* takes `value` back if it is never delivered; may be NULL */
} afn_ready_object;

static PyTypeObject afn_ready_type;

/* `_ready(value, owner)`: a ready awaitable of `value`.  `owner` is None or
 * an object with an `_anext_unget(value)` method. */
static PyObject *afn_ready_new(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    afn_ready_object *self;

    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_ready(value, owner) takes two arguments");
        return NULL;
    }
    self = PyObject_GC_New(afn_ready_object, &afn_ready_type);
    if (self == NULL)
        return NULL;
    self->value = Py_NewRef(args[0]);
    self->owner = args[1] == Py_None ? NULL : Py_NewRef(args[1]);
    PyObject_GC_Track((PyObject *)self);
    return (PyObject *)self;
}

/* Give the value back to its owner: it was never delivered.  Leaves the
 * object spent.  Errors of the owner are reported, never raised: the caller
 * may be a finaliser, or about to raise an exception of its own. */
static void afn_ready_discard(afn_ready_object *self)
{
    PyObject *value = self->value, *owner = self->owner, *res;

    self->value = NULL;
    self->owner = NULL;
    if (owner != NULL && value != NULL) {
        res = PyObject_CallMethod(owner, "_anext_unget", "O", value);
        if (res == NULL)
            PyErr_WriteUnraisable(owner);
        Py_XDECREF(res);
    }
    Py_XDECREF(value);
    Py_XDECREF(owner);
}

/* Deliver the value: raise StopIteration(value) and return NULL. */
static PyObject *afn_ready_deliver(afn_ready_object *self)
{
    PyObject *value = self->value, *exc;

    if (value == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return NULL;
    }
    self->value = NULL;
    Py_CLEAR(self->owner);
    if (PyTuple_Check(value) || PyExceptionInstance_Check(value)) {
        /* Given as is, a tuple would become StopIteration's arguments and
         * an exception would be raised itself: wrap it in an instance. */
        exc = PyObject_CallOneArg(PyExc_StopIteration, value);
        if (exc != NULL) {
            PyErr_SetObject(PyExc_StopIteration, exc);
            Py_DECREF(exc);
        }
    } else {
        /* CPython reads the value back without making an exception object
         * (unless one is being handled, or on 3.12+). */
        PyErr_SetObject(PyExc_StopIteration, value);
    }
    Py_DECREF(value);
    return NULL;
}

static PyObject *afn_ready_iternext(PyObject *op)
{
    return afn_ready_deliver((afn_ready_object *)op);
}

static PyObject *afn_ready_await(PyObject *op)
{
    return Py_NewRef(op);
}

static PyObject *afn_ready_send(PyObject *op, PyObject *arg)
{
    afn_ready_object *self = (afn_ready_object *)op;

    if (arg != Py_None && self->value != NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "can't send non-None value to a just-started coroutine");
        return NULL;
    }
    return afn_ready_deliver(self);
}

/* throw(exc) or throw(type[, value[, traceback]]): raise it, as a coroutine
 * that has not started (or has finished) does. */
static PyObject *afn_ready_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    afn_ready_object *self = (afn_ready_object *)op;
    PyObject *typ, *val = NULL, *tb = NULL;

    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    afn_ready_discard(self);
    typ = args[0];
    if (nargs > 1 && args[1] != Py_None)
        val = args[1];
    if (nargs > 2 && args[2] != Py_None) {
        tb = args[2];
        if (!PyTraceBack_Check(tb)) {
            PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
            return NULL;
        }
    }
    if (PyExceptionClass_Check(typ)) {
        PyObject *t = Py_NewRef(typ), *v = Py_XNewRef(val), *b = Py_XNewRef(tb);
        PyErr_NormalizeException(&t, &v, &b);
        if (b != NULL && v != NULL)
            PyException_SetTraceback(v, b);
        PyErr_Restore(t, v, b);
    } else if (PyExceptionInstance_Check(typ)) {
        if (val != NULL) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        if (tb != NULL)
            PyException_SetTraceback(typ, tb);
        PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(typ)), Py_NewRef(typ),
                      PyException_GetTraceback(typ));
    } else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from BaseException, not %s",
                     Py_TYPE(typ)->tp_name);
    }
    return NULL;
}

static PyObject *afn_ready_close(PyObject *op, PyObject *unused)
{
    (void)unused;
    afn_ready_discard((afn_ready_object *)op);
    Py_RETURN_NONE;
}

static void afn_ready_finalize(PyObject *op)
{
    afn_ready_object *self = (afn_ready_object *)op;
    if (self->value == NULL || self->owner == NULL)
        return;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
    afn_ready_discard(self);
    PyErr_SetRaisedException(exc);
#else
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    afn_ready_discard(self);
    PyErr_Restore(et, ev, tb);
#endif
}

static int afn_ready_traverse(PyObject *op, visitproc visit, void *arg)
{
    afn_ready_object *self = (afn_ready_object *)op;
    Py_VISIT(self->value);
    Py_VISIT(self->owner);
    return 0;
}

static int afn_ready_clear(PyObject *op)
{
    afn_ready_object *self = (afn_ready_object *)op;
    Py_CLEAR(self->value);
    Py_CLEAR(self->owner);
    return 0;
}

static void afn_ready_dealloc(PyObject *op)
{
    afn_ready_object *self = (afn_ready_object *)op;

    /* Only an undelivered value with an owner needs the finaliser. */
    if (self->value != NULL && self->owner != NULL) {
        if (PyObject_CallFinalizerFromDealloc(op) < 0)
            return; /* resurrected */
    }
    PyObject_GC_UnTrack(op);
    Py_CLEAR(self->value);
    Py_CLEAR(self->owner);
    PyObject_GC_Del(op);
}

static PyObject *afn_ready_repr(PyObject *op)
{
    afn_ready_object *self = (afn_ready_object *)op;
    if (self->value == NULL)
        return PyUnicode_FromFormat("<afanotify ready awaitable (spent) at %p>", op);
    return PyUnicode_FromFormat("<afanotify ready awaitable of %R>", self->value);
}

static PyMethodDef afn_ready_methods[] = {
    {"send", (PyCFunction)afn_ready_send, METH_O,
     "send(None): raise StopIteration(value); the first step of awaiting."},
    {"throw", (PyCFunction)(void (*)(void))afn_ready_throw, METH_FASTCALL,
     "throw(exc): give up the value and raise exc."},
    {"close", (PyCFunction)afn_ready_close, METH_NOARGS, "close(): give up the value."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods afn_ready_async = {
    .am_await = afn_ready_await,
};

static PyTypeObject afn_ready_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "afanotify._fanotify.ReadyAwaitable",
    .tp_doc = "An awaitable that gives its value at once (see _ready()).",
    .tp_basicsize = sizeof(afn_ready_object),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = afn_ready_dealloc,
    .tp_finalize = afn_ready_finalize,
    .tp_traverse = afn_ready_traverse,
    .tp_clear = afn_ready_clear,
    .tp_repr = afn_ready_repr,
    .tp_as_async = &afn_ready_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = afn_ready_iternext,
    .tp_methods = afn_ready_methods,
};

static PyMethodDef afn_ready_functions[] = {
    {"_ready", (PyCFunction)(void (*)(void))afn_ready_new, METH_FASTCALL,
     "_ready(value, owner): an awaitable that gives value without suspending."},
    {NULL, NULL, 0, NULL},
};

/* Add _ready and the ReadyAwaitable type to afanotify._fanotify (0, or -1;
 * see afn_extend_module in fastpath_build.c, which comes first). */
int afn_install_ready(void)
{
    return afn_extend_module(afn_ready_functions, "ReadyAwaitable", &afn_ready_type);
}
