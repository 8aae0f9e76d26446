/*
 * The event builder: FanotifyData objects made in C from the entries that
 * afn_decode (fastpath.c) fills, for the shapes that make up nearly every
 * batch.  afanotify/_fastparse.py (Decoder._build) does the same in Python
 * for every shape; this file only takes over the three common ones, field
 * for field as the Python code sets them, and hands any other event back.
 * tests/test_fastparse_differential.py compares the two builders.
 *
 * It uses the CPython C API, which cffi does not expose: afn_install_builder
 * (called through cffi) adds two built-in functions to this very module,
 * `_builder_setup` and `_build`.  The events are instances of the real
 * FanotifyData class: each field is a slot of that class, written at the
 * offset its member descriptor gives, as `object.__setattr__` would.
 * `_builder_setup` checks that every field is such a slot and refuses
 * otherwise, and the Python builder is used instead.
 */
#include <structmember.h>

/* The member-descriptor names of Python 3.12 (structmember.h's older ones are
 * deprecated there). */
#if PY_VERSION_HEX < 0x030C0000
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
#endif

/* The fields this file sets by name; the others keep their defaults. */
enum {
    AFN_F_FD, AFN_F_PID, AFN_F_EV_TYPES, AFN_F_PATH, AFN_F_PID_IS_TID, AFN_F_FID,
    AFN_F_DFID, AFN_F_NAME, AFN_F_DIR_PATH, AFN_F_PATH_RESOLVED, AFN_F_FD_ERROR,
    AFN_F_OWNS, AFN_F_COUNT
};
static const char *const afn_field_names[AFN_F_COUNT] = {
    "fd", "pid", "ev_types", "path", "pid_is_tid", "fid", "dfid", "name", "dir_path",
    "path_resolved", "fd_error", "_owns",
};

#define AFN_MAX_SLOTS 64

/* _build flags */
#define AFN_B_PID_IS_TID 0x1
#define AFN_B_OWNED 0x2
#define AFN_B_FD_ERROR 0x4
#define AFN_B_RESOLVE 0x8
#define AFN_B_UNTRACK 0x10

/* Bits of FanotifyData._owns (afanotify/events.py). */
#define AFN_OWN_FD 1
#define AFN_UNANSWERED 4

struct afn_builder {
    PyTypeObject *event_type;
    PyTypeObject *handle_type;
    Py_ssize_t nslots;
    Py_ssize_t slot_off[AFN_MAX_SLOTS];
    PyObject *slot_default[AFN_MAX_SLOTS];
    Py_ssize_t off[AFN_F_COUNT];
    Py_ssize_t handle_off[3]; /* fsid, handle_type, handle */
};

/* Set by _builder_setup; event_type is NULL until then. */
static struct afn_builder afn_b;
/* Nonzero while _build runs: a callback of its must not change afn_b. */
static int afn_building;

/* What readlink gives for a file unlinked since it was opened. */
static const char afn_deleted[] = " (deleted)";

#define AFN_SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* The offset of `type`'s slot `name`: a writable object slot of exactly
 * that class (a member descriptor of type T_OBJECT_EX), or -1 with an
 * exception set. */
static Py_ssize_t afn_slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *descr = PyDict_GetItemWithError(type->tp_dict, name);
    PyMemberDef *m;

    if (descr == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "%s has no slot %R", type->tp_name, name);
        return -1;
    }
    if (!Py_IS_TYPE(descr, &PyMemberDescr_Type)
        || ((PyDescrObject *)descr)->d_type != type) {
        PyErr_Format(PyExc_TypeError, "%s.%U is not a slot of that class", type->tp_name, name);
        return -1;
    }
    m = ((PyMemberDescrObject *)descr)->d_member;
    if (m->type != Py_T_OBJECT_EX || (m->flags & Py_READONLY) || m->offset <= 0
        || (size_t)m->offset + sizeof(PyObject *) > (size_t)type->tp_basicsize) {
        PyErr_Format(PyExc_TypeError, "%s.%U is not a writable object slot", type->tp_name,
                     name);
        return -1;
    }
    return m->offset;
}

