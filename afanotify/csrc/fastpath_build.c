/*
 * The event builder: FanotifyData objects made in C from the entries that
 * afn_decode (fastpath.c) fills.  It builds every well-formed event whose
 * records are all of known types, field for field as the reference parser
 * (afanotify/_parser.py) does, and hands back, by index, the entries it
 * leaves to Python: malformed ones (a nonzero status), events with records
 * of unknown types, and paths that did not fit in the arena (AFN_PATH_RETRY).
 * tests/test_fastparse_differential.py compares it with the pure parser.
 *
 * It uses the CPython C API, which cffi does not expose: afn_install_builder
 * (called through cffi) adds two built-in functions to this very module,
 * `_builder_setup` and `_build`.  The events are instances of the real
 * FanotifyData class, allocated with the class's tp_alloc, and each field is
 * a slot of that class.  Only documented API is used: the slots are found
 * in the class's tp_members (PyMemberDef: name, type, offset, flags), each
 * checked against the member descriptor in the class's __dict__ by setting
 * it once through the descriptor's tp_descr_set, and filled as
 * PyMember_SetOne fills a Py_T_OBJECT_EX member of a new object.  (Setting
 * every field through tp_descr_set instead measured 40% slower on fd-mode
 * batches: about 30 calls per event.)  `_builder_setup` refuses any class
 * that is not such a plain slotted class, and the caller builds the events
 * in Python instead.
 */

#include <structmember.h>

/* The member type names of Python 3.12 (structmember.h's older ones are
 * deprecated there). */
#if PY_VERSION_HEX < 0x030C0000
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
#endif

/* The fields this file sets by name; the others keep their defaults. */
enum {
    AFN_F_FD, AFN_F_PID, AFN_F_EV_TYPES, AFN_F_PATH, AFN_F_PID_IS_TID, AFN_F_PIDFD,
    AFN_F_FID, AFN_F_DFID, AFN_F_NAME, AFN_F_OLD_DFID, AFN_F_OLD_NAME, AFN_F_NEW_DFID,
    AFN_F_NEW_NAME, AFN_F_DIR_PATH, AFN_F_PATH_RESOLVED, AFN_F_ERROR, AFN_F_ERROR_COUNT,
    AFN_F_RANGE_OFFSET, AFN_F_RANGE_COUNT, AFN_F_MNT_ID, AFN_F_FD_ERROR, AFN_F_OWNS,
    AFN_F_OLD_PATH, AFN_F_NEW_PATH,
    AFN_F_COUNT
};
static const char *const afn_field_names[AFN_F_COUNT] = {
    "fd", "pid", "ev_types", "path", "pid_is_tid", "pidfd", "fid", "dfid", "name",
    "old_dfid", "old_name", "new_dfid", "new_name", "dir_path", "path_resolved", "error",
    "error_count", "range_offset", "range_count", "mnt_id", "fd_error", "_owns",
    "old_path", "new_path",
};
/* _build keeps the fields it set as bits of an unsigned. */
_Static_assert(AFN_F_COUNT <= 32, "a bit per field");

#define AFN_MAX_SLOTS 64
#define AFN_ENTRY_LEN 5 /* see afn_dir_entry */
/* An entry counts the events it kept out as outside the tree up to this. */
#define AFN_OUT_COUNT_MAX 255

/* Tree decisions (watch_tree): where a directory is against the watched root. */
#define AFN_T_OUT 0     /* outside: its events are not built */
#define AFN_T_IN 1      /* the root or below it */
#define AFN_T_PARENT 2  /* the root's parent: only the entry named as the root is in */
#define AFN_T_UNKNOWN 3 /* its path is unknown: built, unresolved (it may be inside) */
#define AFN_HANDLE_SLOTS 3 /* FileHandle: fsid, handle_type, handle */

/* _build flags */
#define AFN_B_PID_IS_TID 0x1
#define AFN_B_OWNED 0x2
#define AFN_B_FD_ERROR 0x4
#define AFN_B_RESOLVE 0x8
#define AFN_B_UNTRACK 0x10
#define AFN_B_STOP_AT_CUT 0x20
#define AFN_B_RENAMES 0x40

struct afn_builder {
    PyTypeObject *event_type;
    PyTypeObject *handle_type;
    Py_ssize_t nslots;
    /* Per slot of event_type, in the order given: its member's offset and
     * its default (strong). */
    Py_ssize_t slot_off[AFN_MAX_SLOTS];
    PyObject *slot_default[AFN_MAX_SLOTS];
    /* Per AFN_F_* field, its slot's offset. */
    Py_ssize_t field_off[AFN_F_COUNT];
    Py_ssize_t handle_off[AFN_HANDLE_SLOTS];
    /* Bits of FanotifyData._owns, from afanotify/events.py. */
    long own_fd, own_pidfd, unanswered;
    /* When the slots fill one run of pointers (a class of nothing but
     * slots, as CPython lays them out): `first`, its offset, and `tmpl`,
     * each slot's default by its place in the run.  A new event is then
     * one copy of tmpl, the fields set over it, and the defaults' counts
     * raised at once: ndef distinct defaults, def_obj[k] standing in
     * def_slots[k] slots; field_def[f] is the default of field f's slot.
     * first is -1 otherwise. */
    Py_ssize_t first;
    PyObject *tmpl[AFN_MAX_SLOTS];
    int ndef;
    PyObject *def_obj[AFN_MAX_SLOTS];
    Py_ssize_t def_slots[AFN_MAX_SLOTS];
    unsigned char field_def[AFN_F_COUNT];
    /* afn_make_event's references to take per default (keep[k] for
     * def_obj[k]) for an event whose set fields are `keep_for` (a bit per
     * AFN_F_* field; UINT_MAX: none worked out yet). */
    unsigned keep_for;
    Py_ssize_t keep[AFN_MAX_SLOTS];
    /* The fields of keep_for (nset of them): each one's number and slot. */
    int nset;
    unsigned char set_f[AFN_F_COUNT];
    Py_ssize_t set_off[AFN_F_COUNT];
};

/* Set by _builder_setup; event_type is NULL until then. */
/* Bits of an entry's `has` that afn_mark_later_selves adds (see there);
 * every other reader of `has` leaves them out. */
#define AFN_HAS_SELF_SCANNED (1u << 30) /* the pass has seen this entry */
#define AFN_HAS_LATER_SELF (1u << 31)   /* a later MOVE_SELF/DELETE_SELF, same object */
#define AFN_HAS_PASS_BITS (AFN_HAS_SELF_SCANNED | AFN_HAS_LATER_SELF)

static struct afn_builder afn_b;
/* Nonzero while _build runs: a callback of its must not change afn_b. */
static int afn_building;

/* What readlink gives for a file unlinked since it was opened. */
static const char afn_deleted[] = " (deleted)";

/* The type's own attribute dictionary (a new reference). */
static PyObject *afn_type_dict(PyTypeObject *type)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyType_GetDict(type);
#else
    return Py_NewRef(type->tp_dict);
#endif
}

#define AFN_SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* The offset of `type`'s slot `name`: a writable Py_T_OBJECT_EX member in
 * the class's tp_members whose member descriptor, in the class's own
 * __dict__ and made for that class, stores a value right there (tried on
 * `probe`, a bare instance).  -1 with TypeError otherwise. */
static Py_ssize_t afn_slot_offset(PyTypeObject *type, PyObject *dict, PyObject *name,
                                  PyObject *probe)
{
    PyObject *descr = PyDict_GetItemWithError(dict, name), *owner;
    descrsetfunc set = PyMemberDescr_Type.tp_descr_set;
    const char *cname = PyUnicode_AsUTF8(name);
    PyMemberDef *m = NULL;
    Py_ssize_t off;
    int ok;

    if (cname == NULL)
        return -1;
    if (descr == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "%s has no slot %R", type->tp_name, name);
        return -1;
    }
    owner = Py_IS_TYPE(descr, &PyMemberDescr_Type)
                ? PyObject_GetAttrString(descr, "__objclass__") : NULL;
    ok = owner == (PyObject *)type;
    Py_XDECREF(owner);
    if (ok) {
        for (m = type->tp_members; m != NULL && m->name != NULL; m++)
            if (strcmp(m->name, cname) == 0)
                break;
        ok = m != NULL && m->name != NULL;
    }
    if (!ok) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s.%U is not a slot of that class", type->tp_name, name);
        return -1;
    }
    off = m->offset;
    /* A slot from __slots__ holds any object, stored at its offset; a
     * read-only member, or one of a C type (an int field), does not. */
    ok = m->type == Py_T_OBJECT_EX && !(m->flags & Py_READONLY)
         && off >= (Py_ssize_t)sizeof(PyObject)
         && (size_t)off + sizeof(PyObject *) <= (size_t)type->tp_basicsize && set != NULL
         && set(descr, probe, name) == 0;
    ok = ok && AFN_SLOT(probe, off) == name && set(descr, probe, NULL) == 0;
    if (!ok) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s.%U is not a writable object slot", type->tp_name,
                     name);
        return -1;
    }
    return off;
}

/* Instances made here skip __init__/__new__: only a class whose instances
 * are nothing but slots (directly on object, no dict, no custom allocation)
 * qualifies. */
static int afn_plain_type(PyTypeObject *type)
{
    if (!PyType_Check((PyObject *)type) || type->tp_base != &PyBaseObject_Type
        || type->tp_dictoffset != 0 || type->tp_alloc != PyType_GenericAlloc
        || type->tp_itemsize != 0) {
        PyErr_Format(PyExc_TypeError, "%s is not a plain slotted class", type->tp_name);
        return -1;
    }
    return 0;
}

/* The offsets of `type`'s slots `names` into off[], and a check that they
 * are all of its slots, each once.  0, or -1 with an exception set. */
static int afn_slots(PyTypeObject *type, PyObject *names, Py_ssize_t *off)
{
    Py_ssize_t i, n = PyTuple_GET_SIZE(names), members = 0;
    PyObject *dict = afn_type_dict(type), *probe = NULL, *unique = NULL;
    PyMemberDef *m;
    int rc = -1;

    if (dict == NULL)
        return -1;
    probe = type->tp_alloc(type, 0);
    unique = PySet_New(names);
    if (probe == NULL || unique == NULL)
        goto out;
    for (i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "_builder_setup: slot names must be str");
            goto out;
        }
        off[i] = afn_slot_offset(type, dict, name, probe);
        if (off[i] < 0)
            goto out;
    }
    /* Every slot must be listed once, so that none is left unset (the base
     * is object: the class's own members are all its slots). */
    for (m = type->tp_members; m != NULL && m->name != NULL; m++)
        if (m->type == Py_T_OBJECT_EX)
            members++;
    if (PySet_GET_SIZE(unique) != n || members != n) {
        PyErr_Format(PyExc_TypeError, "_builder_setup: %s has slots not listed",
                     type->tp_name);
        goto out;
    }
    rc = 0;
