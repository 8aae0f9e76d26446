/*
 * The line formatter of `afanotify watch`: one batch of FanotifyData in,
 * one bytes buffer of lines out, the same bytes as the Python formatter
 * (afanotify/_cli_output.py) writes; tests/test_cli_format_differential.py
 * holds the two to each other.
 *
 * The parts that repeat are made in Python once and handed in as str:
 * the batch's timestamp, the parts of a line that depend on the mask alone
 * (cached by mask in a dict the caller keeps), and the JSON `process` part
 * (cached by pid for the call).  What is left per event is done here:
 * reading the event's attributes (by name, through the class's descriptors,
 * so the class may change how it stores them), the dirname and basename of
 * a path, JSON string escaping (json's ensure_ascii form), the text
 * format's padding, and UTF-8 with surrogateescape (what the sink wrote
 * the Python lines with).  A name with lone surrogates (bytes that were
 * not UTF-8) goes through the Python `clean` the JSON lines document.
 *
 * aff_install_formatter (called through cffi) adds `_format_batch` to this
 * module, as fastpath_build.c adds the event builder.
 */

#include <structmember.h>
#if PY_VERSION_HEX < 0x030C0000
#define AFF_T_OBJECT_EX T_OBJECT_EX
#else
#define AFF_T_OBJECT_EX Py_T_OBJECT_EX
#endif

/* The attributes read, by name. */
enum {
    AFF_A_EV_TYPES, AFF_A_PID, AFF_A_PATH, AFF_A_DIR_PATH, AFF_A_NAME, AFF_A_PATH_RESOLVED,
    AFF_A_OLD_PATH, AFF_A_NEW_PATH, AFF_A_EXE, AFF_A_CWD, AFF_A_COUNT
};
static const char *const aff_attr_names[AFF_A_COUNT] = {
    "ev_types", "pid", "path", "dir_path", "name", "path_resolved", "old_path", "new_path",
    "exe", "cwd",
};
static PyObject *aff_attrs[AFF_A_COUNT];
static PyObject *aff_zero, *aff_conv_r, *aff_conv_a;

/* The --format fields, in the order of _cli_output.FORMAT_FIELDS (checked
 * by the caller through _format_fields()). */
enum {
    AFF_T_TIME, AFF_T_PID, AFF_T_COMM, AFF_T_EXE, AFF_T_CWD, AFF_T_EVENTS, AFF_T_ACTIONS,
    AFF_T_TYPE, AFF_T_PATH, AFF_T_DIR, AFF_T_NAME, AFF_T_OLD_PATH, AFF_T_NEW_PATH,
    AFF_T_RESOLVED, AFF_T_COUNT
};
static const char *const aff_field_names[AFF_T_COUNT] = {
    "time", "pid", "comm", "exe", "cwd", "events", "actions", "type", "path", "dir", "name",
    "old_path", "new_path", "resolved",
};

#define AFF_MODE_JSON 0
#define AFF_MODE_TEXT 1
#define AFF_MODE_TEMPLATE 2

#define AFF_Q_OVERFLOW 0x00004000ULL
#define AFF_ONDIR 0x40000000ULL

struct aff_buf {
    char *p;
    size_t len, cap;
};