static int afn_plain_type(PyTypeObject *type)
{
    /* Instances made here skip __init__/__new__: only a class whose
     * instances are plain slots (no dict, no custom allocation) qualifies. */
    if (!PyType_Check((PyObject *)type) || type->tp_base == NULL || type->tp_dictoffset != 0
        || type->tp_alloc != PyType_GenericAlloc || type->tp_itemsize != 0) {
        PyErr_Format(PyExc_TypeError, "%s is not a plain slotted class", type->tp_name);
        return -1;
    }
    return 0;
}

static void afn_builder_clear(struct afn_builder *b)
{
    Py_ssize_t i;
    for (i = 0; i < b->nslots; i++)
        Py_CLEAR(b->slot_default[i]);
    b->nslots = 0;
    Py_CLEAR(b->event_type);
    Py_CLEAR(b->handle_type);
}

/* _builder_setup(FanotifyData, FileHandle, slots, defaults, handle_slots):
 * `slots` names every slot of FanotifyData, `defaults` the value each gets
 * unless set here; `handle_slots` names FileHandle's (fsid, handle_type,
 * handle).  Raises TypeError when a class is not as this file expects. */
static PyObject *afn_builder_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyTypeObject *etype, *htype;
    PyObject *slots, *defaults, *hslots;
    Py_ssize_t i, n;
    int f;
    struct afn_builder nb;

    (void)self;
    if (nargs != 5 || !PyType_Check(args[0]) || !PyType_Check(args[1])
        || !PyTuple_Check(args[2]) || !PyTuple_Check(args[3]) || !PyTuple_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "_builder_setup(event_type, handle_type, slots, defaults, handle_slots)");
        return NULL;
    }
    etype = (PyTypeObject *)args[0];
    htype = (PyTypeObject *)args[1];
    slots = args[2];
    defaults = args[3];
    hslots = args[4];
    n = PyTuple_GET_SIZE(slots);
    if (n != PyTuple_GET_SIZE(defaults) || n > AFN_MAX_SLOTS || PyTuple_GET_SIZE(hslots) != 3) {
        PyErr_SetString(PyExc_ValueError, "_builder_setup: slot and default counts differ");
        return NULL;
    }
    if (afn_building) {
        PyErr_SetString(PyExc_RuntimeError, "_builder_setup while _build runs");
        return NULL;
    }
    if (afn_plain_type(etype) < 0 || afn_plain_type(htype) < 0)
        return NULL;
    memset(&nb, 0, sizeof nb);
    for (f = 0; f < AFN_F_COUNT; f++)
        nb.off[f] = -1;
    for (i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(slots, i);
        Py_ssize_t off;
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "_builder_setup: slot names must be str");
            goto fail;
        }
        off = afn_slot_offset(etype, name);
        if (off < 0)
            goto fail;
        nb.slot_off[i] = off;
        nb.slot_default[i] = Py_NewRef(PyTuple_GET_ITEM(defaults, i));
        nb.nslots = i + 1;
        for (f = 0; f < AFN_F_COUNT; f++)
            if (PyUnicode_CompareWithASCIIString(name, afn_field_names[f]) == 0)
                nb.off[f] = off;
    }
    /* Every slot must be listed once, so that none is left unset. */
    if ((size_t)etype->tp_basicsize
        != (size_t)etype->tp_base->tp_basicsize + (size_t)n * sizeof(PyObject *)
                + (etype->tp_weaklistoffset ? sizeof(PyObject *) : 0)) {
        PyErr_Format(PyExc_TypeError, "_builder_setup: %s has slots not listed",
                     etype->tp_name);
        goto fail;
    }
    for (f = 0; f < AFN_F_COUNT; f++) {
        if (nb.off[f] < 0) {
            PyErr_Format(PyExc_TypeError, "_builder_setup: %s has no field %s",
                         etype->tp_name, afn_field_names[f]);
            goto fail;
        }
    }
    for (i = 0; i < 3; i++) {
        PyObject *name = PyTuple_GET_ITEM(hslots, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "_builder_setup: slot names must be str");
            goto fail;
        }
        nb.handle_off[i] = afn_slot_offset(htype, name);
        if (nb.handle_off[i] < 0)
            goto fail;
    }
    if ((size_t)htype->tp_basicsize
        != (size_t)htype->tp_base->tp_basicsize + 3 * sizeof(PyObject *)
                + (htype->tp_weaklistoffset ? sizeof(PyObject *) : 0)) {
        PyErr_Format(PyExc_TypeError, "_builder_setup: %s has slots not listed",
                     htype->tp_name);
        goto fail;
    }
    nb.event_type = (PyTypeObject *)Py_NewRef(etype);
    nb.handle_type = (PyTypeObject *)Py_NewRef(htype);
    /* Only now, so that a refused setup leaves the previous one working. */
    afn_builder_clear(&afn_b);
    afn_b = nb;
    Py_RETURN_NONE;