out:
    Py_XDECREF(unique);
    Py_XDECREF(probe);
    Py_DECREF(dict);
    return rc;
}

static void afn_builder_clear(struct afn_builder *b)
{
    Py_ssize_t i;
    for (i = 0; i < AFN_MAX_SLOTS; i++)
        Py_CLEAR(b->slot_default[i]);
    b->nslots = 0;
    b->first = -1;
    b->ndef = 0;
    b->keep_for = UINT_MAX;
    Py_CLEAR(b->event_type);
    Py_CLEAR(b->handle_type);
}

/* The template of `b` (see struct afn_builder), when its slots are one run
 * of pointers; b->first = -1 when they are not.  The template and def_obj
 * borrow from slot_default. */
static void afn_template(struct afn_builder *b)
{
    Py_ssize_t i, lo = PY_SSIZE_T_MAX;
    int f, k;

    b->first = -1;
    b->ndef = 0;
    b->keep_for = UINT_MAX;
    memset(b->tmpl, 0, sizeof b->tmpl);
    for (i = 0; i < b->nslots; i++)
        if (b->slot_off[i] < lo)
            lo = b->slot_off[i];
    for (i = 0; i < b->nslots; i++) {
        Py_ssize_t at = b->slot_off[i] - lo;
        if (at % (Py_ssize_t)sizeof(PyObject *) != 0
            || at / (Py_ssize_t)sizeof(PyObject *) >= b->nslots
            || b->tmpl[at / sizeof(PyObject *)] != NULL)
            return; /* not one run: afn_make_event fills slot by slot */
        b->tmpl[at / sizeof(PyObject *)] = b->slot_default[i];
    }
    for (i = 0; i < b->nslots; i++) {
        PyObject *d = b->slot_default[i];
        for (k = 0; k < b->ndef && b->def_obj[k] != d; k++)
            ;
        if (k == b->ndef) {
            b->def_obj[k] = d;
            b->def_slots[k] = 0;
            b->ndef++;
        }
        b->def_slots[k]++;
        for (f = 0; f < AFN_F_COUNT; f++)
            if (b->field_off[f] == b->slot_off[i])
                b->field_def[f] = (unsigned char)k;
    }
    /* The run must be all of an instance past its header (no dict, no
     * weak references): afn_make_event then writes every byte itself. */
    if (lo != (Py_ssize_t)sizeof(PyObject) || b->event_type == NULL
        || b->event_type->tp_weaklistoffset != 0
        || lo + b->nslots * (Py_ssize_t)sizeof(PyObject *) != b->event_type->tp_basicsize)
        return;
    b->first = lo;
}

/* The deallocator _builder_setup gives a plain slotted class (see
 * afn_own_dealloc).  CPython's generic one (subtype_dealloc) walks the
 * class's member table and checks for finalizers, weak references and a
 * dict on every object: about 560 instructions for a FanotifyData, a fifth
 * of an event's whole cost in a FID drain.  For a class whose instances
 * are nothing but one run of object slots it does no more than this: stop
 * tracking, release each slot, free, drop the reference to the class.
 *
 * A Python subclass of such a class keeps CPython's deallocator, which
 * releases what the subclass added (its own slots, __dict__, weak
 * references, __del__) and then calls this one, the nearest base's, on the
 * object tracked again; so the class whose slots are released here is the
 * nearest in the MRO that has this deallocator, and the reference dropped
 * is to the object's own class (subtype_dealloc leaves that to a heap base
 * type's deallocator). */
/* Events of afn_b.event_type freed by afn_slots_dealloc, kept for
 * afn_make_event: an event in a drain is made and freed by the thousand,
 * and taking one back here skips the allocator and the collector's
 * bookkeeping on both sides (about 60 instructions of an event's 2,100, and the page faults below).
 * Each is an untracked object with its slots released, its header and
 * class as PyObject_Init leaves them to be set again.  Sized for a full
 * group queue (maxsize 8,192 by default; two 256 KiB reads of FID events):
 * `async for` frees a whole queue before the reader refills it, and with
 * room for only one read the rest went back to the allocator, whose emptied
 * pages were faulted in again on the next read (44 minor faults per 1,000
 * events, against 8 with this size, measured with getrusage on a FID
 * drain).  At most 2 MiB (256 bytes an event) stays kept after a burst;
 * what does not fit is freed. */
#ifdef AFN_NO_FREE_LIST
/* The sanitized build (tests/test_sanitizers.py): every freed event goes
 * back to the allocator, so that a use after free is caught. */
#define AFN_FREE_MAX 0
#else
#define AFN_FREE_MAX 8192
#endif
static PyObject *afn_free[AFN_FREE_MAX > 0 ? AFN_FREE_MAX : 1];
static int afn_nfree;

/* Free what afn_free holds (when the event class changes). */
static void afn_free_clear(void)
{
    while (afn_nfree > 0)
        PyObject_GC_Del(afn_free[--afn_nfree]);
}

/* Release the slots of `o` (of class tp, whose nearest class with
 * afn_slots_dealloc is t), free it or keep it, drop the class. */
static void afn_slots_release(PyObject *o, PyTypeObject *tp, PyTypeObject *t)
{
    PyObject **p = (PyObject **)((char *)o + sizeof(PyObject));
    PyObject **end = (PyObject **)((char *)o + t->tp_basicsize);

    /* Nothing can reach the object any more (its count is zero, the
     * collector no longer sees it): the slots need not be cleared.  Four
     * at a time: a FanotifyData has 28. */
    for (; p + 4 <= end; p += 4) {
        Py_XDECREF(p[0]);
        Py_XDECREF(p[1]);
        Py_XDECREF(p[2]);
        Py_XDECREF(p[3]);
    }
    for (; p < end; p++)
        Py_XDECREF(*p);
    /* afn_b holds a reference to event_type: it outlives what is kept. */
    /* Not an object that was finalized: a new event made from it would
     * never be (the collector's flag would stay set). */
    if (tp == afn_b.event_type && afn_nfree < AFN_FREE_MAX && tp->tp_finalize == NULL)
        afn_free[afn_nfree++] = o;
    else
        tp->tp_free(o);
    Py_DECREF(tp);
}

/* How many afn_slots_dealloc calls are under way without the trashcan (with
 * the GIL held: a thread that finds it raised by another one only takes the
 * trashcan's path sooner). */
static int afn_dealloc_depth;
#define AFN_DEALLOC_DIRECT 50

static void afn_slots_dealloc(PyObject *o)
{
    PyTypeObject *tp = Py_TYPE(o), *t = tp;

    while (t->tp_dealloc != afn_slots_dealloc)
        t = t->tp_base;
    /* A __del__ given to the class after _builder_setup (afn_own_dealloc
     * refuses a class that has one): run it as CPython's deallocator would.
     * A subclass's runs in its own deallocator, before this one. */
    if (tp == t && tp->tp_finalize != NULL) {
        if (!PyObject_GC_IsTracked(o))
            PyObject_GC_Track(o); /* the finalizer may make references to it */
        if (PyObject_CallFinalizerFromDealloc(o) < 0)
            return; /* resurrected */
    }
    PyObject_GC_UnTrack(o);
    /* An event freed inside fewer than AFN_DEALLOC_DIRECT others is freed
     * directly: the trashcan's calls were a sixth of this function's cost,
     * and an event's slots nearly never hold another event.  Deeper, the
     * trashcan bounds the recursion of a chain of nested objects (only for
     * an instance of exactly this class: for a subclass, CPython's
     * deallocator has done it); so the stack holds at most that many of
     * these frames more than the trashcan alone allows. */
    if (afn_dealloc_depth < AFN_DEALLOC_DIRECT) {
        afn_dealloc_depth++;
        afn_slots_release(o, tp, t);
        afn_dealloc_depth--;
        return;
    }
    Py_TRASHCAN_BEGIN(o, afn_slots_dealloc)
    afn_slots_release(o, tp, t);
    Py_TRASHCAN_END
}

/* Give `type` afn_slots_dealloc when its instances are exactly a header and
 * one run of object slots (`nslots` of them, whose offsets are `off`, all
 * checked by afn_slots), and nothing else could need CPython's deallocator:
 * a heap type made by a class statement, GC, based on object, with no
 * finalizer, no weak references and no dict.  Otherwise it keeps its own. */
static void afn_own_dealloc(PyTypeObject *type, const Py_ssize_t *off, Py_ssize_t nslots)
{
    Py_ssize_t i, lo = PY_SSIZE_T_MAX, hi = 0;

    if (type->tp_dealloc == afn_slots_dealloc)
        return;
    for (i = 0; i < nslots; i++) {
        if (off[i] < lo)
            lo = off[i];
        if (off[i] > hi)
            hi = off[i];
    }
    /* nslots distinct aligned offsets (afn_slots checked they are distinct
     * members) spanning exactly nslots pointers fill the run. */
    if (nslots == 0 || lo != (Py_ssize_t)sizeof(PyObject)
        || (hi - lo) != (nslots - 1) * (Py_ssize_t)sizeof(PyObject *)
        || type->tp_basicsize != lo + nslots * (Py_ssize_t)sizeof(PyObject *)
        || !(type->tp_flags & Py_TPFLAGS_HEAPTYPE) || !(type->tp_flags & Py_TPFLAGS_HAVE_GC)
        || type->tp_base != &PyBaseObject_Type || type->tp_itemsize != 0
        || type->tp_dictoffset != 0 || type->tp_weaklistoffset != 0
        || type->tp_finalize != NULL || type->tp_del != NULL
        || type->tp_free != PyObject_GC_Del)
        return;
    for (i = 0; i < nslots; i++)
        if (off[i] % (Py_ssize_t)sizeof(PyObject *) != 0)
            return;
    type->tp_dealloc = afn_slots_dealloc;
}

/* FileHandle's hash and equality in C.  The group's directory map keys its
 * dicts by FileHandle: on a burst over many directories the dataclass's
 * generated __hash__ and __eq__ (Python functions) took 8% of a mixed
 * drain's instructions.  These compute exactly what the generated ones do:
 * hash((fsid, handle_type, handle)), and the fields compared in order with
 * ==, for an object of the very same class only (NotImplemented otherwise,
 * and for ordering).  The class's __hash__ and __eq__ attributes stay the
 * Python ones, which give the same answers. */
static PyTypeObject *afn_h_type; /* the class given these (strong) */
static Py_ssize_t afn_h_off[AFN_HANDLE_SLOTS];

