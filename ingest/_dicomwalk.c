/*
 * The happy path of ingest/validate.py's element walk, in C.
 *
 * Why: the pure-Python walk costs ~0.18 ms for the 263 element headers of a 39 KB CT slice, about
 * what the raw WADO-RS transfer of that slice costs (issue 18, scripts/bench/bench_pull.py). This
 * file walks the same headers in the same order and keeps the same values, and does nothing else:
 *
 *   - on a well-formed data set it returns what _Walker would have built: one entry per data set
 *     (top level first, then every sequence item, in pre-order), each [values, pixel, encapsulated,
 *     other_data] exactly as _Level holds them;
 *   - on ANY structural fault it returns None, and validate.py runs the Python walker on the same
 *     bytes, which names the check and writes the message. So this file holds no messages and no
 *     policy: only the walk. Faults are rare, so the slow path costs nothing in practice.
 *
 * The one direction that matters is "C accepts only what Python accepts, with the same values":
 * tests/test_validate_fast.py runs both walkers over the damaged-file corpus, every test file and
 * byte-level mutations of them, and compares the results.
 *
 * The tag and VR tables come from validate.py through configure(), so the two cannot drift.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define UNDEFINED 0xFFFFFFFFu
#define ITEM 0xFFFEE000u
#define ITEM_END 0xFFFEE00Du
#define SEQ_END 0xFFFEE0DDu
#define PIXEL_DATA 0x7FE00010u

#define OK 0
#define FAULT 1  /* a structural fault: the Python walker gives the verdict */
#define ERROR 2  /* a Python exception is set (memory) */

typedef struct {
    uint32_t *tags;
    Py_ssize_t n;
} TagSet;

static TagSet wanted, sq_tags, other_data;
static unsigned char wanted_group[65536]; /* 1: some wanted tag is in this group (a cheap first test) */
static signed char vr_kind[65536]; /* -1 unknown VR, 0 short (16-bit length), 1 long (32-bit length) */
static int max_depth = -1;          /* -1: not configured */

typedef struct {
    const unsigned char *b;
    PyObject *levels;
} Ctx;

static inline uint32_t u16(const unsigned char *p, int little) {
    return little ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : (uint32_t)p[0] << 8 | (uint32_t)p[1];
}