fail:
    afn_builder_clear(&nb);
    return NULL;
}

/* A new event with every slot at its default. */
static PyObject *afn_new_event(void)
{
    PyTypeObject *t = afn_b.event_type;
    PyObject *o = t->tp_alloc(t, 0);
    Py_ssize_t i;

    if (o == NULL)
        return NULL;
    for (i = 0; i < afn_b.nslots; i++)
        AFN_SLOT(o, afn_b.slot_off[i]) = Py_NewRef(afn_b.slot_default[i]);
    return o;
}

/* Set field `f` of a new event to `v`, a new reference (stolen); false if v is NULL. */
static inline int afn_put(PyObject *o, int f, PyObject *v)
{
    PyObject **p = &AFN_SLOT(o, afn_b.off[f]);
    if (v == NULL)
        return 0;
    Py_SETREF(*p, v);
    return 1;
}

/* An event with the fields every shape has. */
static PyObject *afn_event_base(const struct afn_event *ev, int32_t fd, unsigned flags,
                                long owns)
{
    PyObject *o = afn_new_event();
    if (o == NULL)
        return NULL;
    if (!afn_put(o, AFN_F_FD, PyLong_FromLong(fd))
        || !afn_put(o, AFN_F_PID, PyLong_FromLong(ev->pid))
        || !afn_put(o, AFN_F_EV_TYPES, PyLong_FromUnsignedLongLong(ev->mask))
        || !afn_put(o, AFN_F_PID_IS_TID, PyBool_FromLong(flags & AFN_B_PID_IS_TID))
        || (owns && !afn_put(o, AFN_F_OWNS, PyLong_FromLong(owns)))) {
        Py_DECREF(o);
        return NULL;
    }
    return o;
}

/* FileHandle((fsid0, fsid1), handle_type, handle) from a record body. */
static PyObject *afn_new_handle(const unsigned char *src, uint32_t rec, uint32_t hlen,
                                unsigned flags)
{
    PyTypeObject *t = afn_b.handle_type;
    PyObject *o, *fsid;

    fsid = Py_BuildValue("(kk)", (unsigned long)afn_u32(src + rec),
                         (unsigned long)afn_u32(src + rec + 4));
    if (fsid == NULL)
        return NULL;
    o = t->tp_alloc(t, 0);
    if (o == NULL) {
        Py_DECREF(fsid);
        return NULL;
    }
    AFN_SLOT(o, afn_b.handle_off[0]) = fsid;
    AFN_SLOT(o, afn_b.handle_off[1]) = PyLong_FromLong(afn_s32(src + rec + 12));
    AFN_SLOT(o, afn_b.handle_off[2]) =
        PyBytes_FromStringAndSize((const char *)src + rec + 16, (Py_ssize_t)hlen);
    if (AFN_SLOT(o, afn_b.handle_off[1]) == NULL || AFN_SLOT(o, afn_b.handle_off[2]) == NULL) {
        Py_DECREF(o);
        return NULL;
    }
    /* Only a tuple, an int and bytes: never part of a cycle. */
    if ((flags & AFN_B_UNTRACK) && PyObject_GC_IsTracked(o))
        PyObject_GC_UnTrack(o);
    return o;
}