/* The slots of `o` in field order, or -1 with AttributeError (a slot deleted
 * with object.__delattr__, as the generated methods would find). */
static int afn_handle_fields(PyObject *o, PyObject **f)
{
    int k;
    for (k = 0; k < AFN_HANDLE_SLOTS; k++) {
        if ((f[k] = AFN_SLOT(o, afn_h_off[k])) == NULL) {
            PyErr_SetString(PyExc_AttributeError, "a FileHandle field is not set");
            return -1;
        }
    }
    return 0;
}

static Py_hash_t afn_handle_hash(PyObject *o)
{
    PyObject *f[AFN_HANDLE_SLOTS], *t;
    Py_hash_t h;

    if (!PyObject_TypeCheck(o, afn_h_type)) {
        PyErr_SetString(PyExc_TypeError, "FileHandle hash of another type");
        return -1;
    }
    if (afn_handle_fields(o, f) < 0 || (t = PyTuple_Pack(AFN_HANDLE_SLOTS, f[0], f[1], f[2])) == NULL)
        return -1;
    h = PyObject_Hash(t);
    Py_DECREF(t);
    return h;
}

static PyObject *afn_handle_richcompare(PyObject *a, PyObject *b, int op)
{
    PyObject *fa[AFN_HANDLE_SLOTS], *fb[AFN_HANDLE_SLOTS];
    int k, eq = 1;

    if ((op != Py_EQ && op != Py_NE) || Py_TYPE(a) != Py_TYPE(b)
        || !PyObject_TypeCheck(a, afn_h_type))
        Py_RETURN_NOTIMPLEMENTED;
    if (afn_handle_fields(a, fa) < 0 || afn_handle_fields(b, fb) < 0)
        return NULL;
    for (k = 0; k < AFN_HANDLE_SLOTS && eq; k++) {
        /* As tuple ==: identical objects are equal without asking. */
        if ((eq = PyObject_RichCompareBool(fa[k], fb[k], Py_EQ)) < 0)
            return NULL;
    }
    return Py_NewRef(eq == (op == Py_EQ) ? Py_True : Py_False);
}

/* Whether `attr` of the type dict is a method the dataclass generated (its
 * code made by exec, not written in a file). */
static int afn_generated(PyObject *dict, const char *attr)
{
    PyObject *fn = PyDict_GetItemString(dict, attr), *code, *file;
    int ok;
    if (fn == NULL || !PyFunction_Check(fn))
        return 0;
    code = PyFunction_GetCode(fn);
    file = PyObject_GetAttrString(code, "co_filename");
    ok = file != NULL && PyUnicode_Check(file) && PyUnicode_CompareWithASCIIString(file, "<string>") == 0;
    Py_XDECREF(file);
    PyErr_Clear();
    return ok;
}

/* Whether attribute `name` of `obj` is `want` (Py_True, Py_False, Py_None). */
static int afn_attr_is(PyObject *obj, const char *name, PyObject *want)
{
    PyObject *v = PyObject_GetAttrString(obj, name);
    int ok = v == want;
    Py_XDECREF(v);
    PyErr_Clear();
    return ok;
}

/* Give `type` afn_handle_hash and afn_handle_richcompare when it is the
 * frozen dataclass they copy: eq and frozen, not ordered, the generated
 * __eq__ and __hash__, and the fields `names` (its slots, at `off`), in that
 * order, each compared and hashed.  Only one class ever (the first). */
static void afn_own_handle_methods(PyTypeObject *type, PyObject *names, const Py_ssize_t *off)
{
    PyObject *dict, *params, *fields, *key, *field;
    Py_ssize_t pos = 0, i = 0;
    int ok;

    if (afn_h_type != NULL || PyTuple_GET_SIZE(names) != AFN_HANDLE_SLOTS)
        return;
    if ((dict = afn_type_dict(type)) == NULL) {
        PyErr_Clear();
        return;
    }
    params = PyDict_GetItemString(dict, "__dataclass_params__");
    fields = PyDict_GetItemString(dict, "__dataclass_fields__");
    ok = params != NULL && fields != NULL && PyDict_CheckExact(fields)
         && PyDict_GET_SIZE(fields) == AFN_HANDLE_SLOTS
         && afn_attr_is(params, "eq", Py_True) && afn_attr_is(params, "frozen", Py_True)
         && afn_attr_is(params, "order", Py_False) && afn_attr_is(params, "unsafe_hash", Py_False)
         && afn_generated(dict, "__eq__") && afn_generated(dict, "__hash__")
         && type->tp_hash != NULL && type->tp_richcompare != NULL;
    while (ok && PyDict_Next(fields, &pos, &key, &field)) {
        ok = PyUnicode_Check(key) && PyUnicode_Compare(key, PyTuple_GET_ITEM(names, i)) == 0
             && afn_attr_is(field, "compare", Py_True) && afn_attr_is(field, "hash", Py_None);
        i++;
    }
    PyErr_Clear();
    Py_DECREF(dict);
    if (!ok)
        return;
    memcpy(afn_h_off, off, sizeof afn_h_off);
    afn_h_type = (PyTypeObject *)Py_NewRef(type);
    type->tp_hash = afn_handle_hash;
    type->tp_richcompare = afn_handle_richcompare;
}

/* _builder_setup(FanotifyData, FileHandle, slots, defaults, handle_slots,
 *                own_fd, own_pidfd, unanswered):
 * `slots` names every slot of FanotifyData, `defaults` the value each gets
 * unless set here; `handle_slots` names FileHandle's (fsid, handle_type,
 * handle); the last three are the bits of FanotifyData._owns.  Raises
 * TypeError when a class is not as this file expects. */
static PyObject *afn_builder_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyTypeObject *etype, *htype;
    PyObject *slots, *defaults, *hslots;
    Py_ssize_t i, n;
    int f;
    struct afn_builder nb;

    (void)self;
    if (nargs != 8 || !PyType_Check(args[0]) || !PyType_Check(args[1])
        || !PyTuple_Check(args[2]) || !PyTuple_Check(args[3]) || !PyTuple_Check(args[4])
        || !PyLong_Check(args[5]) || !PyLong_Check(args[6]) || !PyLong_Check(args[7])) {
        PyErr_SetString(PyExc_TypeError,
                        "_builder_setup(event_type, handle_type, slots, defaults, handle_slots, "
                        "own_fd, own_pidfd, unanswered)");
        return NULL;
    }
    etype = (PyTypeObject *)args[0];
    htype = (PyTypeObject *)args[1];
    slots = args[2];
    defaults = args[3];
    hslots = args[4];
    n = PyTuple_GET_SIZE(slots);
    if (n != PyTuple_GET_SIZE(defaults) || n > AFN_MAX_SLOTS
        || PyTuple_GET_SIZE(hslots) != AFN_HANDLE_SLOTS) {
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
    nb.own_fd = PyLong_AsLong(args[5]);
    nb.own_pidfd = PyLong_AsLong(args[6]);
    nb.unanswered = PyLong_AsLong(args[7]);
    if (PyErr_Occurred())
        return NULL;
    nb.nslots = n;
    if (afn_slots(etype, slots, nb.slot_off) < 0 || afn_slots(htype, hslots, nb.handle_off) < 0)
        goto fail;
    for (f = 0; f < AFN_F_COUNT; f++)
        nb.field_off[f] = -1;
    for (i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(slots, i);
        nb.slot_default[i] = Py_NewRef(PyTuple_GET_ITEM(defaults, i));
        for (f = 0; f < AFN_F_COUNT; f++)
            if (PyUnicode_CompareWithASCIIString(name, afn_field_names[f]) == 0)
                nb.field_off[f] = nb.slot_off[i];
    }
    for (f = 0; f < AFN_F_COUNT; f++) {
        if (nb.field_off[f] < 0) {
            PyErr_Format(PyExc_TypeError, "_builder_setup: %s has no field %s",
                         etype->tp_name, afn_field_names[f]);
            goto fail;
        }
    }
    nb.event_type = etype; /* borrowed for afn_template; the reference is taken below */
    afn_template(&nb);
    nb.event_type = NULL;
    nb.event_type = (PyTypeObject *)Py_NewRef(etype);
    nb.handle_type = (PyTypeObject *)Py_NewRef(htype);
    afn_own_dealloc(etype, nb.slot_off, n);
    afn_own_dealloc(htype, nb.handle_off, AFN_HANDLE_SLOTS);
    afn_own_handle_methods(htype, hslots, nb.handle_off);
    /* Only now, so that a refused setup leaves the previous one working. */
    afn_free_clear();
    afn_builder_clear(&afn_b);
    afn_b = nb;
    Py_RETURN_NONE;
fail:
    afn_builder_clear(&nb);
    return NULL;
}

/* A new event: each slot set to its default, then the fields in `present`
 * (a bit per AFN_F_* field) to v[field]; tracked by the collector when
 * `track`.  Takes those references from v (leaving it all NULL), whatever
 * happens. */