static inline uint32_t u32(const unsigned char *p, int little) {
    return little ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
                  : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static Py_ssize_t find(const TagSet *s, uint32_t tag) {
    Py_ssize_t lo = 0, hi = s->n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (s->tags[mid] < tag)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->n && s->tags[lo] == tag ? lo : -1;
}

static int contains(const TagSet *s, uint32_t tag) { return find(s, tag) >= 0; }

static int is_vr(const unsigned char *vr, char a, char b) { return vr != NULL && vr[0] == a && vr[1] == b; }

static PyObject **wanted_keys; /* the int objects of wanted.tags, made once by configure() */
static PyObject *vr_bytes[65536]; /* the 2-byte VR objects, made on first use and kept */

static Py_ssize_t find(const TagSet *s, uint32_t tag); /* index of tag in s, or -1 */

/* values[tag] = (vr or None, raw bytes) */
static int keep(PyObject *values, uint32_t tag, const unsigned char *vr, const unsigned char *raw, Py_ssize_t n) {
    PyObject *v = Py_None;
    if (vr != NULL) {
        PyObject **slot = &vr_bytes[vr[0] << 8 | vr[1]];
        if (*slot == NULL && (*slot = PyBytes_FromStringAndSize((const char *)vr, 2)) == NULL)
            return ERROR;
        v = *slot;
    }
    PyObject *r = PyBytes_FromStringAndSize((const char *)raw, n);
    PyObject *pair = r ? PyTuple_Pack(2, v, r) : NULL;
    int rc = pair ? PyDict_SetItem(values, wanted_keys[find(&wanted, tag)], pair) : -1;
    Py_XDECREF(r);
    Py_XDECREF(pair);
    return rc < 0 ? ERROR : OK;
}

static int set_slot(PyObject *level, Py_ssize_t i, PyObject *value) {
    if (value == NULL)
        return ERROR;
    PyList_SetItem(level, i, value); /* steals; releases the old None */
    return OK;
}

static int sequence(Ctx *c, Py_ssize_t pos, Py_ssize_t stop, Py_ssize_t end, int depth, int explicit_, int little,
                    Py_ssize_t *out);

/* Basic Offset Table, fragments, sequence delimiter (validate._Walker._encapsulated). */
static int encapsulated(Ctx *c, Py_ssize_t pos, Py_ssize_t end, PyObject *level, int little, Py_ssize_t *out) {
    const unsigned char *b = c->b;
    int first = 1;
    Py_ssize_t bot_start = pos, bot_len = 0, base = 0;
    PyObject *frags = PyList_New(0);
    if (frags == NULL)
        return ERROR;
    for (;;) {
        if (pos + 8 > end)
            goto fault;
        uint32_t tag = u16(b + pos, little) << 16 | u16(b + pos + 2, little);
        uint32_t length = u32(b + pos + 4, little);
        if (tag == SEQ_END) {
            if (length != 0)
                goto fault;
            pos += 8;
            break;
        }
        if (tag != ITEM || length == UNDEFINED || pos + 8 + (Py_ssize_t)length > end)
            goto fault;
        if (first) {
            bot_start = pos + 8;
            bot_len = length;
            base = pos + 8 + length;
            first = 0;
        } else {
            PyObject *f = Py_BuildValue("(nnn)", pos - base, pos + 8, (Py_ssize_t)length);
            if (f == NULL || PyList_Append(frags, f) < 0) {
                Py_XDECREF(f);
                Py_DECREF(frags);
                return ERROR;
            }
            Py_DECREF(f);
        }
        pos += 8 + (Py_ssize_t)length;
    }
    *out = pos;
    return set_slot(level, 2, Py_BuildValue("((nn)N)", bot_start, bot_len, frags));
fault:
    Py_DECREF(frags);
    return FAULT;
}

/* One data set from pos to end, or to its Item Delimitation Item (validate._Walker.dataset). */
static int dataset(Ctx *c, Py_ssize_t pos, Py_ssize_t end, int depth, int until_item_end, int explicit_, int little,
                   Py_ssize_t *out) {
    const unsigned char *b = c->b;
    int rc;
    if (depth > max_depth)
        return FAULT;
    PyObject *values = PyDict_New();
    PyObject *level = values ? Py_BuildValue("[NOOO]", values, Py_None, Py_None, Py_False) : NULL;
    if (level == NULL)
        return ERROR;
    rc = PyList_Append(c->levels, level);
    Py_DECREF(level); /* c->levels holds it */
    if (rc < 0)
        return ERROR;
    int64_t last = -1;
    while (pos < end) {
        if (pos + 8 > end)
            return FAULT;
        uint32_t group = u16(b + pos, little);
        uint32_t tag = group << 16 | u16(b + pos + 2, little);
        if ((int64_t)tag <= last || group == 0xFFFE) {
            if (tag == ITEM_END && until_item_end) {
                *out = pos + 8;
                return OK;
            }
            return FAULT;
        }
        last = tag;
        const unsigned char *vr = NULL;
        Py_ssize_t start;
        uint32_t length;
        if (explicit_) {
            vr = b + pos + 4;
            int kind = vr_kind[vr[0] << 8 | vr[1]];
            if (kind == 0) { /* the common case: a short VR with a 16-bit length, never a sequence */
                Py_ssize_t stop = pos + 8 + u16(b + pos + 6, little);
                if (stop > end)
                    return FAULT;
                if (wanted_group[group] && contains(&wanted, tag) && keep(values, tag, vr, b + pos + 8, stop - pos - 8))
                    return ERROR;
                pos = stop;
                continue;
            }
            if (kind < 0 || pos + 12 > end)
                return FAULT;
            length = u32(b + pos + 8, little);
            start = pos + 12;
        } else {
            length = u32(b + pos + 4, little);
            start = pos + 8;
        }
        if (length == UNDEFINED) {
            if (tag == PIXEL_DATA)
                rc = encapsulated(c, start, end, level, little, &pos);
            else if (is_vr(vr, 'U', 'N')) /* PS3.5 6.2.2: an implicit VR little endian sequence */
                rc = sequence(c, start, -1, end, depth, 0, 1, &pos);
            else if (vr == NULL || is_vr(vr, 'S', 'Q'))
                rc = sequence(c, start, -1, end, depth, explicit_, little, &pos);
            else
                rc = FAULT;
            if (rc != OK)
                return rc;
            continue;
        }
        Py_ssize_t stop = start + (Py_ssize_t)length;
        if (stop > end)
            return FAULT;
        if (is_vr(vr, 'S', 'Q') || (vr == NULL && contains(&sq_tags, tag))) {
            Py_ssize_t ignored;
            rc = sequence(c, start, stop, stop, depth, explicit_, little, &ignored);
            if (rc != OK)
                return rc;
        } else if (wanted_group[group] && contains(&wanted, tag)) {
            if (tag == PIXEL_DATA)
                rc = set_slot(level, 1, Py_BuildValue("(nn)", start, (Py_ssize_t)length));
            else if (contains(&other_data, tag)) {
                Py_INCREF(Py_True);
                rc = set_slot(level, 3, Py_True);
            } else
                rc = keep(values, tag, vr, b + start, length);
            if (rc != OK)
                return rc;
        }
        pos = stop;
    }
    if (until_item_end)
        return FAULT;
    *out = pos;
    return OK;
}

/* Items of a sequence; stop < 0 for an undefined length (validate._Walker._sequence). */
static int sequence(Ctx *c, Py_ssize_t pos, Py_ssize_t stop, Py_ssize_t end, int depth, int explicit_, int little,
                    Py_ssize_t *out) {
    const unsigned char *b = c->b;
    Py_ssize_t limit = stop >= 0 ? stop : end;
    int rc;
    for (;;) {
        if (stop >= 0 && pos == stop) {
            *out = pos;
            return OK;
        }
        if (pos + 8 > limit)
            return FAULT;
        uint32_t tag = u16(b + pos, little) << 16 | u16(b + pos + 2, little);
        uint32_t length = u32(b + pos + 4, little);
        if (tag == SEQ_END) {
            if (stop >= 0)
                return FAULT;
            *out = pos + 8;
            return OK;
        }
        if (tag != ITEM)
            return FAULT;
        if (length == UNDEFINED) {
            rc = dataset(c, pos + 8, limit, depth + 1, 1, explicit_, little, &pos);
        } else {
            Py_ssize_t item_end = pos + 8 + (Py_ssize_t)length, ignored;
            if (item_end > limit)
                return FAULT;
            rc = dataset(c, pos + 8, item_end, depth + 1, 0, explicit_, little, &ignored);
            pos = item_end;
        }
        if (rc != OK)
            return rc;
    }
}

static int load_tags(PyObject *seq, TagSet *s) {
    PyObject *fast = PySequence_Fast(seq, "tags must be a sequence of ints");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    uint32_t *tags = PyMem_Malloc(sizeof(uint32_t) * (n ? n : 1));
    if (tags == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred()) {
            PyMem_Free(tags);
            Py_DECREF(fast);
            return -1;
        }
        if (i && v <= tags[i - 1]) {
            PyMem_Free(tags);
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "tags must be sorted and unique");
            return -1;
        }
        tags[i] = (uint32_t)v;
    }
    Py_DECREF(fast);
    PyMem_Free(s->tags);
    s->tags = tags;
    s->n = n;
    return 0;
}