/* The per-directory entry the Python builder keeps: [FileHandle, path or
 * None, path with a trailing slash]. */
static PyObject *afn_dir_entry(const unsigned char *src, const struct afn_event *ev,
                               unsigned flags)
{
    PyObject *h = afn_new_handle(src, ev->dfid.rec, ev->dfid.handle_len, flags);
    PyObject *e;
    if (h == NULL)
        return NULL;
    e = PyList_New(3);
    if (e == NULL) {
        Py_DECREF(h);
        return NULL;
    }
    PyList_SET_ITEM(e, 0, h);
    PyList_SET_ITEM(e, 1, Py_NewRef(Py_None));
    PyList_SET_ITEM(e, 2, PyUnicode_FromStringAndSize("", 0));
    if (PyList_GET_ITEM(e, 2) == NULL) {
        Py_DECREF(e);
        return NULL;
    }
    return e;
}

/* The records an FID-shape entry points at lie inside the batch. */
static int afn_fits(const struct afn_event *ev, const Py_buffer *src)
{
    uint64_t len = (uint64_t)src->len;
    if ((ev->has & AFN_HAS_DFID) && (uint64_t)ev->dfid.rec + 16 + ev->dfid.handle_len > len)
        return 0;
    if ((ev->has & AFN_HAS_NAME) && (uint64_t)ev->dfid.name_off + ev->dfid.name_len > len)
        return 0;
    if ((ev->has & AFN_HAS_FID) && (uint64_t)ev->fid.rec + 16 + ev->fid.handle_len > len)
        return 0;
    return 1;
}

static int afn_append(PyObject *events, PyObject *o, unsigned flags, int perm)
{
    int r;
    /* An event holds ints, strs, bools and file handles: no cycle, so the
     * collector need not scan it.  A permission event is left tracked: the
     * group links it to itself (_group) once it is read. */
    if ((flags & AFN_B_UNTRACK) && !perm)
        PyObject_GC_UnTrack(o);
    r = PyList_Append(events, o);
    Py_DECREF(o);
    return r;
}

/*
 * _build(out, start, count, src, arena, events, dirs, by_record, dir_path,
 *        skip_pids, flags, perm_mask, dir_change_mask) -> (stop, filled, upto)
 *
 * Builds events for out[start:count] (struct afn_event entries, in the
 * buffer `out`) and appends them to the list `events`, until an entry of
 * another shape: `stop` is its index (count when there was none).  `src` is
 * the batch, `arena` the decoder's arena, `dirs` the batch's list of
 * AFN_MAX_DIRS directory entries by dir_idx (None until first seen), and
 * `by_record` a dict of the entries of directories past those, by the
 * bytes of their records.
 * `filled` counts the events that got paths from `dir_path`; `upto` is the
 * length of `events` when an event said a directory moved (the caller
 * resolves that event and the rest itself, and passes dir_path=None from
 * then on), else -1.
 */