static PyObject *afn_make_event(PyObject **v, unsigned present, int track)
{
    PyTypeObject *t = afn_b.event_type;
    PyObject *o;
    Py_ssize_t i;
    int k;

    if (afn_b.first >= 0) {
        /* tp_alloc (PyType_GenericAlloc) zeroes the object and tracks it,
         * only for the caller to untrack it again: the template writes every
         * slot, and only an event left tracked is tracked here. */
        if (afn_nfree > 0)
            o = PyObject_Init(afn_free[--afn_nfree], t);
        else
            o = (PyObject *)PyObject_GC_New(PyObject, t);
        if (o == NULL)
            goto fail;
        /* The defaults copied in one go, then a reference taken for each
         * slot that keeps its default: as many per default object as the
         * slots it fills, less the fields set over it.  (About a third of
         * the instructions of filling and releasing slot by slot.) */
        /* The counts depend on `present` alone, which a burst repeats:
         * they are worked out again only when it changes. */
        if (present != afn_b.keep_for) {
            unsigned rest = present;
            memcpy(afn_b.keep, afn_b.def_slots, (size_t)afn_b.ndef * sizeof afn_b.keep[0]);
            afn_b.nset = 0;
            while (rest) {
                int f = __builtin_ctz(rest);
                rest &= rest - 1;
                afn_b.keep[afn_b.field_def[f]]--;
                afn_b.set_f[afn_b.nset] = (unsigned char)f;
                afn_b.set_off[afn_b.nset++] = afn_b.field_off[f];
            }
            afn_b.keep_for = present;
        }
        memcpy((char *)o + afn_b.first, afn_b.tmpl, (size_t)afn_b.nslots * sizeof(PyObject *));
        {
            /* In locals: the slot stores could alias afn_b for the compiler,
             * which then read its fields again at every step. */
            const int nset = afn_b.nset, ndef = afn_b.ndef;
            const unsigned char *set_f = afn_b.set_f;
            const Py_ssize_t *set_off = afn_b.set_off, *keep = afn_b.keep;
            PyObject *const *def_obj = afn_b.def_obj;
            char *base = (char *)o;
            for (k = 0; k < nset; k++) {
                int f = set_f[k];
                AFN_SLOT(base, set_off[k]) = v[f];
                v[f] = NULL;
            }
            for (k = 0; k < ndef; k++) {
                PyObject *d = def_obj[k];
#if PY_VERSION_HEX < 0x030C0000 && !defined(Py_REF_DEBUG)
                /* Py_INCREF is a plain increment before 3.12 (no immortal
                 * objects) outside a debug build (which also counts every
                 * reference in _Py_RefTotal): n of them are one addition. */
                Py_SET_REFCNT(d, Py_REFCNT(d) + keep[k]);
#else
                Py_ssize_t n = keep[k];
                while (n-- > 0)
                    Py_INCREF(d);
#endif
            }
        }
        if (track)
            PyObject_GC_Track(o);
        return o;
    }
    o = t->tp_alloc(t, 0);
    if (o != NULL && !track)
        PyObject_GC_UnTrack(o);
    if (o != NULL) {
        /* A new object's slots are NULL: nothing to release. */
        for (i = 0; i < afn_b.nslots; i++)
            AFN_SLOT(o, afn_b.slot_off[i]) = Py_NewRef(afn_b.slot_default[i]);
    }
    while (present) {
        int f = __builtin_ctz(present);
        present &= present - 1;
        if (o != NULL)
            Py_SETREF(AFN_SLOT(o, afn_b.field_off[f]), v[f]);
        else
            Py_DECREF(v[f]);
        v[f] = NULL;
    }
    return o;
fail:
    while (present) {
        int f = __builtin_ctz(present);
        present &= present - 1;
        Py_CLEAR(v[f]);
    }
    return NULL;
}

/* FileHandle((fsid0, fsid1), handle_type, handle) from a record body. */
static PyObject *afn_new_handle(const unsigned char *src, uint32_t rec, uint32_t hlen,
                                unsigned flags)
{
    PyTypeObject *t = afn_b.handle_type;
    PyObject *v[AFN_HANDLE_SLOTS], *o = NULL;
    int k;

    /* __kernel_fsid_t is two 32-bit words. */
    v[0] = Py_BuildValue("(kk)", (unsigned long)afn_u32(src + rec),
                         (unsigned long)afn_u32(src + rec + sizeof(uint32_t)));
    v[1] = PyLong_FromLong(afn_s32(src + rec + AFN_FH(handle_type)));
    v[2] = PyBytes_FromStringAndSize((const char *)src + rec + AFN_FID_FIXED, (Py_ssize_t)hlen);
    if (v[0] != NULL && v[1] != NULL && v[2] != NULL)
        o = t->tp_alloc(t, 0);
    if (o == NULL) {
        for (k = 0; k < AFN_HANDLE_SLOTS; k++)
            Py_XDECREF(v[k]);
        return NULL;
    }
    for (k = 0; k < AFN_HANDLE_SLOTS; k++)
        AFN_SLOT(o, afn_b.handle_off[k]) = v[k];
    /* Only a tuple, an int and bytes: never part of a cycle. */
    if ((flags & AFN_B_UNTRACK) && PyObject_GC_IsTracked(o))
        PyObject_GC_UnTrack(o);
    return o;
}

/* Copy n bytes from p to `to` and return the OR of the words copied (a byte
 * >= 0x80 among them sets a bit of 0x8080808080808080).  A word at a time
 * (these are names and short paths: this costs less than a memcpy call),
 * the last word overlapping the one before, so that nothing is read or
 * written outside the n bytes. */
static inline uint64_t afn_copy_or(unsigned char *to, const unsigned char *p, size_t n)
{
    uint64_t w, all = 0;
    size_t k;

    if (n >= 8) {
        for (k = 0; k + 8 <= n; k += 8) {
            memcpy(&w, p + k, 8);
            memcpy(to + k, &w, 8);
            all |= w;
        }
        if (k < n) {
            memcpy(&w, p + n - 8, 8);
            memcpy(to + n - 8, &w, 8);
            all |= w;
        }
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + n - 4, 4);
        memcpy(to, &a, 4);
        memcpy(to + n - 4, &b, 4);
        all = a | b;
    } else {
        for (k = 0; k < n; k++)
            all |= (to[k] = p[k]);
    }
    return all;
}

/* A name from a record: os.fsdecode() on a UTF-8 system, as the parser.
 * An ASCII name (nearly all of them) is copied into a new str directly:
 * the decoder's error-handler lookup costs more than the copy. */
static PyObject *afn_name(const unsigned char *src, const struct afn_fidref *ref)
{
    const unsigned char *p = src + ref->name_off;
    size_t n = ref->name_len;
    PyObject *s;

    /* Copied as ASCII and checked while copying (afn_copy_or); a name that
     * was not ASCII after all is decoded instead. */
    s = PyUnicode_New((Py_ssize_t)n, 127);
    if (s == NULL)
        return NULL;
    if ((afn_copy_or(PyUnicode_1BYTE_DATA(s), p, n) & 0x8080808080808080ull) == 0)
        return s;
    Py_DECREF(s);
    return PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, "surrogateescape");
}

/* a + b for two str; two ASCII ones are copied directly (PyUnicode_Concat
 * does the same, after more checks). */
static PyObject *afn_concat(PyObject *a, PyObject *b)
{
    Py_ssize_t la, lb;
    PyObject *s;

    if (!PyUnicode_IS_ASCII(a) || !PyUnicode_IS_ASCII(b))
        return PyUnicode_Concat(a, b);
    la = PyUnicode_GET_LENGTH(a);
    lb = PyUnicode_GET_LENGTH(b);
    s = PyUnicode_New(la + lb, 127);
    if (s != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(s), PyUnicode_1BYTE_DATA(a), (size_t)la);
        afn_copy_or(PyUnicode_1BYTE_DATA(s) + la, PyUnicode_1BYTE_DATA(b), (size_t)lb);
    }
    return s;
}

/* Whether the record's name is `name` (a str). */
static int afn_name_is(const unsigned char *src, const struct afn_fidref *ref, PyObject *name)
{
    PyObject *n = afn_name(src, ref);
    int r;
    if (n == NULL) {
        PyErr_Clear();
        return 0;
    }
    r = PyUnicode_Compare(n, name) == 0;
    Py_DECREF(n);
    PyErr_Clear();
    return r;
}

/* The per-directory entry the Python builder keeps: [FileHandle, path or
 * None, path with a trailing slash, tree decision (AFN_T_*) or None, the
 * events not built as outside the tree (an int, up to AFN_OUT_COUNT_MAX)],
 * for the directory of record `ref`. */
static PyObject *afn_dir_entry(const unsigned char *src, const struct afn_fidref *ref,
                               unsigned flags)
{
    PyObject *h = afn_new_handle(src, ref->rec, ref->handle_len, flags);
    PyObject *e;
    if (h == NULL)
        return NULL;
    e = PyList_New(AFN_ENTRY_LEN);
    if (e == NULL) {
        Py_DECREF(h);
        return NULL;
    }
    PyList_SET_ITEM(e, 0, h);
    PyList_SET_ITEM(e, 1, Py_NewRef(Py_None));
    PyList_SET_ITEM(e, 3, Py_NewRef(Py_None));
    PyList_SET_ITEM(e, 4, PyLong_FromLong(0));
    PyList_SET_ITEM(e, 2, PyUnicode_FromStringAndSize("", 0));
    if (PyList_GET_ITEM(e, 2) == NULL || PyList_GET_ITEM(e, 4) == NULL) {
        Py_DECREF(e);
        return NULL;
    }
    return e;
}

/* A FID-like record, and its name when `named`, lies inside `len` bytes. */
static int afn_ref_fits(const struct afn_fidref *ref, uint64_t len, int handle, int named)
{
    if (handle && (uint64_t)ref->rec + AFN_FID_FIXED + ref->handle_len > len)
        return 0;
    return !named || (uint64_t)ref->name_off + ref->name_len <= len;
}

/* The records an entry points at lie inside the batch. */
static int afn_fits(const struct afn_event *ev, const Py_buffer *src)
{
    uint64_t len = (uint64_t)src->len;
    unsigned has = ev->has & ~AFN_HAS_PASS_BITS;
    return afn_ref_fits(&ev->dfid, len, has & AFN_HAS_DFID, has & AFN_HAS_NAME)
        && afn_ref_fits(&ev->fid, len, has & AFN_HAS_FID, 0)
        && afn_ref_fits(&ev->old, len, has & AFN_HAS_OLD, has & AFN_HAS_OLD)
        && afn_ref_fits(&ev->new, len, has & AFN_HAS_NEW, has & AFN_HAS_NEW);
}

/* Appends o to events, taking the reference. */
static int afn_append(PyObject *events, PyObject *o)
{
    int r = PyList_Append(events, o);
    Py_DECREF(o);
    return r;
}

/* A new reference to the entry of record `ref`: the one `kept` holds for
 * its bytes (`key`, made here when NULL), else a new one, which `kept`
 * then holds.  `kept` (NULL: none) is the caller's dict of the entries of
 * earlier batches, valid while its map has not changed (see
 * DirMap.c_kept): a directory every batch names then costs one dict lookup
 * a batch, not a FileHandle, a dir_path call and its slashed path. */
static PyObject *afn_kept_entry(const unsigned char *src, const struct afn_fidref *ref,
                                PyObject *kept, PyObject *key, unsigned flags)
{
    PyObject *entry;
    int r;

    if (kept == NULL)
        return afn_dir_entry(src, ref, flags);
    if (key != NULL)
        Py_INCREF(key);
    else if ((key = PyBytes_FromStringAndSize((const char *)src + ref->rec,
                                              (Py_ssize_t)(AFN_FID_FIXED + ref->handle_len)))
             == NULL)
        return NULL;
    entry = PyDict_GetItemWithError(kept, key);
    if (entry != NULL) {
        Py_DECREF(key);
        return Py_NewRef(entry);
    }
    entry = PyErr_Occurred() ? NULL : afn_dir_entry(src, ref, flags);
    r = entry != NULL ? PyDict_SetItem(kept, key, entry) : -1;
    Py_DECREF(key);
    if (r < 0)
        Py_CLEAR(entry);
    return entry;
}