static int load_vrs(PyObject *seq, signed char kind) {
    PyObject *fast = PySequence_Fast(seq, "VRs must be a sequence of 2-byte bytes");
    if (fast == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        PyObject *vr = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(vr) || PyBytes_GET_SIZE(vr) != 2) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "each VR must be 2 bytes");
            return -1;
        }
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(vr);
        vr_kind[p[0] << 8 | p[1]] = kind;
    }
    Py_DECREF(fast);
    return 0;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *short_vrs, *long_vrs, *w, *sq, *other;
    int depth;
    if (!PyArg_ParseTuple(args, "OOOOOi", &short_vrs, &long_vrs, &w, &sq, &other, &depth))
        return NULL;
    memset(vr_kind, -1, sizeof vr_kind);
    if (load_vrs(short_vrs, 0) || load_vrs(long_vrs, 1) || load_tags(w, &wanted) || load_tags(sq, &sq_tags) ||
        load_tags(other, &other_data)) {
        max_depth = -1;
        return NULL;
    }
    PyObject **keys = PyMem_Calloc(wanted.n ? wanted.n : 1, sizeof(PyObject *));
    if (keys == NULL) {
        max_depth = -1;
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < wanted.n; i++)
        if ((keys[i] = PyLong_FromUnsignedLong(wanted.tags[i])) == NULL) {
            max_depth = -1;
            return NULL; /* a few small ints leaked on a failed configure: never retried */
        }
    wanted_keys = keys; /* configure() runs once per process: the old table (if any) is kept alive */
    memset(wanted_group, 0, sizeof wanted_group);
    for (Py_ssize_t i = 0; i < wanted.n; i++)
        wanted_group[wanted.tags[i] >> 16] = 1;
    max_depth = depth;
    Py_RETURN_NONE;
}