static PyObject *afn_build(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer outb, srcb, arenab;
    Py_ssize_t start, count, i, filled = 0, upto = -1;
    PyObject *events, *dirs, *by_record, *dir_path, *skip_pids, *result = NULL, *held = NULL;
    unsigned long flags;
    uint64_t perm, dir_change;
    const struct afn_event *out;
    const unsigned char *src;
    const char *arena;
    const size_t dlen = sizeof afn_deleted - 1;

    (void)self;
    if (afn_b.event_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_build before _builder_setup");
        return NULL;
    }
    if (nargs != 13 || !PyList_CheckExact(args[5]) || !PyList_CheckExact(args[6])
        || PyList_GET_SIZE(args[6]) != AFN_MAX_DIRS || !PyDict_CheckExact(args[7])) {
        PyErr_SetString(PyExc_TypeError, "_build(out, start, count, src, arena, events, dirs, "
                                         "by_record, dir_path, skip_pids, flags, perm_mask, "
                                         "dir_change_mask)");
        return NULL;
    }
    start = PyLong_AsSsize_t(args[1]);
    count = PyLong_AsSsize_t(args[2]);
    flags = PyLong_AsUnsignedLong(args[10]);
    perm = PyLong_AsUnsignedLongLong(args[11]);
    dir_change = PyLong_AsUnsignedLongLong(args[12]);
    if (PyErr_Occurred())
        return NULL;
    events = args[5];
    dirs = args[6];
    by_record = args[7];
    dir_path = args[8] == Py_None ? NULL : args[8];
    skip_pids = args[9];
    if (PyObject_GetBuffer(args[0], &outb, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &srcb, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&outb);
        return NULL;
    }
    if (PyObject_GetBuffer(args[4], &arenab, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&srcb);
        PyBuffer_Release(&outb);
        return NULL;
    }
    afn_building++;
    if (start < 0 || count < start
        || (size_t)count > (size_t)outb.len / sizeof(struct afn_event)) {
        PyErr_SetString(PyExc_ValueError, "_build: entries outside the buffer");
        goto done;
    }
    out = (const struct afn_event *)outb.buf;
    src = (const unsigned char *)srcb.buf;
    arena = (const char *)arenab.buf;

    for (i = start; i < count; i++) {
        const struct afn_event *ev = &out[i];
        unsigned has = ev->has;
        long owns = 0;
        PyObject *o;

        if (ev->fd >= 0 && (flags & AFN_B_OWNED))
            owns = (ev->mask & perm) ? (AFN_OWN_FD | AFN_UNANSWERED) : AFN_OWN_FD;

        if ((flags & AFN_B_RESOLVE) && ev->fd >= 0 && !(ev->status || has)) {
            /* fd mode with the path read by the C walk. */
            size_t plen;
            int ok = 1;
            PyObject *path;
            if (ev->path_len < 0)
                break;
            plen = (size_t)ev->path_len;
            if ((uint64_t)ev->path_off + plen > (uint64_t)arenab.len) {
                PyErr_SetString(PyExc_ValueError, "_build: a path outside the arena");
                goto done;
            }
            if (plen >= dlen
                && !memcmp(arena + ev->path_off + plen - dlen, afn_deleted, dlen)) {
                plen -= dlen;
                ok = 0;
            }
            o = afn_event_base(ev, ev->fd, (unsigned)flags, owns);
            if (o == NULL)
                goto done;
            path = PyUnicode_DecodeFSDefaultAndSize(arena + ev->path_off, (Py_ssize_t)plen);
            if (!afn_put(o, AFN_F_PATH, path)
                || !afn_put(o, AFN_F_PATH_RESOLVED, PyBool_FromLong(ok))) {
                Py_DECREF(o);
                goto done;
            }
            if (afn_append(events, o, (unsigned)flags, (ev->mask & perm) != 0) < 0)
                goto done;
            continue;
        }
        if (!(ev->status || has || (flags & AFN_B_RESOLVE))) {
            /* No records: fd mode without paths. */
            if (ev->fd < 0 && (flags & AFN_B_FD_ERROR) && ev->fd != FAN_NOFD) {
                o = afn_event_base(ev, FAN_NOFD, (unsigned)flags, 0);
                if (o != NULL && !afn_put(o, AFN_F_FD_ERROR, PyLong_FromLongLong(-(long long)ev->fd)))
                    Py_CLEAR(o);
            } else {
                o = afn_event_base(ev, ev->fd, (unsigned)flags, owns);
            }
            if (o == NULL || afn_append(events, o, (unsigned)flags, (ev->mask & perm) != 0) < 0)
                goto done;
            continue;
        }
        if (ev->fd == FAN_NOFD && has && !ev->status && !(flags & AFN_B_RESOLVE)
            && !(has & ~(unsigned)(AFN_HAS_FID | AFN_HAS_DFID | AFN_HAS_NAME))) {
            /* The FID-group shape: a DFID or DFID_NAME record, maybe a FID. */
            PyObject *entry = NULL, *name = NULL;
            if (!afn_fits(ev, &srcb)) {
                PyErr_SetString(PyExc_ValueError, "_build: a record outside the batch");
                goto done;
            }
            if ((has & AFN_HAS_DFID) && ev->dir_idx < AFN_MAX_DIRS) {
                /* dir_path may have changed the list: index it checked. */
                entry = PyList_GetItem(dirs, ev->dir_idx);
                if (entry == NULL)
                    goto done;
                if (entry == Py_None) {
                    entry = afn_dir_entry(src, ev, (unsigned)flags);
                    if (entry == NULL)
                        goto done;
                    if (PyList_SetItem(dirs, ev->dir_idx, entry) < 0)
                        goto done;
                }
            } else if (has & AFN_HAS_DFID) {
                /* Past the numbered ones: keyed by the record's bytes. */
                PyObject *key = PyBytes_FromStringAndSize(
                    (const char *)src + ev->dfid.rec, 16 + (Py_ssize_t)ev->dfid.handle_len);
                if (key == NULL)
                    goto done;
                entry = PyDict_GetItemWithError(by_record, key);
                if (entry == NULL && !PyErr_Occurred()) {
                    entry = afn_dir_entry(src, ev, (unsigned)flags);
                    if (entry != NULL) {
                        int r = PyDict_SetItem(by_record, key, entry);
                        Py_DECREF(entry); /* the dict holds it */
                        if (r < 0)
                            entry = NULL;
                    }
                }
                Py_DECREF(key);
                if (entry == NULL)
                    goto done;
            }
            if (entry != NULL) {
                if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 3) {
                    PyErr_SetString(PyExc_TypeError, "_build: a malformed directory entry");
                    goto done;
                }
                /* Held for this event: dir_path and skip_pids run Python code. */
                held = Py_NewRef(entry);
            }
            o = afn_event_base(ev, ev->fd, (unsigned)flags, 0);
            if (o == NULL)
                goto done;
            if (entry != NULL)
                afn_put(o, AFN_F_DFID, Py_NewRef(PyList_GET_ITEM(entry, 0)));
            if ((has & AFN_HAS_FID)
                && !afn_put(o, AFN_F_FID, afn_new_handle(src, ev->fid.rec, ev->fid.handle_len,
                                                        (unsigned)flags))) {
                Py_DECREF(o);
                goto done;
            }
            if (has & AFN_HAS_NAME) {
                name = PyUnicode_DecodeUTF8((const char *)src + ev->dfid.name_off,
                                            (Py_ssize_t)ev->dfid.name_len, "surrogateescape");
                if (!afn_put(o, AFN_F_NAME, name)) {
                    Py_DECREF(o);
                    goto done;
                }
            }
            if (dir_path != NULL) {
                if ((ev->mask & dir_change) && (ev->mask & FAN_ONDIR)) {
                    /* Cached directory paths may be stale from here on. */
                    dir_path = NULL;
                    upto = PyList_GET_SIZE(events);
                } else if (entry != NULL) {
                    PyObject *pid = AFN_SLOT(o, afn_b.off[AFN_F_PID]);
                    int skip = PySequence_Contains(skip_pids, pid);
                    if (skip < 0) {
                        Py_DECREF(o);
                        goto done;
                    }
                    if (!skip) {
                        PyObject *d = PyList_GET_ITEM(entry, 1), *jp;
                        int ok = 1;
                        if (d == Py_None) {
                            d = PyObject_CallOneArg(dir_path, PyList_GET_ITEM(entry, 0));
                            if (d == NULL) {
                                Py_DECREF(o);
                                goto done;
                            }
                            if (PyList_GET_SIZE(entry) != 3) {
                                PyErr_SetString(PyExc_RuntimeError,
                                                "_build: dir_path changed a directory entry");
                                Py_DECREF(d);
                                Py_DECREF(o);
                                goto done;
                            }
                            /* Steals d; the entry (held) keeps it alive. */
                            PyList_SetItem(entry, 1, d);
                            if (d != Py_None) {
                                PyObject *slash;
                                if (!PyUnicode_Check(d)) {
                                    PyErr_Format(PyExc_TypeError,
                                                 "dir_path returned %.100s, not str or None",
                                                 Py_TYPE(d)->tp_name);
                                    Py_DECREF(o);
                                    goto done;
                                }
                                if (PyUnicode_GET_LENGTH(d) == 1
                                    && PyUnicode_READ_CHAR(d, 0) == '/')
                                    slash = Py_NewRef(d);
                                else
                                    slash = PyUnicode_FromFormat("%U/", d);
                                if (slash == NULL) {
                                    Py_DECREF(o);
                                    goto done;
                                }
                                PyList_SetItem(entry, 2, slash);
                            }
                        }
                        if (d == Py_None) {
                            jp = Py_NewRef(name != NULL ? name : Py_None);
                            ok = 0;
                        } else if (name == NULL || PyUnicode_GET_LENGTH(name) == 0
                                   || (PyUnicode_GET_LENGTH(name) == 1
                                       && PyUnicode_READ_CHAR(name, 0) == '.')) {
                            jp = Py_NewRef(d);
                        } else {
                            jp = PyUnicode_Concat(PyList_GET_ITEM(entry, 2), name);
                        }
                        afn_put(o, AFN_F_DIR_PATH, Py_NewRef(d));
                        if (!afn_put(o, AFN_F_PATH, jp)) {
                            Py_DECREF(o);
                            goto done;
                        }
                        if (ok)
                            afn_put(o, AFN_F_PATH_RESOLVED, Py_NewRef(Py_True));
                        filled++;
                    }
                }
            }
            Py_CLEAR(held);
            if (afn_append(events, o, (unsigned)flags, (ev->mask & perm) != 0) < 0)
                goto done;
            continue;
        }
        break; /* another shape: the Python builder takes it */
    }
    result = Py_BuildValue("(nnn)", i, filled, upto);