/* The directory entry of record `ref` (borrowed: dirs or by_record holds
 * it), made the first time a directory is seen in the batch (or taken from
 * `kept`, see afn_kept_entry): by `idx`, its number from the C walk
 * (AFN_NONE: not numbered), else by the record's bytes. */
static PyObject *afn_ref_entry(const unsigned char *src, const struct afn_fidref *ref,
                               uint32_t idx, PyObject *dirs, PyObject *by_record,
                               PyObject *kept, unsigned flags)
{
    PyObject *entry, *key;

    if (idx < AFN_MAX_DIRS) {
        /* dir_path may have changed the list: index it checked. */
        if ((Py_ssize_t)idx < PyList_GET_SIZE(dirs)
            && (entry = PyList_GET_ITEM(dirs, idx)) != Py_None)
            return entry;
        if (PyList_GetItem(dirs, idx) == NULL)
            return NULL;
        entry = afn_kept_entry(src, ref, kept, NULL, flags);
        if (entry == NULL || PyList_SetItem(dirs, idx, entry) < 0)
            return NULL;
        return entry;
    }
    /* Past the numbered ones: keyed by the record's bytes. */
    key = PyBytes_FromStringAndSize((const char *)src + ref->rec,
                                    (Py_ssize_t)(AFN_FID_FIXED + ref->handle_len));
    if (key == NULL)
        return NULL;
    entry = PyDict_GetItemWithError(by_record, key);
    if (entry == NULL && !PyErr_Occurred()) {
        entry = afn_kept_entry(src, ref, kept, key, flags);
        if (entry != NULL) {
            int r = PyDict_SetItem(by_record, key, entry);
            Py_DECREF(entry); /* the dict holds it */
            if (r < 0)
                entry = NULL;
        }
    }
    Py_DECREF(key);
    return entry;
}

/* A checked entry of afn_ref_entry, held (a new reference), or NULL. */
static PyObject *afn_held_entry(const unsigned char *src, const struct afn_fidref *ref,
                                uint32_t idx, PyObject *dirs, PyObject *by_record,
                                PyObject *kept, unsigned flags)
{
    PyObject *e = afn_ref_entry(src, ref, idx, dirs, by_record, kept, flags);
    if (e == NULL)
        return NULL;
    if (!PyList_CheckExact(e) || PyList_GET_SIZE(e) != AFN_ENTRY_LEN) {
        PyErr_SetString(PyExc_TypeError, "_build: a malformed directory entry");
        return NULL;
    }
    return Py_NewRef(e);
}

/* The path of an entry's directory (borrowed: Py_None or a str), asking
 * dir_path the first time (a None answer is asked again); NULL on error. */
static PyObject *afn_entry_dir(PyObject *entry, PyObject *dir_path)
{
    PyObject *d = PyList_GET_ITEM(entry, 1);

    if (d != Py_None)
        return d;
    d = PyObject_CallOneArg(dir_path, PyList_GET_ITEM(entry, 0));
    if (d == NULL)
        return NULL;
    if (PyList_GET_SIZE(entry) != AFN_ENTRY_LEN) {
        PyErr_SetString(PyExc_RuntimeError, "_build: dir_path changed a directory entry");
        Py_DECREF(d);
        return NULL;
    }
    /* Steals d; the entry (held) keeps it alive. */
    PyList_SetItem(entry, 1, d);
    if (d != Py_None) {
        PyObject *slash;
        if (!PyUnicode_Check(d)) {
            PyErr_Format(PyExc_TypeError, "dir_path returned %.100s, not str or None",
                         Py_TYPE(d)->tp_name);
            return NULL;
        }
        if (PyUnicode_GET_LENGTH(d) == 1 && PyUnicode_READ_CHAR(d, 0) == '/')
            slash = Py_NewRef(d);
        else
            slash = PyUnicode_FromFormat("%U/", d);
        if (slash == NULL)
            return NULL;
        PyList_SetItem(entry, 2, slash);
    }
    return d;
}

/* directory/name as afanotify._dirmap.join (a new reference): `d` is the
 * entry's directory path (a str), "." or no name the directory itself. */
static PyObject *afn_entry_join(PyObject *entry, PyObject *d, PyObject *name)
{
    if (name == NULL || PyUnicode_GET_LENGTH(name) == 0
        || (PyUnicode_GET_LENGTH(name) == 1 && PyUnicode_READ_CHAR(name, 0) == '.'))
        return Py_NewRef(d);
    return afn_concat(PyList_GET_ITEM(entry, 2), name);
}

/* Fill v[DIR_PATH], v[PATH] and v[PATH_RESOLVED] of an FID-shape event from
 * its directory entry (held by the caller), asking dir_path the first time. */
static int afn_join_path(PyObject **v, unsigned *present, PyObject *entry, PyObject *dir_path)
{
    /* A known directory's path without a call (the common case). */
    PyObject *d = PyList_GET_ITEM(entry, 1), *name = v[AFN_F_NAME];

    if (d == Py_None)
        d = afn_entry_dir(entry, dir_path);

    if (d == NULL)
        return -1;
    v[AFN_F_DIR_PATH] = Py_NewRef(d);
    *present |= 1u << AFN_F_DIR_PATH | 1u << AFN_F_PATH;
    if (d == Py_None) {
        /* The name alone, not resolved (path_resolved keeps its False). */
        v[AFN_F_PATH] = Py_NewRef(name != NULL ? name : Py_None);
        return 0;
    }
    if ((v[AFN_F_PATH] = afn_entry_join(entry, d, name)) == NULL)
        return -1;
    v[AFN_F_PATH_RESOLVED] = Py_NewRef(Py_True);
    *present |= 1u << AFN_F_PATH_RESOLVED;
    return 0;
}

/* old_path, new_path, path and path_resolved of a file renamed (FAN_RENAME
 * without ONDIR) from its two directory entries (held by the caller; NULL
 * for a record the event lacks), as the group's resolver sets them: each
 * side is directory/name, or the name alone when its directory has no path
 * (then not resolved); path is the new side's, or the old one's. */
static int afn_rename_paths(PyObject **v, unsigned *present, PyObject *old_entry,
                            PyObject *new_entry, PyObject *dir_path)
{
    PyObject *side[2] = {old_entry, new_entry};
    static const int name_f[2] = {AFN_F_OLD_NAME, AFN_F_NEW_NAME};
    static const int path_f[2] = {AFN_F_OLD_PATH, AFN_F_NEW_PATH};
    PyObject *path = NULL;
    int k, resolved = 1;

    for (k = 0; k < 2; k++) {
        PyObject *d, *name = v[name_f[k]];
        if (side[k] == NULL)
            continue;
        if ((d = afn_entry_dir(side[k], dir_path)) == NULL)
            return -1;
        if (d == Py_None) {
            resolved = 0;
            v[path_f[k]] = Py_NewRef(name != NULL ? name : Py_None);
        } else if ((v[path_f[k]] = afn_entry_join(side[k], d, name)) == NULL) {
            return -1;
        }
        *present |= 1u << path_f[k];
    }
    /* `new_path or old_path`: an empty or absent new side gives the old. */
    path = v[AFN_F_NEW_PATH];
    if (path == NULL || path == Py_None || PyUnicode_GET_LENGTH(path) == 0)
        path = v[AFN_F_OLD_PATH] != NULL ? v[AFN_F_OLD_PATH] : Py_None;
    v[AFN_F_PATH] = Py_NewRef(path);
    *present |= 1u << AFN_F_PATH;
    if (resolved) {
        v[AFN_F_PATH_RESOLVED] = Py_NewRef(Py_True);
        *present |= 1u << AFN_F_PATH_RESOLVED;
    }
    return 0;
}

/* `more` events of the entry's directory kept out as outside the tree
 * (watch_tree prunes busy ones, afanotify/_tree.py), counted up to
 * AFN_OUT_COUNT_MAX (small ints are cached: nothing is allocated).  An
 * entry counted from 0 is appended to `outside` (NULL: none), so the
 * caller finds the batch's counted entries without looking through all
 * AFN_MAX_DIRS numbered ones.  -1 on error. */
static int afn_count_out(PyObject *entry, long more, PyObject *outside)
{
    long n = PyLong_AsLong(PyList_GET_ITEM(entry, 4));
    PyObject *o;
    if (n < 0 || n >= AFN_OUT_COUNT_MAX)
        return PyErr_Occurred() ? -1 : 0;
    if (n == 0 && outside != NULL && PyList_Append(outside, entry) < 0)
        return -1;
    n = n + more < AFN_OUT_COUNT_MAX ? n + more : AFN_OUT_COUNT_MAX;
    if ((o = PyLong_FromLong(n)) == NULL)
        return -1;
    PyList_SetItem(entry, 4, o);
    return 0;
}

/* Ask dir_path for the entry's directory if it has no path yet (as
 * afn_join_path does), then the entry's tree decision against `tree`
 * (root, root's parent, root's last name, wanted event bits), cached in the
 * entry.  -1 with an exception set. */
static int afn_tree_decision(PyObject *entry, PyObject *dir_path, PyObject *tree)
{
    PyObject *d = PyList_GET_ITEM(entry, 1), *cached = PyList_GET_ITEM(entry, 3);
    PyObject *root = PyTuple_GET_ITEM(tree, 0);
    Py_ssize_t rlen, dlen;
    long r;

    if (cached != Py_None)
        return (int)PyLong_AsLong(cached);
    if (d == Py_None) {
        PyObject *v[AFN_F_COUNT];
        unsigned present = 0;
        int k;
        memset(v, 0, sizeof v);
        if (afn_join_path(v, &present, entry, dir_path) < 0)
            return -1;
        for (k = 0; k < AFN_F_COUNT; k++)
            Py_XDECREF(v[k]);
        d = PyList_GET_ITEM(entry, 1);
        if (d == Py_None)
            return AFN_T_UNKNOWN; /* asked again next time, as dir_path is */
    }
    rlen = PyUnicode_GET_LENGTH(root);
    dlen = PyUnicode_GET_LENGTH(d);
    if (PyUnicode_Tailmatch(d, root, 0, rlen, -1) == 1
        && (dlen == rlen || (rlen == 1) || PyUnicode_READ_CHAR(d, rlen) == '/'))
        r = AFN_T_IN;
    else if (PyUnicode_Compare(d, PyTuple_GET_ITEM(tree, 1)) == 0)
        r = AFN_T_PARENT;
    else
        r = AFN_T_OUT;
    if (PyErr_Occurred())
        return -1;
    PyList_SetItem(entry, 3, PyLong_FromLong(r));
    return (int)r;
}