/* The bytes to read, once configure() has given the tables. */
static int get_buffer(PyObject *obj, Py_buffer *view) {
    if (max_depth < 0) {
        PyErr_SetString(PyExc_RuntimeError, "_dicomwalk.configure() has not been called");
        return -1;
    }
    return PyObject_GetBuffer(obj, view, PyBUF_SIMPLE);
}

static PyObject *walk(PyObject *self, PyObject *args) {
    PyObject *obj;
    Py_ssize_t start, end;
    int explicit_, little;
    if (!PyArg_ParseTuple(args, "Onnpp", &obj, &start, &end, &explicit_, &little))
        return NULL;
    Py_buffer view;
    if (get_buffer(obj, &view) < 0)
        return NULL;
    if (start < 0 || end > view.len || start > end) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start/end outside the buffer");
        return NULL;
    }
    Ctx c = {(const unsigned char *)view.buf, PyList_New(0)};
    PyObject *result = NULL;
    if (c.levels != NULL) {
        Py_ssize_t ignored;
        int rc = dataset(&c, start, end, 0, 0, explicit_, little, &ignored);
        if (rc == OK) {
            result = c.levels;
            c.levels = NULL;
        } else if (rc == FAULT) {
            result = Py_None;
            Py_INCREF(result);
        }
        Py_XDECREF(c.levels);
    }
    PyBuffer_Release(&view);
    return result;
}

/* File meta group (validate._meta): (data set start, {element: raw value}) or None on a fault. */
static PyObject *meta(PyObject *self, PyObject *obj) {
    Py_buffer view;
    if (get_buffer(obj, &view) < 0)
        return NULL;
    const unsigned char *b = view.buf;
    Py_ssize_t pos = 132, end = view.len;
    PyObject *values = PyDict_New(), *result = NULL;
    int seen = 0; /* bits: 1 TransferSyntaxUID, 2 MediaStorageSOPClassUID, 4 MediaStorageSOPInstanceUID */
    if (values == NULL)
        goto done;
    while (pos + 8 <= end) {
        if (u16(b + pos, 1) != 0x0002)
            break;
        uint32_t elem = u16(b + pos + 2, 1);
        int kind = vr_kind[b[pos + 4] << 8 | b[pos + 5]];
        Py_ssize_t start;
        uint32_t length;
        if (kind == 1) {
            if (pos + 12 > end)
                goto fault;
            length = u32(b + pos + 8, 1);
            start = pos + 12;
        } else if (kind == 0) {
            length = u16(b + pos + 6, 1);
            start = pos + 8;
        } else
            goto fault;
        if (length == UNDEFINED || start + (Py_ssize_t)length > end)
            goto fault;
        PyObject *key = PyLong_FromUnsignedLong(elem);
        PyObject *raw = PyBytes_FromStringAndSize((const char *)b + start, length);
        int rc = (key && raw) ? PyDict_SetItem(values, key, raw) : -1;
        Py_XDECREF(key);
        Py_XDECREF(raw);
        if (rc < 0)
            goto done;
        seen |= elem == 0x0010 ? 1 : elem == 0x0002 ? 2 : elem == 0x0003 ? 4 : 0;
        pos = start + length;
    }
    if (pos + 8 > end || seen != 7)
        goto fault;
    result = Py_BuildValue("(nO)", pos, values);
    goto done;
fault:
    result = Py_None;
    Py_INCREF(result);
done:
    Py_XDECREF(values);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"meta", meta, METH_O, "meta(buf) -> (data set start, {element: raw value}) or None on a fault"},
    {"configure", configure, METH_VARARGS,
     "configure(short_vrs, long_vrs, wanted, sq_tags, other_data, max_depth): the tables of ingest.validate"},
    {"walk", walk, METH_VARARGS,
     "walk(buf, start, end, explicit, little) -> [[values, pixel, encapsulated, other_data], ...] or None on a fault"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dicomwalk",
                                    "Fast path of ingest.validate's element walk (see the C source).", -1, methods};

PyMODINIT_FUNC PyInit__dicomwalk(void) { return PyModule_Create(&module); }