done:
    Py_XDECREF(held);
    afn_building--;
    PyBuffer_Release(&arenab);
    PyBuffer_Release(&srcb);
    PyBuffer_Release(&outb);
    return result;
}

static PyMethodDef afn_builder_methods[] = {
    {"_builder_setup", (PyCFunction)(void (*)(void))afn_builder_setup, METH_FASTCALL,
     "_builder_setup(event_type, handle_type, slots, defaults, handle_slots)"},
    {"_build", (PyCFunction)(void (*)(void))afn_build, METH_FASTCALL,
     "_build(out, start, count, src, arena, events, dirs, by_record, dir_path, skip_pids, flags, "
     "perm_mask, dir_change_mask) -> (stop, filled, upto)"},
    {NULL, NULL, 0, NULL},
};

/* Add _builder_setup and _build to afanotify._fanotify: cffi has no way to
 * export code written against the C API.  Called through cffi, which
 * releases the GIL around the call: take it back here.  Returns 0, or -1
 * (the error is printed, and the caller keeps to Python). */
int afn_install_builder(void)
{
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *mod = PyImport_AddModule("afanotify._fanotify"); /* borrowed */
    PyObject *modname = mod != NULL ? PyModule_GetNameObject(mod) : NULL;
    PyMethodDef *def;
    int rc = modname != NULL ? 0 : -1;

    for (def = afn_builder_methods; rc == 0 && def->ml_name != NULL; def++) {
        PyObject *fn = PyCFunction_NewEx(def, NULL, modname);
        if (fn == NULL || PyObject_SetAttrString(mod, def->ml_name, fn) < 0)
            rc = -1;
        Py_XDECREF(fn);
    }
    Py_XDECREF(modname);
    if (rc < 0)
        PyErr_WriteUnraisable(NULL);
    PyGILState_Release(g);
    return rc;
}