/*
 * Which events of a batch have a later MOVE_SELF or DELETE_SELF of the same
 * object (the same FID record) in the same read.  The kernel sends
 * DELETE_SELF once the object's last link is gone, and a handle never names
 * another object, so open_by_handle_at of it by the time the batch is read
 * can only fail or name it "(deleted)"; after a later MOVE_SELF it names the
 * place the object moved to, not the one it had at the earlier event.  The
 * group's lookup gives None for such an event, and is left out (in a burst
 * of renames and deletes, nearly every such lookup failed).
 *
 * The answer is worked out once per batch, by one backward pass from the
 * first entry that asks, and kept in the entries' `has` bits: the builder
 * is called again after every cut of a batch (AFN_B_STOP_AT_CUT), and a
 * table of the rest of the batch made per call cost time quadratic in the
 * batch.  afn_decode_at zeroes `has`, so a new batch starts unmarked.
 */
_Static_assert(!((AFN_HAS_SELF_SCANNED | AFN_HAS_LATER_SELF)
                 & (AFN_HAS_FID | AFN_HAS_DFID | AFN_HAS_NAME | AFN_HAS_OLD | AFN_HAS_NEW
                    | AFN_HAS_PIDFD | AFN_HAS_ERROR | AFN_HAS_RANGE | AFN_HAS_MNT
                    | AFN_HAS_UNKNOWN)),
               "the pass's bits are free");

static size_t afn_rec_hash(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    size_t k;
    for (k = 0; k < n; k++)
        h = (h ^ p[k]) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29));
}

/* Whether entry e is a good event with a FID record inside the batch (an
 * unknown record beside it does not matter: the pure parser's events, and
 * the group's Python pass, count such an event too). */
static int afn_has_fid_rec(const struct afn_event *e, uint64_t len)
{
    return e->status == 0 && (e->has & AFN_HAS_FID) && afn_ref_fits(&e->fid, len, 1, 0);
}