static int aff_reserve(struct aff_buf *b, size_t more)
{
    size_t cap;
    char *p;

    if (b->cap - b->len >= more)
        return 0;
    cap = b->cap ? b->cap : 65536;
    while (cap - b->len < more) {
        if (cap > ((size_t)PY_SSIZE_T_MAX) / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    p = realloc(b->p, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int aff_put(struct aff_buf *b, const char *s, size_t n)
{
    if (aff_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

#define AFF_PUTS(b, lit) aff_put((b), (lit), sizeof(lit) - 1)

static int aff_spaces(struct aff_buf *b, Py_ssize_t n)
{
    if (n <= 0)
        return 0;
    if (aff_reserve(b, (size_t)n) < 0)
        return -1;
    memset(b->p + b->len, ' ', (size_t)n);
    b->len += (size_t)n;
    return 0;
}

static int aff_need_str(PyObject *s)
{
    if (PyUnicode_Check(s))
        return 0;
    PyErr_Format(PyExc_TypeError, "an event field must be str or None, not %.80s",
                 Py_TYPE(s)->tp_name);
    return -1;
}

/* s[start:end] as UTF-8 with surrogateescape (a lone surrogate \udcNN is
 * the byte NN, as the sink encoded the Python lines). */
static int aff_put_text(struct aff_buf *b, PyObject *s, Py_ssize_t start, Py_ssize_t end)
{
    PyObject *sub, *enc;
    int rc;

    if (aff_need_str(s) < 0)
        return -1;
    if (end <= start)
        return 0;
    if (PyUnicode_IS_ASCII(s))
        return aff_put(b, (const char *)PyUnicode_DATA(s) + start, (size_t)(end - start));
    sub = PyUnicode_Substring(s, start, end);
    if (sub == NULL)
        return -1;
    enc = PyUnicode_AsEncodedString(sub, "utf-8", "surrogateescape");
    Py_DECREF(sub);
    if (enc == NULL)
        return -1;
    rc = aff_put(b, PyBytes_AS_STRING(enc), (size_t)PyBytes_GET_SIZE(enc));
    Py_DECREF(enc);
    return rc;
}

static int aff_put_all(struct aff_buf *b, PyObject *s)
{
    if (aff_need_str(s) < 0)
        return -1;
    return aff_put_text(b, s, 0, PyUnicode_GET_LENGTH(s));
}

static const char aff_hex[] = "0123456789abcdef";

static char *aff_u4(char *o, Py_UCS4 c)
{
    o[0] = '\\';
    o[1] = 'u';
    o[2] = aff_hex[(c >> 12) & 15];
    o[3] = aff_hex[(c >> 8) & 15];
    o[4] = aff_hex[(c >> 4) & 15];
    o[5] = aff_hex[c & 15];
    return o + 6;
}

/* s[start:end] as json.encoder.encode_basestring_ascii writes it: quoted,
 * with \" \\ \n \r \t \b \f, every other character outside ' '..'~' as
 * \uXXXX (a surrogate pair past the BMP).  Room for the worst case (12
 * bytes a character) is made once. */
static int aff_put_escaped(struct aff_buf *b, PyObject *s, Py_ssize_t start, Py_ssize_t end)
{
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t i;
    char *o;

    if (end < start)
        end = start;
    if ((size_t)(end - start) > (((size_t)PY_SSIZE_T_MAX) - 2) / 12) {
        PyErr_NoMemory();
        return -1;
    }
    if (aff_reserve(b, 12 * (size_t)(end - start) + 2) < 0)
        return -1;
    o = b->p + b->len;
    *o++ = '"';
    for (i = start; i < end; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);

        if (c >= ' ' && c <= '~' && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            o--;
            if (c >= 0x10000) {
                Py_UCS4 v = c - 0x10000;
                o = aff_u4(o, 0xd800 | (v >> 10));
                o = aff_u4(o, 0xdc00 | (v & 0x3ff));
            } else {
                o = aff_u4(o, c);
            }
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return 0;
}

/* _cli_output._js(s[start:end]): null for None; a name with lone
 * surrogates through `clean` first. */
static int aff_put_js(struct aff_buf *b, PyObject *s, Py_ssize_t start, Py_ssize_t end,
                      PyObject *clean)
{
    PyObject *sub, *fixed;
    Py_ssize_t i;
    int kind, rc, lone = 0;
    const void *data;

    if (s == Py_None)
        return AFF_PUTS(b, "null");
    if (aff_need_str(s) < 0)
        return -1;
    if (!PyUnicode_IS_ASCII(s)) {
        kind = PyUnicode_KIND(s);
        data = PyUnicode_DATA(s);
        if (kind != PyUnicode_1BYTE_KIND) {
            for (i = start; i < end && !lone; i++) {
                Py_UCS4 c = PyUnicode_READ(kind, data, i);
                lone = c >= 0xd800 && c <= 0xdfff;
            }
        }
        if (lone) {
            sub = PyUnicode_Substring(s, start, end);
            if (sub == NULL)
                return -1;
            fixed = PyObject_CallOneArg(clean, sub);
            Py_DECREF(sub);
            if (fixed == NULL)
                return -1;
            rc = aff_need_str(fixed) < 0 ? -1
                 : aff_put_escaped(b, fixed, 0, PyUnicode_GET_LENGTH(fixed));
            Py_DECREF(fixed);
            return rc;
        }
    }
    return aff_put_escaped(b, s, start, end);
}

/* Where posixpath.dirname and basename split `s`: the basename starts at
 * *cut, the dirname ends at *head_end. */
static void aff_split(PyObject *s, Py_ssize_t *cut, Py_ssize_t *head_end)
{
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t i = PyUnicode_GET_LENGTH(s), j;

    while (i > 0 && PyUnicode_READ(kind, data, i - 1) != '/')
        i--;
    *cut = i;
    j = i;
    while (j > 0 && PyUnicode_READ(kind, data, j - 1) == '/')
        j--;
    /* A head of slashes only stays as it is. */
    *head_end = j == 0 ? i : j;
}

static int aff_truthy(PyObject *o)
{
    return o == Py_None ? 0 : o == Py_True ? 1 : o == Py_False ? 0 : PyObject_IsTrue(o);
}

/* The mask's parts (a tuple of str), from `masks` or made by `mask_parts`. */
static PyObject *aff_mask_parts(PyObject *mask, PyObject *masks, PyObject *mask_parts,
                                Py_ssize_t need)
{
    PyObject *parts = PyDict_GetItemWithError(masks, mask);

    if (parts != NULL)
        return parts; /* borrowed */
    if (PyErr_Occurred())
        return NULL;
    parts = PyObject_CallOneArg(mask_parts, mask);
    if (parts == NULL)
        return NULL;
    if (!PyTuple_Check(parts) || PyTuple_GET_SIZE(parts) < need) {
        Py_DECREF(parts);
        PyErr_SetString(PyExc_TypeError, "mask_parts must return a tuple of str");
        return NULL;
    }
    if (PyDict_SetItem(masks, mask, parts) < 0) {
        Py_DECREF(parts);
        return NULL;
    }
    Py_DECREF(parts);
    return PyDict_GetItemWithError(masks, mask); /* borrowed, held by masks */
}

/* The event's attributes (new references in v), NULL-free. */
/* Where the first event class read keeps each attribute: the offset of its
 * slot when the class's attribute is a plain slot (a member descriptor of an
 * object slot, found through the MRO, on a class with the generic
 * getattr), else -1: read by name.  Worked out once per call of
 * _format_batch, for the class of its first event; events of any other
 * class are read by name.  A slot is read as the descriptor would read it:
 * the object there, or, when the slot is empty, by name (which raises the
 * AttributeError). */
struct aff_slots {
    PyTypeObject *type;
    Py_ssize_t off[AFF_A_COUNT];
};

static void aff_slots_init(struct aff_slots *sl, PyTypeObject *type)
{
    int k;
    sl->type = type;
    for (k = 0; k < AFF_A_COUNT; k++) {
        PyObject *d;
        sl->off[k] = -1;
        if (type->tp_getattro != PyObject_GenericGetAttr)
            continue;
        d = _PyType_Lookup(type, aff_attrs[k]);  /* borrowed */
        if (d != NULL && Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            if (m->type == AFF_T_OBJECT_EX && m->offset > 0)
                sl->off[k] = m->offset;
        }
    }
}

static int aff_read(PyObject *ev, PyObject **v, const int *which, int n,
                    const struct aff_slots *sl)
{
    int k;
    int fast = sl != NULL && Py_TYPE(ev) == sl->type;
    for (k = 0; k < n; k++) {
        int a = which[k];
        if (fast && sl->off[a] > 0) {
            PyObject *o = *(PyObject **)((char *)ev + sl->off[a]);
            if (o != NULL) {
                Py_INCREF(o);
                v[a] = o;
                continue;
            }
        }
        v[a] = PyObject_GetAttr(ev, aff_attrs[a]);
        if (v[a] == NULL)
            return -1;
    }
    return 0;
}

/* pid as str(pid) when it is above 0, "-" otherwise; into out[0..32). */
static int aff_pid_text(PyObject *pid, char *out, PyObject **big)
{
    long long p;
    int overflow = 0;

    *big = NULL;
    if (PyLong_CheckExact(pid)) {
        p = PyLong_AsLongLongAndOverflow(pid, &overflow);
        if (p == -1 && PyErr_Occurred())
            return -1;
        if (!overflow) {
            if (p <= 0)
                return snprintf(out, 32, "-");
            return snprintf(out, 32, "%lld", p);
        }
    }
    /* Not a plain int, or a huge one: as Python compares and prints it. */
    overflow = PyObject_RichCompareBool(pid, aff_zero, Py_GT);
    if (overflow < 0)
        return -1;
    if (!overflow)
        return snprintf(out, 32, "-");
    *big = PyObject_Str(pid);
    return *big == NULL ? -1 : 0;
}

/* A proc tuple's item k (borrowed), None for a pid with no details. */
static PyObject *aff_proc_item(PyObject *proc, Py_ssize_t k)
{
    if (proc == NULL)
        return Py_None;
    return PyTuple_GET_ITEM(proc, k);
}

static PyObject *aff_proc_of(PyObject *procs, PyObject *pid)
{
    PyObject *proc = PyDict_GetItemWithError(procs, pid);

    if (proc == NULL)
        return NULL;
    if (!PyTuple_Check(proc) || PyTuple_GET_SIZE(proc) < 3) {
        PyErr_SetString(PyExc_TypeError, "procs must map a pid to (name, exe, cwd)");
        return NULL;
    }
    return proc;
}

/* The JSON line of one event. */
static int aff_json(struct aff_buf *b, PyObject **v, unsigned long long m, PyObject *parts,
                    PyObject *head, PyObject *proc_parts, PyObject *proc_part, PyObject *clean)
{
    PyObject *path = v[AFF_A_PATH], *dir = v[AFF_A_DIR_PATH], *name = v[AFF_A_NAME];
    PyObject *part;
    Py_ssize_t plen = 0, cut = 0, head_end = 0;
    int resolved, own_dir = 0, own_name = 0;

    if (aff_put_all(b, head) < 0)
        return -1;
    if (m & AFF_Q_OVERFLOW)
        return aff_put_all(b, PyTuple_GET_ITEM(parts, 0)) < 0 ? -1 : AFF_PUTS(b, "\n");
    resolved = aff_truthy(v[AFF_A_PATH_RESOLVED]);
    if (resolved < 0)
        return -1;
    if (path != Py_None && resolved && (dir == Py_None || name == Py_None)) {
        if (aff_need_str(path) < 0)
            return -1;
        plen = PyUnicode_GET_LENGTH(path);
        aff_split(path, &cut, &head_end);
        own_dir = dir == Py_None && cut > 0;
        own_name = name == Py_None && cut < plen;
    }
    if (aff_put_all(b, PyTuple_GET_ITEM(parts, 0)) < 0
        || aff_put_js(b, path, 0, path == Py_None ? 0 : PyUnicode_GET_LENGTH(path), clean) < 0
        || AFF_PUTS(b, ",\"directory\":") < 0)
        return -1;
    if (own_dir) {
        if (aff_put_js(b, path, 0, head_end, clean) < 0)
            return -1;
    } else if (aff_put_js(b, dir, 0, dir == Py_None ? 0 : PyUnicode_GET_LENGTH(dir), clean) < 0)
        return -1;
    if (AFF_PUTS(b, ",\"name\":") < 0)
        return -1;
    if (own_name) {
        if (aff_put_js(b, path, cut, plen, clean) < 0)
            return -1;
    } else if (aff_put_js(b, name, 0, name == Py_None ? 0 : PyUnicode_GET_LENGTH(name), clean) < 0)
        return -1;
    if ((m & AFF_ONDIR ? AFF_PUTS(b, ",\"type\":\"dir\"},") : AFF_PUTS(b, ",\"type\":\"file\"},")) < 0)
        return -1;
    part = PyDict_GetItemWithError(proc_parts, v[AFF_A_PID]);
    if (part == NULL) {
        if (PyErr_Occurred())
            return -1;
        part = PyObject_CallOneArg(proc_part, v[AFF_A_PID]);
        if (part == NULL)
            return -1;
        if (PyDict_SetItem(proc_parts, v[AFF_A_PID], part) < 0) {
            Py_DECREF(part);
            return -1;
        }
        Py_DECREF(part); /* held by proc_parts */
    }
    if (aff_put_all(b, part) < 0 || aff_put_all(b, PyTuple_GET_ITEM(parts, 1)) < 0
        || (resolved ? AFF_PUTS(b, "true") : AFF_PUTS(b, "false")) < 0
        || AFF_PUTS(b, ",\"old_path\":") < 0)
        return -1;
    path = v[AFF_A_OLD_PATH];
    if (aff_put_js(b, path, 0, path == Py_None ? 0 : PyUnicode_GET_LENGTH(path), clean) < 0
        || AFF_PUTS(b, ",\"new_path\":") < 0)
        return -1;
    path = v[AFF_A_NEW_PATH];
    if (aff_put_js(b, path, 0, path == Py_None ? 0 : PyUnicode_GET_LENGTH(path), clean) < 0)
        return -1;
    return AFF_PUTS(b, "}}\n");
}

/* The aligned text line of one event. */
static int aff_text(struct aff_buf *b, PyObject **v, unsigned long long m, PyObject *parts,
                    PyObject *stamp, PyObject *procs)
{
    char pid[32];
    PyObject *big = NULL, *proc, *name, *exe, *old, *new, *path;
    Py_ssize_t start = 0, len, n;
    int k, resolved;

    if (aff_put_all(b, stamp) < 0)
        return -1;
    if (m & AFF_Q_OVERFLOW)
        return aff_put_all(b, PyTuple_GET_ITEM(parts, 0)) < 0 ? -1 : AFF_PUTS(b, "\n");
    k = aff_pid_text(v[AFF_A_PID], pid, &big);
    if (k < 0)
        return -1;
    if (AFF_PUTS(b, "  ") < 0)
        goto fail;
    if (big != NULL) {
        len = PyUnicode_GET_LENGTH(big);
        if (aff_spaces(b, 7 - len) < 0 || aff_put_all(b, big) < 0)
            goto fail;
        Py_CLEAR(big);
    } else if (aff_spaces(b, 7 - k) < 0 || aff_put(b, pid, (size_t)k) < 0) {
        goto fail;
    }
    if (AFF_PUTS(b, "  ") < 0)
        goto fail;
    proc = aff_proc_of(procs, v[AFF_A_PID]);
    if (proc == NULL && PyErr_Occurred())
        goto fail;
    name = aff_proc_item(proc, 0);
    k = aff_truthy(name);
    if (k < 0)
        goto fail;
    if (!k) {
        exe = v[AFF_A_EXE];
        k = aff_truthy(exe);
        if (k < 0)
            goto fail;
        if (k) {
            Py_ssize_t cut, head_end;
            if (aff_need_str(exe) < 0)
                goto fail;
            aff_split(exe, &cut, &head_end);
            name = exe;
            start = cut;
        } else {
            if (AFF_PUTS(b, "?              ") < 0)
                goto fail;
            name = NULL;
        }
    }
    if (name != NULL) {
        if (aff_need_str(name) < 0)
            goto fail;
        len = PyUnicode_GET_LENGTH(name);
        n = len - start > 15 ? 15 : len - start;
        if (aff_put_text(b, name, start, start + n) < 0 || aff_spaces(b, 15 - n) < 0)
            goto fail;
    }
    if (AFF_PUTS(b, "  ") < 0 || aff_put_all(b, PyTuple_GET_ITEM(parts, 0)) < 0
        || AFF_PUTS(b, "  ") < 0)
        goto fail;
    old = v[AFF_A_OLD_PATH];
    new = v[AFF_A_NEW_PATH];
    path = v[AFF_A_PATH];
    if (old != Py_None && new != Py_None) {
        if (aff_put_all(b, old) < 0 || AFF_PUTS(b, " -> ") < 0 || aff_put_all(b, new) < 0)
            goto fail;
    } else if (path != Py_None) {
        if (aff_put_all(b, path) < 0)
            goto fail;
    } else if (AFF_PUTS(b, "?") < 0) {
        goto fail;
    }
    if (path != Py_None) {
        resolved = aff_truthy(v[AFF_A_PATH_RESOLVED]);
        if (resolved < 0 || (!resolved && AFF_PUTS(b, "  (unresolved)") < 0))
            goto fail;
    }
    return AFF_PUTS(b, "\n");
fail:
    Py_XDECREF(big);
    return -1;
}

/* `a or b` of Python, borrowed; -1 on error. */
static int aff_or(PyObject *a, PyObject *b, PyObject **out)
{
    int t = aff_truthy(a);
    if (t < 0)
        return -1;
    *out = t ? a : b;
    return 0;
}

/* The value of one --format field, as a new reference. */
static PyObject *aff_field(int f, PyObject **v, unsigned long long m, PyObject *parts,
                           PyObject *stamp, PyObject *proc, PyObject *dash)
{
    PyObject *o = NULL, *x;
    char pid[32];
    int k;

    switch (f) {
    case AFF_T_TIME:
        return Py_NewRef(stamp);
    case AFF_T_PID: {
        PyObject *big;
        k = aff_pid_text(v[AFF_A_PID], pid, &big);
        if (k < 0)
            return NULL;
        return big != NULL ? big : PyUnicode_FromStringAndSize(pid, k);
    }
    case AFF_T_COMM:
        if (aff_or(aff_proc_item(proc, 0), dash, &o) < 0)
            return NULL;
        return Py_NewRef(o);
    case AFF_T_EXE:
    case AFF_T_CWD:
        x = aff_proc_item(proc, f == AFF_T_EXE ? 1 : 2);
        if (aff_or(x, v[f == AFF_T_EXE ? AFF_A_EXE : AFF_A_CWD], &o) < 0 || aff_or(o, dash, &o) < 0)
            return NULL;
        return Py_NewRef(o);
    case AFF_T_EVENTS:
        return Py_NewRef(PyTuple_GET_ITEM(parts, 0));
    case AFF_T_ACTIONS:
        return Py_NewRef(PyTuple_GET_ITEM(parts, 1));
    case AFF_T_TYPE:
        return PyUnicode_FromString(m & AFF_ONDIR ? "dir" : "file");
    case AFF_T_PATH:
    case AFF_T_OLD_PATH:
    case AFF_T_NEW_PATH:
        x = v[f == AFF_T_PATH ? AFF_A_PATH : f == AFF_T_OLD_PATH ? AFF_A_OLD_PATH : AFF_A_NEW_PATH];
        if (aff_or(x, dash, &o) < 0)
            return NULL;
        return Py_NewRef(o);
    case AFF_T_RESOLVED:
        k = aff_truthy(v[AFF_A_PATH_RESOLVED]);
        if (k < 0)
            return NULL;
        return PyUnicode_FromString(k ? "yes" : "no");
    case AFF_T_DIR:
    case AFF_T_NAME: {
        PyObject *path = v[AFF_A_PATH];
        x = v[f == AFF_T_DIR ? AFF_A_DIR_PATH : AFF_A_NAME];
        k = aff_truthy(x);
        if (k < 0)
            return NULL;
        if (!k && path != Py_None) {
            int resolved = aff_truthy(v[AFF_A_PATH_RESOLVED]);
            Py_ssize_t cut, head_end, len;
            if (resolved < 0)
                return NULL;
            if (resolved) {
                if (aff_need_str(path) < 0)
                    return NULL;
                len = PyUnicode_GET_LENGTH(path);
                aff_split(path, &cut, &head_end);
                if (f == AFF_T_DIR ? head_end > 0 : cut < len)
                    return f == AFF_T_DIR ? PyUnicode_Substring(path, 0, head_end)
                                          : PyUnicode_Substring(path, cut, len);
            }
        }
        if (aff_or(x, dash, &o) < 0)
            return NULL;
        return Py_NewRef(o);
    }
    default:
        PyErr_SetString(PyExc_ValueError, "unknown --format field");
        return NULL;
    }
}

/* The --format line of one event: steps are (literal, field, spec, conversion). */
static int aff_template(struct aff_buf *b, PyObject **v, unsigned long long m, PyObject *parts,
                        PyObject *stamp, PyObject *procs, PyObject *steps, PyObject *dash)
{
    PyObject *proc = aff_proc_of(procs, v[AFF_A_PID]);
    Py_ssize_t i, n = PyList_GET_SIZE(steps);

    if (proc == NULL && PyErr_Occurred())
        return -1;
    for (i = 0; i < n; i++) {
        PyObject *step = PyList_GET_ITEM(steps, i), *val, *tmp;
        long f;
        int rc;

        if (!PyTuple_Check(step) || PyTuple_GET_SIZE(step) != 4) {
            PyErr_SetString(PyExc_TypeError, "a template step is (literal, field, spec, conv)");
            return -1;
        }
        if (aff_put_all(b, PyTuple_GET_ITEM(step, 0)) < 0)
            return -1;
        f = PyLong_AsLong(PyTuple_GET_ITEM(step, 1));
        if (f == -1 && PyErr_Occurred())
            return -1;
        if (f < 0)
            continue;
        val = aff_field((int)f, v, m, parts, stamp, proc, dash);
        if (val == NULL)
            return -1;
        tmp = PyTuple_GET_ITEM(step, 3);
        if (tmp != Py_None) {
            PyObject *conv = PyUnicode_Compare(tmp, aff_conv_r) == 0 ? PyObject_Repr(val)
                             : PyUnicode_Compare(tmp, aff_conv_a) == 0 ? PyObject_ASCII(val)
                             : PyObject_Str(val);
            Py_DECREF(val);
            if (conv == NULL)
                return -1;
            val = conv;
        }
        tmp = PyTuple_GET_ITEM(step, 2);
        if (tmp != Py_None) {
            PyObject *done = PyObject_Format(val, tmp);
            Py_DECREF(val);
            if (done == NULL)
                return -1;
            val = done;
        }
        rc = aff_put_all(b, val);
        Py_DECREF(val);
        if (rc < 0)
            return -1;
    }
    return AFF_PUTS(b, "\n");
}

static const int aff_json_attrs[] = {
    AFF_A_PID, AFF_A_PATH, AFF_A_DIR_PATH, AFF_A_NAME, AFF_A_PATH_RESOLVED, AFF_A_OLD_PATH,
    AFF_A_NEW_PATH,
};
static const int aff_text_attrs[] = {
    AFF_A_PID, AFF_A_PATH, AFF_A_PATH_RESOLVED, AFF_A_OLD_PATH, AFF_A_NEW_PATH, AFF_A_EXE,
};
static const int aff_template_attrs[] = {
    AFF_A_PID, AFF_A_PATH, AFF_A_DIR_PATH, AFF_A_NAME, AFF_A_PATH_RESOLVED, AFF_A_OLD_PATH,
    AFF_A_NEW_PATH, AFF_A_EXE, AFF_A_CWD,
};
#define AFF_LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* _format_batch(mode, events, procs, stamp, masks, mask_parts, proc_part, clean, steps) -> bytes
 *
 * mode: 0 JSON (stamp is the line head), 1 text, 2 template (steps).
 * masks: the caller's dict of mask -> mask_parts(mask), filled here. */
static PyObject *aff_format_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *events, *procs, *stamp, *masks, *mask_parts, *proc_part, *clean, *steps;
    PyObject *proc_parts = NULL, *result = NULL, *dash = NULL;
    PyObject *v[AFF_A_COUNT] = {NULL};
    struct aff_slots sl = {NULL, {0}};
    struct aff_buf b = {NULL, 0, 0};
    const int *which;
    Py_ssize_t i, n;
    long mode;
    int nwhich, k, rc;

    (void)self;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "_format_batch takes 9 arguments");
        return NULL;
    }
    mode = PyLong_AsLong(args[0]);
    if (mode == -1 && PyErr_Occurred())
        return NULL;
    events = args[1];
    procs = args[2];
    stamp = args[3];
    masks = args[4];
    mask_parts = args[5];
    proc_part = args[6];
    clean = args[7];
    steps = args[8];
    if (!PyList_Check(events) || !PyDict_Check(procs) || !PyUnicode_Check(stamp)
        || !PyDict_Check(masks) || (mode == AFF_MODE_TEMPLATE && !PyList_Check(steps))) {
        PyErr_SetString(PyExc_TypeError, "_format_batch: bad argument types");
        return NULL;
    }
    if (mode == AFF_MODE_JSON) {
        which = aff_json_attrs;
        nwhich = AFF_LEN(aff_json_attrs);
    } else if (mode == AFF_MODE_TEXT) {
        which = aff_text_attrs;
        nwhich = AFF_LEN(aff_text_attrs);
    } else if (mode == AFF_MODE_TEMPLATE) {
        which = aff_template_attrs;
        nwhich = AFF_LEN(aff_template_attrs);
    } else {
        PyErr_SetString(PyExc_ValueError, "_format_batch: mode is 0, 1 or 2");
        return NULL;
    }
    proc_parts = PyDict_New();
    dash = PyUnicode_FromString("-");
    if (proc_parts == NULL || dash == NULL)
        goto done;
    n = PyList_GET_SIZE(events);
    for (i = 0; i < n && i < PyList_GET_SIZE(events); i++) {
        PyObject *ev = PyList_GET_ITEM(events, i), *mask, *parts;
        unsigned long long m;

        Py_INCREF(ev);
        mask = PyObject_GetAttr(ev, aff_attrs[AFF_A_EV_TYPES]);
        if (mask == NULL) {
            Py_DECREF(ev);
            goto done;
        }
        if (!PyLong_Check(mask)) {
            PyErr_Format(PyExc_TypeError, "ev_types must be int, not %.80s",
                         Py_TYPE(mask)->tp_name);
            Py_DECREF(mask);
            Py_DECREF(ev);
            goto done;
        }
        m = PyLong_AsUnsignedLongLongMask(mask);
        parts = aff_mask_parts(mask, masks, mask_parts, mode == AFF_MODE_TEXT ? 1 : 2);
        Py_DECREF(mask);
        if (parts == NULL) {
            Py_DECREF(ev);
            goto done;
        }
        Py_INCREF(parts);
        if (m & AFF_Q_OVERFLOW && mode != AFF_MODE_TEMPLATE) {
            rc = mode == AFF_MODE_JSON ? aff_json(&b, v, m, parts, stamp, NULL, NULL, NULL)
                                       : aff_text(&b, v, m, parts, stamp, NULL);
        } else {
            if (sl.type == NULL)
                aff_slots_init(&sl, Py_TYPE(ev));
            rc = aff_read(ev, v, which, nwhich, &sl);
            if (rc == 0) {
                if (mode == AFF_MODE_JSON)
                    rc = aff_json(&b, v, m, parts, stamp, proc_parts, proc_part, clean);
                else if (mode == AFF_MODE_TEXT)
                    rc = aff_text(&b, v, m, parts, stamp, procs);
                else
                    rc = aff_template(&b, v, m, parts, stamp, procs, steps, dash);
            }
            for (k = 0; k < AFF_A_COUNT; k++)
                Py_CLEAR(v[k]);
        }
        Py_DECREF(parts);
        Py_DECREF(ev);
        if (rc < 0)
            goto done;
    }
    result = PyBytes_FromStringAndSize(b.p ? b.p : "", (Py_ssize_t)b.len);
done:
    for (k = 0; k < AFF_A_COUNT; k++)
        Py_XDECREF(v[k]);
    Py_XDECREF(proc_parts);
    Py_XDECREF(dash);
    free(b.p);
    return result;
}

/* The field names, in the order the steps number them. */
static PyObject *aff_format_fields(PyObject *self, PyObject *unused)
{
    PyObject *t = PyTuple_New(AFF_T_COUNT);
    int k;

    (void)self;
    (void)unused;
    if (t == NULL)
        return NULL;
    for (k = 0; k < AFF_T_COUNT; k++) {
        PyObject *s = PyUnicode_FromString(aff_field_names[k]);
        if (s == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, k, s);
    }
    return t;
}

static PyMethodDef aff_methods[] = {
    {"_format_batch", (PyCFunction)(void (*)(void))aff_format_batch, METH_FASTCALL,
     "_format_batch(mode, events, procs, stamp, masks, mask_parts, proc_part, clean, steps)"
     " -> bytes"},
    {"_format_fields", aff_format_fields, METH_NOARGS, "_format_fields() -> field names"},
    {NULL, NULL, 0, NULL},
};

/* Add _format_batch and _format_fields to afanotify._fanotify.  Called
 * through cffi, which releases the GIL: take it back.  0, or -1 (printed). */
int aff_install_formatter(void)
{
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *mod = PyImport_AddModule("afanotify._fanotify"); /* borrowed */
    PyObject *modname = mod != NULL ? PyModule_GetNameObject(mod) : NULL;
    PyMethodDef *def;
    int rc = modname != NULL ? 0 : -1, k;

    for (k = 0; rc == 0 && k < AFF_A_COUNT; k++) {
        if (aff_attrs[k] == NULL)
            aff_attrs[k] = PyUnicode_InternFromString(aff_attr_names[k]);
        if (aff_attrs[k] == NULL)
            rc = -1;
    }
    if (rc == 0 && aff_zero == NULL && (aff_zero = PyLong_FromLong(0)) == NULL)
        rc = -1;
    if (rc == 0 && aff_conv_r == NULL && (aff_conv_r = PyUnicode_InternFromString("r")) == NULL)
        rc = -1;
    if (rc == 0 && aff_conv_a == NULL && (aff_conv_a = PyUnicode_InternFromString("a")) == NULL)
        rc = -1;
    for (def = aff_methods; rc == 0 && def->ml_name != NULL; def++) {
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