/* Mark out[from, count) (see above): 0, or -1 with MemoryError. */
static int afn_mark_later_selves(struct afn_event *out, Py_ssize_t from, Py_ssize_t count,
                                 const unsigned char *src, uint64_t len)
{
    Py_ssize_t j, n = 0;
    size_t cap = 8, mask, at;
    uint32_t *slot = NULL, k;

    for (j = from; j < count; j++)
        n += afn_has_fid_rec(&out[j], len)
             && (out[j].mask & (FAN_MOVE_SELF | FAN_DELETE_SELF)) != 0;
    if (n > 0) {
        while (cap < 2 * (size_t)n)
            cap <<= 1;
        slot = PyMem_Calloc(cap, sizeof *slot);
        if (slot == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    mask = cap - 1;
    /* slot: index + 1 of a MOVE_SELF/DELETE_SELF entry after the one at hand */
    for (j = count - 1; j >= from; j--) {
        struct afn_event *e = &out[j];
        size_t rl;

        e->has |= AFN_HAS_SELF_SCANNED;
        if (slot == NULL || !afn_has_fid_rec(e, len))
            continue;
        rl = AFN_FID_FIXED + e->fid.handle_len;
        at = afn_rec_hash(src + e->fid.rec, rl) & mask;
        while ((k = slot[at]) != 0) {
            const struct afn_fidref *o = &out[k - 1].fid;
            if (o->handle_len == e->fid.handle_len && !memcmp(src + o->rec, src + e->fid.rec, rl))
                break;
            at = (at + 1) & mask;
        }
        if (k != 0)
            e->has |= AFN_HAS_LATER_SELF;
        if (e->mask & (FAN_MOVE_SELF | FAN_DELETE_SELF))
            slot[at] = (uint32_t)j + 1; /* this one, or the same object's later one */
    }
    PyMem_Free(slot);
    return 0;
}

/* path and path_resolved of an event with a FID record alone, from
 * obj_path(handle, gone): gone when the event itself is a DELETE_SELF or a
 * later MOVE_SELF or DELETE_SELF of the batch names the same object (see
 * afn_mark_later_selves). */
static int afn_object_path(PyObject **v, unsigned *present, PyObject *obj_path, int gone)
{
    PyObject *argv[2] = {v[AFN_F_FID], gone ? Py_True : Py_False};
    PyObject *p = PyObject_Vectorcall(obj_path, argv, 2, NULL);
    if (p == NULL)
        return -1;
    if (p != Py_None && !PyUnicode_Check(p)) {
        PyErr_Format(PyExc_TypeError, "object_path returned %.100s, not str or None",
                     Py_TYPE(p)->tp_name);
        Py_DECREF(p);
        return -1;
    }
    v[AFN_F_PATH] = p;
    *present |= 1u << AFN_F_PATH;
    if (p != Py_None) {
        v[AFN_F_PATH_RESOLVED] = Py_NewRef(Py_True);
        *present |= 1u << AFN_F_PATH_RESOLVED;
    }
    return 0;
}

/*
 * Whether the object `path` names now is the one of the FID record `fid`:
 * name_to_handle_at(2) of the path (the last component not followed, as a
 * rename moves a symlink itself) gives the same handle type and bytes.  1
 * yes, 0 no (or the path names nothing now); -1 with an exception.
 *
 * The kernel queues a rename's FAN_RENAME, then the moved object's
 * MOVE_SELF (with a replaced target's ATTRIB in between), so a MOVE_SELF
 * right after a file's FAN_RENAME from the same process is, nearly always,
 * that file arriving at the rename's new path.  Nearly is not enough for a
 * path called resolved: this check makes it sure that the object is at that
 * path now, which is what the lookup by handle (open_by_handle_at, then
 * readlink of /proc/self/fd/N, then close) would have said, for a third of
 * its cost.  The handle bytes are compared on the path's filesystem as the
 * group's directory map does (_handle_at in _dirmap.py): a path under the
 * watched tree is on the filesystem the record came from.
 */
static int afn_is_at(PyObject *path, const unsigned char *src, const struct afn_fidref *fid)
{
    union {
        struct file_handle fh;
        unsigned char raw[sizeof(struct file_handle) + MAX_HANDLE_SZ];
    } u;
    PyObject *b;
    int mount_id, r;

    if (fid->handle_len > MAX_HANDLE_SZ)
        return 0;
    if (!PyUnicode_FSConverter(path, &b))
        return -1;
    u.fh.handle_bytes = MAX_HANDLE_SZ;
    Py_BEGIN_ALLOW_THREADS
    r = name_to_handle_at(AT_FDCWD, PyBytes_AS_STRING(b), &u.fh, &mount_id, 0);
    Py_END_ALLOW_THREADS
    Py_DECREF(b);
    return r == 0 && u.fh.handle_bytes == fid->handle_len
           && u.fh.handle_type == afn_s32(src + fid->rec + AFN_FH(handle_type))
           && !memcmp(u.fh.f_handle, src + fid->rec + AFN_FID_FIXED, fid->handle_len);
}

/*
 * _handle_path(mount_fd, handle, handle_type) -> str | None
 *
 * The current path of the object a file handle names, as _dirmap's
 * _open_path found it in Python: open_by_handle_at(O_PATH) on the mount,
 * readlink of /proc/self/fd/N (at most PATH_MAX bytes, as os.readlink
 * reads), close.  None when the handle names nothing now (ESTALE: the
 * object is gone), when any step fails, and for a path ending in
 * " (deleted)".  One call instead of three: in a burst of renames and
 * deletes, the MOVE_SELF of nearly every file is looked up, most of them
 * after the file is gone, and the Python calls and the OSError of each
 * failure cost more than the syscall.
 */
static PyObject *afn_handle_path(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const char deleted[] = " (deleted)";
    const size_t dlen = sizeof deleted - 1;
    union {
        struct file_handle fh;
        unsigned char raw[sizeof(struct file_handle) + MAX_HANDLE_SZ];
    } u;
    char link[32], buf[PATH_MAX];
    const char *data;
    Py_ssize_t hlen;
    long mount_fd, htype;
    int fd;
    ssize_t n = -1;

    (void)self;
    if (nargs != 3 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_handle_path(mount_fd, handle: bytes, handle_type)");
        return NULL;
    }
    mount_fd = PyLong_AsLong(args[0]);
    htype = PyLong_AsLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    data = PyBytes_AS_STRING(args[1]);
    hlen = PyBytes_GET_SIZE(args[1]);
    if (hlen > MAX_HANDLE_SZ || mount_fd < 0 || mount_fd > INT_MAX || htype < INT_MIN
        || htype > INT_MAX)
        Py_RETURN_NONE; /* no such handle can name anything */
    u.fh.handle_bytes = (unsigned int)hlen;
    u.fh.handle_type = (int)htype;
    memcpy(u.fh.f_handle, data, (size_t)hlen);
    /* Without the GIL: on a network or FUSE filesystem either call can
     * wait on a server (one in this process, even). */
    Py_BEGIN_ALLOW_THREADS
    fd = open_by_handle_at((int)mount_fd, &u.fh, O_PATH | O_CLOEXEC);
    if (fd >= 0) {
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        n = readlink(link, buf, sizeof buf);
        close(fd);
    }
    Py_END_ALLOW_THREADS
    if (fd < 0)
        Py_RETURN_NONE;
    if (n < 0 || ((size_t)n >= dlen && !memcmp(buf + n - dlen, deleted, dlen)))
        Py_RETURN_NONE;
    return PyUnicode_DecodeFSDefaultAndSize(buf, n);
}

/*
 * _build(out, start, count, src, arena, events, dirs, by_record, dir_path,
 *        skip_pids, flags, perm_mask, dir_change_mask[, tree[, obj_path[, kept[, outside]]]])
 *   -> (stop, filled, upto, skipped, stopped)
 *
 * Builds events for out[start:count] (struct afn_event entries, in the
 * buffer `out`) and appends them to the list `events`, until an entry it
 * leaves to Python (see the top of this file): `stop` is its index (count
 * when there was none).  `src` is the batch, `arena` the decoder's arena.
 *
 * With `dir_path` (a callable, or None), events of the plain FID+name shape
 * (fd FAN_NOFD, a DFID or DFID_NAME record, maybe a FID record, no others)
 * also get dir_path, path and path_resolved, from `dirs` (the batch's list
 * of AFN_MAX_DIRS directory entries by dir_idx, None until first seen) and
 * `by_record` (a dict of the entries of directories past those, by the bytes
 * of their records), except those whose pid is in `skip_pids`.  `filled`
 * counts the events that got paths so.  The first event with a directory
 * record of another shape, or that says a directory moved or went away (a
 * dir_change_mask bit with FAN_ONDIR), is the cut: it and every later event
 * are built without paths, and `upto` is its index in `events`; else -1.
 * (The caller resolves from there on, and passes dir_path=None after a cut.)
 *
 * Before the cut, two more shapes get their paths, and count in `filled`:
 * with AFN_B_RENAMES, a file renamed (OLD_DFID_NAME and NEW_DFID_NAME
 * records, maybe FID; not ONDIR) gets old_path, new_path, path and
 * path_resolved from its two directories' entries (asked of dir_path as
 * above); with `obj_path` (a callable, or None), an event with a FID record
 * and no directory record (MOVE_SELF, DELETE_SELF) gets path and
 * path_resolved from obj_path(handle, gone), see afn_object_path.
 *
 * `kept` (a dict, or None) holds the directory entries of earlier calls by
 * the bytes of their records: a directory first seen in this batch takes
 * its entry from there, and a new entry is put there (see afn_kept_entry).
 * `outside` (a list, or None) gets each entry whose count of events kept
 * out as outside the tree went up from 0 (see afn_count_out).
 */
static PyObject *afn_build(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer outb, srcb, arenab;
    Py_ssize_t start, count, i, filled = 0, upto = -1;
    PyObject *events, *dirs, *by_record, *dir_path, *skip_pids, *result = NULL, *held = NULL;
    PyObject *tree = NULL, *last_pid_obj = NULL, *last_mask_obj = NULL, *obj_path = NULL;
    PyObject *kept = NULL, *outside = NULL;
    PyObject *held_old = NULL, *held_new = NULL, *nofd_obj = NULL;
    /* The new path of the file the event before renamed (see afn_is_at). */
    PyObject *moved_to = NULL;
    Py_ssize_t moved_at = -1;
    int32_t moved_pid = 0;
    int32_t last_pid = 0;
    int last_skip = -1; /* last_pid_obj in skip_pids (-1: not asked yet) */
    uint64_t last_mask = 0;
    Py_ssize_t skipped = 0;
    /* Events kept out as outside the tree, by numbered directory: only
     * nout[:nout_n] is set (zeroed as it grows), as clearing all of it at
     * every call (1 KiB with AFN_MAX_DIRS 512) would cost each read. */
    uint16_t nout[AFN_MAX_DIRS];
    uint32_t nout_n = 0, k;
    int stopped = 0; /* left at a cut with AFN_B_STOP_AT_CUT */
    uint64_t want = 0;
    PyObject *v[AFN_F_COUNT];
    unsigned long flags;
    uint64_t perm, dir_change;
    const struct afn_event *out;
    const unsigned char *src;
    const char *arena;
    const size_t dlen = sizeof afn_deleted - 1;
    /* The plain FID+name shape: a pidfd record (FAN_REPORT_PIDFD) changes
     * nothing about the event's paths, so it keeps the shape (without it,
     * every event of a pidfd group was a cut, and none got its path here). */
    const unsigned fid_shape = AFN_HAS_FID | AFN_HAS_DFID | AFN_HAS_NAME | AFN_HAS_PIDFD;
    /* A file renamed: FAN_RENAME's two directory records, maybe a FID one. */
    const unsigned rename_shape = AFN_HAS_FID | AFN_HAS_OLD | AFN_HAS_NEW | AFN_HAS_PIDFD;

    (void)self;
    memset(v, 0, sizeof v);
    if (afn_b.event_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_build before _builder_setup");
        return NULL;
    }
    if (nargs < 13 || nargs > 17 || !PyList_CheckExact(args[5]) || !PyList_CheckExact(args[6])
        || PyList_GET_SIZE(args[6]) != AFN_MAX_DIRS || !PyDict_CheckExact(args[7])) {
        PyErr_SetString(PyExc_TypeError, "_build(out, start, count, src, arena, events, dirs, "
                                         "by_record, dir_path, skip_pids, flags, perm_mask, "
                                         "dir_change_mask[, tree[, obj_path[, kept[, outside]]]])");
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
    if (nargs == 17 && args[16] != Py_None) {
        if (!PyList_CheckExact(args[16])) {
            PyErr_SetString(PyExc_TypeError, "_build: outside must be a list or None");
            return NULL;
        }
        outside = args[16];
    }
    if (nargs >= 16 && args[15] != Py_None) {
        if (!PyDict_CheckExact(args[15])) {
            PyErr_SetString(PyExc_TypeError, "_build: kept must be a dict or None");
            return NULL;
        }
        kept = args[15];
    }
    if (nargs >= 15 && args[14] != Py_None) {
        if (!PyCallable_Check(args[14])) {
            PyErr_SetString(PyExc_TypeError, "_build: obj_path must be callable or None");
            return NULL;
        }
        obj_path = args[14];
    }
    if (nargs >= 14 && args[13] != Py_None) {
        tree = args[13];
        if (!PyTuple_CheckExact(tree) || PyTuple_GET_SIZE(tree) != 4
            || !PyUnicode_Check(PyTuple_GET_ITEM(tree, 0))
            || !PyUnicode_Check(PyTuple_GET_ITEM(tree, 1))
            || !PyUnicode_Check(PyTuple_GET_ITEM(tree, 2))) {
            PyErr_SetString(PyExc_TypeError, "_build: tree is (root, parent, name, events)");
            return NULL;
        }
        want = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(tree, 3));
        if (PyErr_Occurred())
            return NULL;
    }
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

/* Set field f of the event being built to a new reference, or fail. */
#define AFN_SET(f, expr)                                                                   \
    do {                                                                                   \
        if ((v[f] = (expr)) == NULL)                                                       \
            goto done;                                                                     \
        present |= 1u << (f);                                                              \
    } while (0)

    for (i = start; i < count; i++) {
        const struct afn_event *ev = &out[i];
        const unsigned has = ev->has & ~AFN_HAS_PASS_BITS;
        const int32_t fd = ev->fd;
        const int resolve = (flags & AFN_B_RESOLVE) != 0, is_perm = (ev->mask & perm) != 0;
        int fid_group, renamed;
        unsigned present = 0; /* the fields set in v */
        int stop_here = 0;
        long owns = 0;
        PyObject *o, *entry = NULL;

        if (ev->status || (has & AFN_HAS_UNKNOWN)
            || (resolve && fd >= 0 && ev->path_len == AFN_PATH_RETRY))
            break; /* left to Python */
        if (has && !afn_fits(ev, &srcb)) {
            PyErr_SetString(PyExc_ValueError, "_build: a record outside the batch");
            goto done;
        }
        fid_group = fd == FAN_NOFD && has && !resolve && !(has & ~fid_shape);
        if (dir_path != NULL && !fid_group
            && !(!has && (!resolve || (fd >= 0 && ev->path_len >= 0)))
            && ((has & AFN_HAS_DFID) || ((ev->mask & dir_change) && (ev->mask & FAN_ONDIR)))) {
            /* A directory event of another shape (a PIDFD record, say), or a
             * directory moved: the cut (see above). */
            dir_path = NULL;
            upto = PyList_GET_SIZE(events);
        }
        renamed = dir_path != NULL && (flags & AFN_B_RENAMES) && fd == FAN_NOFD && !resolve
                  && (has & (AFN_HAS_OLD | AFN_HAS_NEW)) && !(has & ~rename_shape)
                  && !(ev->mask & FAN_ONDIR);

        if (tree != NULL && fid_group && dir_path != NULL && (has & AFN_HAS_DFID)
            && !((ev->mask & dir_change) && (ev->mask & FAN_ONDIR))) {
            /* watch_tree: an event outside the root, or of no wanted kind
             * (the group marks moves for its map), is not built at all. */
            /* Held: dir_path runs Python code, which may change dirs. */
            PyObject *e = afn_held_entry(src, &ev->dfid, ev->dir_idx, dirs, by_record, kept,
                                         (unsigned)flags);
            int t;
            if (e == NULL)
                goto done;
            t = afn_tree_decision(e, dir_path, tree);
            if (t < 0) {
                Py_DECREF(e);
                goto done;
            }
            if (!(ev->mask & want & ~(uint64_t)FAN_ONDIR)
                || ((ev->mask & FAN_ONDIR) && !(want & FAN_ONDIR))
                || t == AFN_T_OUT
                || (t == AFN_T_PARENT && !afn_name_is(src, &ev->dfid, PyTuple_GET_ITEM(tree, 2)))) {
                int failed = 0;
                if (t == AFN_T_OUT) {
                    /* Numbered directories are counted here and added to
                     * their entries once, after the loop. */
                    if (ev->dir_idx < AFN_MAX_DIRS) {
                        if (ev->dir_idx >= nout_n) {
                            memset(nout + nout_n, 0, (ev->dir_idx + 1 - nout_n) * sizeof *nout);
                            nout_n = ev->dir_idx + 1;
                        }
                        if (nout[ev->dir_idx] < UINT16_MAX)
                            nout[ev->dir_idx]++;
                    } else {
                        failed = afn_count_out(e, 1, outside) < 0;
                    }
                }
                Py_DECREF(e);
                if (failed)
                    goto done; /* as for an error above: the pidfd is left as it is */
                /* Not built, so nobody else would close the event's pidfd
                 * (a FID group's events carry no fd). */
                if ((has & AFN_HAS_PIDFD) && ev->pidfd >= 0 && (flags & AFN_B_OWNED))
                    close(ev->pidfd);
                skipped++;
                continue;
            }
            Py_DECREF(e);
        }
        /* A burst repeats the same process and mask: one int object each
         * while they stay the same (ints are immutable). */
        if (last_pid_obj == NULL || ev->pid != last_pid) {
            Py_XDECREF(last_pid_obj);
            last_pid = ev->pid;
            last_skip = -1;
            if ((last_pid_obj = PyLong_FromLong(ev->pid)) == NULL)
                goto done;
        }
        if (last_mask_obj == NULL || ev->mask != last_mask) {
            Py_XDECREF(last_mask_obj);
            last_mask = ev->mask;
            if ((last_mask_obj = PyLong_FromUnsignedLongLong(ev->mask)) == NULL)
                goto done;
        }
        AFN_SET(AFN_F_PID, Py_NewRef(last_pid_obj));
        AFN_SET(AFN_F_EV_TYPES, Py_NewRef(last_mask_obj));
        if (flags & AFN_B_PID_IS_TID)
            AFN_SET(AFN_F_PID_IS_TID, Py_NewRef(Py_True));
        if (fd >= 0) {
            if (flags & AFN_B_OWNED)
                owns |= is_perm ? afn_b.own_fd | afn_b.unanswered : afn_b.own_fd;
            AFN_SET(AFN_F_FD, PyLong_FromLong(fd));
        } else if ((flags & AFN_B_FD_ERROR) && fd != FAN_NOFD) {
            /* FAN_REPORT_FD_ERROR: the fd is -errno. */
            AFN_SET(AFN_F_FD_ERROR, PyLong_FromLongLong(-(long long)fd));
            AFN_SET(AFN_F_FD, PyLong_FromLong(FAN_NOFD));
        } else if (fd == FAN_NOFD) {
            /* Every event of a FID group: one int object for the batch. */
            if (nofd_obj == NULL && (nofd_obj = PyLong_FromLong(FAN_NOFD)) == NULL)
                goto done;
            AFN_SET(AFN_F_FD, Py_NewRef(nofd_obj));
        } else {
            AFN_SET(AFN_F_FD, PyLong_FromLong(fd));
        }
        if (has) {
            if (has & AFN_HAS_FID)
                AFN_SET(AFN_F_FID, afn_new_handle(src, ev->fid.rec, ev->fid.handle_len,
                                                  (unsigned)flags));
            if (has & AFN_HAS_DFID) {
                if (fid_group) {
                    /* One FileHandle per distinct directory of the batch, so
                     * that equal handles are the same object (the group's
                     * resolver relies on that). */
                    /* Held for this event: dir_path and skip_pids run Python code. */
                    entry = held = afn_held_entry(src, &ev->dfid, ev->dir_idx, dirs, by_record,
                                                  kept, (unsigned)flags);
                    if (entry == NULL)
                        goto done;
                    AFN_SET(AFN_F_DFID, Py_NewRef(PyList_GET_ITEM(entry, 0)));
                } else {
                    AFN_SET(AFN_F_DFID, afn_new_handle(src, ev->dfid.rec, ev->dfid.handle_len,
                                                       (unsigned)flags));
                }
            }
            if (has & AFN_HAS_NAME)
                AFN_SET(AFN_F_NAME, afn_name(src, &ev->dfid));
            if (has & AFN_HAS_OLD) {
                if (renamed) {
                    /* Held for this event, as `held` above. */
                    held_old = afn_held_entry(src, &ev->old, AFN_NONE, dirs, by_record,
                                              kept, (unsigned)flags);
                    if (held_old == NULL)
                        goto done;
                    AFN_SET(AFN_F_OLD_DFID, Py_NewRef(PyList_GET_ITEM(held_old, 0)));
                } else {
                    AFN_SET(AFN_F_OLD_DFID, afn_new_handle(src, ev->old.rec, ev->old.handle_len,
                                                           (unsigned)flags));
                }
                AFN_SET(AFN_F_OLD_NAME, afn_name(src, &ev->old));
            }
            if (has & AFN_HAS_NEW) {
                if (renamed) {
                    held_new = afn_held_entry(src, &ev->new, AFN_NONE, dirs, by_record,
                                              kept, (unsigned)flags);
                    if (held_new == NULL)
                        goto done;
                    AFN_SET(AFN_F_NEW_DFID, Py_NewRef(PyList_GET_ITEM(held_new, 0)));
                } else {
                    AFN_SET(AFN_F_NEW_DFID, afn_new_handle(src, ev->new.rec, ev->new.handle_len,
                                                           (unsigned)flags));
                }
                AFN_SET(AFN_F_NEW_NAME, afn_name(src, &ev->new));
            }
            if (has & AFN_HAS_PIDFD) {
                /* Ownership follows the pidfd the event ends up holding (the
                 * walk keeps the last record's). */
                AFN_SET(AFN_F_PIDFD, PyLong_FromLong(ev->pidfd));
                if (ev->pidfd >= 0 && (flags & AFN_B_OWNED))
                    owns |= afn_b.own_pidfd;
            }
            if (has & AFN_HAS_ERROR) {
                AFN_SET(AFN_F_ERROR, PyLong_FromLong(ev->error));
                AFN_SET(AFN_F_ERROR_COUNT, PyLong_FromUnsignedLong(ev->error_count));
            }
            if (has & AFN_HAS_RANGE) {
                AFN_SET(AFN_F_RANGE_OFFSET, PyLong_FromUnsignedLongLong(ev->range_offset));
                AFN_SET(AFN_F_RANGE_COUNT, PyLong_FromUnsignedLongLong(ev->range_count));
            }
            if (has & AFN_HAS_MNT)
                AFN_SET(AFN_F_MNT_ID, PyLong_FromUnsignedLongLong(ev->mnt_id));
        }
        if (resolve && fd >= 0 && ev->path_len >= 0) {
            /* The path read by the C walk; a failed readlink leaves path
             * None and path_resolved False, the defaults. */
            size_t plen = (size_t)ev->path_len;
            int ok = 1;
            if ((uint64_t)ev->path_off + plen > (uint64_t)arenab.len) {
                PyErr_SetString(PyExc_ValueError, "_build: a path outside the arena");
                goto done;
            }
            if (plen >= dlen && !memcmp(arena + ev->path_off + plen - dlen, afn_deleted, dlen)) {
                plen -= dlen;
                ok = 0;
            }
            AFN_SET(AFN_F_PATH,
                    PyUnicode_DecodeFSDefaultAndSize(arena + ev->path_off, (Py_ssize_t)plen));
            if (ok)
                AFN_SET(AFN_F_PATH_RESOLVED, Py_NewRef(Py_True));
        }
        if (owns)
            AFN_SET(AFN_F_OWNS, PyLong_FromLong(owns));
        if (fid_group && dir_path != NULL) {
            if ((ev->mask & dir_change) && (ev->mask & FAN_ONDIR)) {
                /* Cached directory paths may be stale from here on.  With
                 * AFN_B_STOP_AT_CUT (a batch without moves) the caller
                 * updates its map with this event and calls again. */
                upto = PyList_GET_SIZE(events);
                if (flags & AFN_B_STOP_AT_CUT)
                    stop_here = 1;
                else
                    dir_path = NULL;
            } else if (entry != NULL || (obj_path != NULL && (has & AFN_HAS_FID))) {
                /* Asked once per run of the same pid. */
                if (last_skip < 0 && (last_skip = PySequence_Contains(skip_pids, last_pid_obj)) < 0)
                    goto done;
                if (!last_skip && entry != NULL) {
                    if (afn_join_path(v, &present, entry, dir_path) < 0)
                        goto done;
                    filled++;
                } else if (!last_skip) {
                    int gone = (ev->mask & FAN_DELETE_SELF) != 0, at = 0;
                    if (!gone && !(ev->has & AFN_HAS_SELF_SCANNED)
                        && afn_mark_later_selves((struct afn_event *)out, i, count, src,
                                                 (uint64_t)srcb.len) < 0)
                        goto done;
                    if (!gone)
                        gone = (ev->has & AFN_HAS_LATER_SELF) != 0;
                    /* A file's MOVE_SELF right after its rename: see afn_is_at. */
                    if (!gone && moved_to != NULL && moved_at == i - 1 && moved_pid == ev->pid
                        && ev->mask == FAN_MOVE_SELF && (has & ~AFN_HAS_PIDFD) == AFN_HAS_FID
                        && (at = afn_is_at(moved_to, src, &ev->fid)) != 0) {
                        if (at < 0)
                            goto done;
                        AFN_SET(AFN_F_PATH, Py_NewRef(moved_to));
                        AFN_SET(AFN_F_PATH_RESOLVED, Py_NewRef(Py_True));
                    } else if (afn_object_path(v, &present, obj_path, gone) < 0) {
                        goto done;
                    }
                    filled++;
                }
            }
        } else if (renamed) {
            if (last_skip < 0 && (last_skip = PySequence_Contains(skip_pids, last_pid_obj)) < 0)
                goto done;
            if (!last_skip) {
                PyObject *np;
                if (afn_rename_paths(v, &present, held_old, held_new, dir_path) < 0)
                    goto done;
                filled++;
                np = v[AFN_F_NEW_PATH];
                if (v[AFN_F_PATH_RESOLVED] != NULL && np != NULL && PyUnicode_Check(np)
                    && PyUnicode_GET_LENGTH(np) > 0) {
                    Py_XSETREF(moved_to, Py_NewRef(np));
                    moved_at = i;
                    moved_pid = ev->pid;
                }
            }
        }
        Py_CLEAR(held);
        Py_CLEAR(held_old);
        Py_CLEAR(held_new);
        /* An event holds ints, strs, bools and file handles: no cycle, so
         * the collector need not scan it.  A permission event is left
         * tracked: the pipeline gives it its responder (the group's
         * permission tracker, which holds the event while it is pending: a
         * cycle) once it is read. */
        o = afn_make_event(v, present, !(flags & AFN_B_UNTRACK) || is_perm);
        if (o == NULL || afn_append(events, o) < 0)
            goto done;
        if (stop_here) {
            stopped = 1;
            i++;
            break;
        }
    }
#undef AFN_SET
    for (k = 0; k < nout_n; k++) {
        if (nout[k] && afn_count_out(PyList_GET_ITEM(dirs, k), nout[k], outside) < 0)
            goto done;
    }
    result = Py_BuildValue("(nnnni)", i, filled, upto, skipped, stopped);
done:
    for (i = 0; i < AFN_F_COUNT; i++)
        Py_XDECREF(v[i]);
    Py_XDECREF(held);
    Py_XDECREF(held_old);
    Py_XDECREF(held_new);
    Py_XDECREF(last_pid_obj);
    Py_XDECREF(last_mask_obj);
    Py_XDECREF(nofd_obj);
    Py_XDECREF(moved_to);
    afn_building--;
    PyBuffer_Release(&arenab);
    PyBuffer_Release(&srcb);
    PyBuffer_Release(&outb);
    return result;
}

/* `async for` over a group's queue: afanotify/csrc/fastpath_iter.c. */
static PyObject *afn_events_iter(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

static PyMethodDef afn_builder_methods[] = {
    {"_builder_setup", (PyCFunction)(void (*)(void))afn_builder_setup, METH_FASTCALL,
     "_builder_setup(event_type, handle_type, slots, defaults, handle_slots, own_fd, "
     "own_pidfd, unanswered)"},
    {"_build", (PyCFunction)(void (*)(void))afn_build, METH_FASTCALL,
     "_build(out, start, count, src, arena, events, dirs, by_record, dir_path, skip_pids, flags, "
     "perm_mask, dir_change_mask[, tree[, obj_path[, kept[, outside]]]]) -> (stop, filled, upto, "
     "skipped, stopped)"},
    {"_handle_path", (PyCFunction)(void (*)(void))afn_handle_path, METH_FASTCALL,
     "_handle_path(mount_fd, handle, handle_type) -> str | None"},
    {"_events_iter", (PyCFunction)(void (*)(void))afn_events_iter, METH_FASTCALL,
     "_events_iter(group, queue, items, reader, slow) -> EventIterator"},
    {NULL, NULL, 0, NULL},
};

/* Add _builder_setup, _build and _events_iter to afanotify._fanotify: cffi has no way to
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
