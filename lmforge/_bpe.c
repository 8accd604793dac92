/*
 * lmforge._bpe: the hot loop of BPE training, in C.
 *
 * It is the same algorithm as `_train_python` in lmforge/tokenizer.py, step for step, and
 * must return the same merges (tests/test_tokenizer.py checks this):
 *
 *   1. every distinct pre-token ("word") is a list of symbols, starting from its bytes;
 *   2. count every adjacent pair once, weighted by how often the word occurs, and index
 *      which words hold each pair (pair -> list of word indices);
 *   3. repeat: take the most frequent pair from a max-heap (ties: the pair whose token
 *      byte strings are smallest, comparing the left token first, then the right),
 *      record the merge, rewrite only the words that hold the pair, and update the
 *      counts of the neighbouring pairs there (not a rescan of the corpus).
 *
 * Heap entries go stale when a pair's count drops; they are checked when popped
 * ("lazy invalidation") and pushed back with the true count. A pair whose count grows
 * gets a fresh entry, so every live pair always has an entry >= its true count.
 *
 * A merge whose byte string already exists as a token reuses that token's id (as HF
 * `tokenizers` does), so token strings stay unique.
 *
 * Python API:
 *   train(words: list[bytes], counts: list[int], max_tokens: int, min_frequency: int,
 *         callback=None) -> list[tuple[int, int, int]]
 * returns (left id, right id, new id) per merge; ids 0..255 are the bytes.
 * `callback(n)` is called now and then with the number of new tokens so far.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- tokens ---- */

typedef struct {
    unsigned char *arena; /* all token byte strings, back to back */
    size_t arena_len, arena_cap;
    size_t *off;          /* token id -> offset in arena */
    uint32_t *len;        /* token id -> length */
    int32_t n, cap;
    int32_t *slots;       /* hash set over byte strings -> token id (-1 = empty) */
    size_t nslots;
} Tokens;

static uint64_t hash_bytes(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int tok_eq(const Tokens *t, int32_t id, const unsigned char *p, size_t n) {
    return t->len[id] == n && memcmp(t->arena + t->off[id], p, n) == 0;
}

static int tok_set_insert(Tokens *t, int32_t id) {
    size_t mask = t->nslots - 1;
    size_t i = hash_bytes(t->arena + t->off[id], t->len[id]) & mask;
    while (t->slots[i] >= 0) i = (i + 1) & mask;
    t->slots[i] = id;
    return 0;
}

static int tok_grow_set(Tokens *t) {
    size_t n = t->nslots ? t->nslots * 2 : 1024;
    int32_t *s = malloc(n * sizeof *s);
    if (!s) return -1;
    memset(s, 0xff, n * sizeof *s);
    free(t->slots);
    t->slots = s;
    t->nslots = n;
    for (int32_t id = 0; id < t->n; id++) tok_set_insert(t, id);
    return 0;
}

/* id of the token with bytes p[0:n], or -1 */
static int32_t tok_find(const Tokens *t, const unsigned char *p, size_t n) {
    size_t mask = t->nslots - 1;
    size_t i = hash_bytes(p, n) & mask;
    while (t->slots[i] >= 0) {
        if (tok_eq(t, t->slots[i], p, n)) return t->slots[i];
        i = (i + 1) & mask;
    }
    return -1;
}

/* the token for a+b: an existing one with the same bytes, or a new one */
static int32_t tok_concat(Tokens *t, int32_t a, int32_t b) {
    size_t la = t->len[a], lb = t->len[b], n = la + lb;
    if (t->arena_len + n > t->arena_cap) {
        size_t cap = (t->arena_cap + n) * 2;
        unsigned char *p = realloc(t->arena, cap);
        if (!p) return -1;
        t->arena = p;
        t->arena_cap = cap;
    }
    unsigned char *dst = t->arena + t->arena_len;
    memcpy(dst, t->arena + t->off[a], la);
    memcpy(dst + la, t->arena + t->off[b], lb);
    int32_t found = tok_find(t, dst, n);
    if (found >= 0) return found;
    if (t->n == t->cap) {
        int32_t cap = t->cap * 2;
        size_t *off = realloc(t->off, cap * sizeof *off);
        if (!off) return -1;
        t->off = off;
        uint32_t *len = realloc(t->len, cap * sizeof *len);
        if (!len) return -1;
        t->len = len;
        t->cap = cap;
    }
    int32_t id = t->n++;
    t->off[id] = t->arena_len;
    t->len[id] = (uint32_t)n;
    t->arena_len += n;
    if ((size_t)t->n * 2 > t->nslots) {
        if (tok_grow_set(t) < 0) return -1;
    } else {
        tok_set_insert(t, id);
    }
    return id;
}

/* Python's bytes ordering: memcmp on the common prefix, then the shorter is smaller */
static int tok_cmp(const Tokens *t, int32_t x, int32_t y) {
    if (x == y) return 0;
    size_t lx = t->len[x], ly = t->len[y];
    int c = memcmp(t->arena + t->off[x], t->arena + t->off[y], lx < ly ? lx : ly);
    if (c) return c;
    return (lx > ly) - (lx < ly);
}

/* ----------------------------------------------------------------- pairs ---- */

typedef struct {
    uint64_t key;     /* (a << 32) | b; 0 = empty slot (pair (0, 0) is stored as key 1<<63) */
    int64_t count;
    int32_t *where;   /* indices of words that (may) hold the pair */
    int32_t nwhere, capwhere;
    int32_t grown_at; /* last merge step in which the count grew */
} Pair;

typedef struct {
    Pair *slots;
    size_t nslots, used;
} PairTable;

#define EMPTY_KEY 0ULL
static inline uint64_t pair_key(int32_t a, int32_t b) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    return k ? k : (1ULL << 63);
}
static inline int32_t key_a(uint64_t k) { return k == (1ULL << 63) ? 0 : (int32_t)(k >> 32); }
static inline int32_t key_b(uint64_t k) { return k == (1ULL << 63) ? 0 : (int32_t)(k & 0xffffffffu); }

static inline uint64_t mix64(uint64_t x) { /* splitmix64 finalizer */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int pairs_grow(PairTable *pt) {
    size_t n = pt->nslots ? pt->nslots * 2 : 1 << 16;
    Pair *s = calloc(n, sizeof *s);
    if (!s) return -1;
    for (size_t i = 0; i < pt->nslots; i++) {
        if (pt->slots[i].key == EMPTY_KEY) continue;
        size_t j = mix64(pt->slots[i].key) & (n - 1);
        while (s[j].key != EMPTY_KEY) j = (j + 1) & (n - 1);
        s[j] = pt->slots[i];
    }
    free(pt->slots);
    pt->slots = s;
    pt->nslots = n;
    return 0;
}

/* the entry for (a, b), created with count 0 if missing; NULL on out-of-memory.
 * The pointer is valid until the next call (the table may grow). */
static Pair *pairs_get(PairTable *pt, int32_t a, int32_t b) {
    if ((pt->used + 1) * 2 > pt->nslots && pairs_grow(pt) < 0) return NULL;
    uint64_t k = pair_key(a, b);
    size_t mask = pt->nslots - 1, i = mix64(k) & mask;
    while (pt->slots[i].key != EMPTY_KEY) {
        if (pt->slots[i].key == k) return &pt->slots[i];
        i = (i + 1) & mask;
    }
    pt->slots[i].key = k;
    pt->slots[i].grown_at = -1;
    pt->used++;
    return &pt->slots[i];
}

static Pair *pairs_find(PairTable *pt, int32_t a, int32_t b) {
    uint64_t k = pair_key(a, b);
    size_t mask = pt->nslots - 1, i = mix64(k) & mask;
    while (pt->slots[i].key != EMPTY_KEY) {
        if (pt->slots[i].key == k) return &pt->slots[i];
        i = (i + 1) & mask;
    }
    return NULL;
}

static int where_add(Pair *p, int32_t w) {
    if (p->nwhere && p->where[p->nwhere - 1] == w) return 0; /* same word, just added */
    if (p->nwhere == p->capwhere) {
        int32_t cap = p->capwhere ? p->capwhere * 2 : 4;
        int32_t *x = realloc(p->where, cap * sizeof *x);
        if (!x) return -1;
        p->where = x;
        p->capwhere = cap;
    }
    p->where[p->nwhere++] = w;
    return 0;
}

/* ------------------------------------------------------------------ heap ---- */

typedef struct { int64_t count; int32_t a, b; } Entry;

typedef struct {
    Entry *e;
    size_t n, cap;
    const Tokens *tok;
} Heap;

/* x before y: higher count, then smaller left token bytes, then smaller right bytes */
static inline int before(const Heap *h, const Entry *x, const Entry *y) {
    if (x->count != y->count) return x->count > y->count;
    int c = tok_cmp(h->tok, x->a, y->a);
    if (c) return c < 0;
    return tok_cmp(h->tok, x->b, y->b) < 0;
}

static int heap_push(Heap *h, Entry x) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 1024;
        Entry *e = realloc(h->e, cap * sizeof *e);
        if (!e) return -1;
        h->e = e;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(h, &x, &h->e[parent])) break;
        h->e[i] = h->e[parent];
        i = parent;
    }
    h->e[i] = x;
    return 0;
}

static Entry heap_pop(Heap *h) {
    Entry top = h->e[0], x = h->e[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        const Entry *bx = &x;
        if (l < h->n && before(h, &h->e[l], bx)) { best = l; bx = &h->e[l]; }
        if (r < h->n && before(h, &h->e[r], bx)) { best = r; }
        if (best == i) break;
        h->e[i] = h->e[best];
        i = best;
    }
    if (h->n) h->e[i] = x;
    return top;
}

/* --------------------------------------------------------------- training ---- */

typedef struct {
    Tokens tok;
    PairTable pairs;
    Heap heap;
    int32_t *sym;       /* all words' symbols, back to back */
    size_t *start;      /* word -> offset in sym */
    int32_t *wlen;      /* word -> current number of symbols */
    int64_t *freq;      /* word -> occurrences in the corpus */
    Py_ssize_t nwords;
    uint64_t *grown;    /* keys of pairs whose count grew during the current merge */
    size_t ngrown, capgrown;
} State;

static void state_free(State *s) {
    free(s->tok.arena); free(s->tok.off); free(s->tok.len); free(s->tok.slots);
    for (size_t i = 0; i < s->pairs.nslots; i++) free(s->pairs.slots[i].where);
    free(s->pairs.slots);
    free(s->heap.e);
    free(s->sym); free(s->start); free(s->wlen); free(s->freq);
    free(s->grown);
}

/* count[a, b] += delta in word w; remember pairs that grew (w joins their index) */
static int add_pair(State *s, int32_t a, int32_t b, int64_t delta, int32_t w, int32_t step) {
    Pair *p = pairs_get(&s->pairs, a, b);
    if (!p) return -1;
    p->count += delta;
    if (delta > 0) {
        if (where_add(p, w) < 0) return -1;
        if (p->grown_at != step) {
            p->grown_at = step;
            if (s->ngrown == s->capgrown) {
                size_t cap = s->capgrown ? s->capgrown * 2 : 256;
                uint64_t *g = realloc(s->grown, cap * sizeof *g);
                if (!g) return -1;
                s->grown = g;
                s->capgrown = cap;
            }
            s->grown[s->ngrown++] = p->key;
        }
    }
    return 0;
}

/* replace every (a, b) in word w by c, left to right, updating neighbour pair counts */
static int merge_word(State *s, int32_t w, int32_t a, int32_t b, int32_t c, int32_t step) {
    int32_t *x = s->sym + s->start[w];
    int32_t n = s->wlen[w], i = 0, k = 0; /* read at i, write at k <= i */
    int64_t f = s->freq[w];
    while (i < n) {
        if (i + 1 < n && x[i] == a && x[i + 1] == b) {
            if (k > 0) { /* left neighbour (already rewritten): (p, a) -> (p, c) */
                if (add_pair(s, x[k - 1], a, -f, w, step) < 0) return -1;
                if (add_pair(s, x[k - 1], c, f, w, step) < 0) return -1;
            }
            if (i + 2 < n) { /* right neighbour (not yet rewritten): (b, q) -> (c, q) */
                if (add_pair(s, b, x[i + 2], -f, w, step) < 0) return -1;
                if (add_pair(s, c, x[i + 2], f, w, step) < 0) return -1;
            }
            x[k++] = c;
            i += 2;
        } else {
            x[k++] = x[i++];
        }
    }
    s->wlen[w] = k;
    return 0;
}

static PyObject *train(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *words_obj, *counts_obj, *callback = Py_None;
    Py_ssize_t max_tokens;
    long long min_frequency;
    if (!PyArg_ParseTuple(args, "OOnL|O", &words_obj, &counts_obj, &max_tokens, &min_frequency,
                          &callback))
        return NULL;
    if (min_frequency < 1) min_frequency = 1;

    State s;
    memset(&s, 0, sizeof s);
    PyObject *words = NULL, *counts = NULL, *merges = NULL;
    words = PySequence_Fast(words_obj, "words must be a sequence of bytes");
    if (!words) goto fail;
    counts = PySequence_Fast(counts_obj, "counts must be a sequence of ints");
    if (!counts) goto fail;
    s.nwords = PySequence_Fast_GET_SIZE(words);
    if (PySequence_Fast_GET_SIZE(counts) != s.nwords) {
        PyErr_SetString(PyExc_ValueError, "words and counts differ in length");
        goto fail;
    }
    if (s.nwords >= INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many distinct words");
        goto fail;
    }

    /* the 256 byte tokens */
    s.tok.cap = 1024;
    s.tok.off = malloc(s.tok.cap * sizeof *s.tok.off);
    s.tok.len = malloc(s.tok.cap * sizeof *s.tok.len);
    s.tok.arena_cap = 4096;
    s.tok.arena = malloc(s.tok.arena_cap);
    if (!s.tok.off || !s.tok.len || !s.tok.arena) goto nomem;
    for (int i = 0; i < 256; i++) {
        s.tok.arena[i] = (unsigned char)i;
        s.tok.off[i] = i;
        s.tok.len[i] = 1;
    }
    s.tok.n = 256;
    s.tok.arena_len = 256;
    if (tok_grow_set(&s.tok) < 0) goto nomem;
    s.heap.tok = &s.tok;

    /* words -> symbols */
    size_t total = 0;
    PyObject **witems = PySequence_Fast_ITEMS(words), **citems = PySequence_Fast_ITEMS(counts);
    for (Py_ssize_t w = 0; w < s.nwords; w++) {
        if (!PyBytes_Check(witems[w])) {
            PyErr_SetString(PyExc_TypeError, "words must be bytes");
            goto fail;
        }
        total += PyBytes_GET_SIZE(witems[w]);
    }
    s.sym = malloc((total ? total : 1) * sizeof *s.sym);
    s.start = malloc((s.nwords ? s.nwords : 1) * sizeof *s.start);
    s.wlen = malloc((s.nwords ? s.nwords : 1) * sizeof *s.wlen);
    s.freq = malloc((s.nwords ? s.nwords : 1) * sizeof *s.freq);
    if (!s.sym || !s.start || !s.wlen || !s.freq) goto nomem;
    size_t pos = 0;
    for (Py_ssize_t w = 0; w < s.nwords; w++) {
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(witems[w]);
        Py_ssize_t n = PyBytes_GET_SIZE(witems[w]);
        long long f = PyLong_AsLongLong(citems[w]);
        if (f == -1 && PyErr_Occurred()) goto fail;
        s.start[w] = pos;
        s.wlen[w] = (int32_t)n;
        s.freq[w] = f;
        for (Py_ssize_t i = 0; i < n; i++) s.sym[pos++] = p[i];
    }

    /* initial pair counts and index */
    if (pairs_grow(&s.pairs) < 0) goto nomem;
    for (Py_ssize_t w = 0; w < s.nwords; w++) {
        int32_t *x = s.sym + s.start[w];
        for (int32_t i = 0; i + 1 < s.wlen[w]; i++)
            if (add_pair(&s, x[i], x[i + 1], s.freq[w], (int32_t)w, -2) < 0) goto nomem;
    }
    for (size_t i = 0; i < s.ngrown; i++) {
        Pair *p = pairs_find(&s.pairs, key_a(s.grown[i]), key_b(s.grown[i]));
        Entry e = {p->count, key_a(p->key), key_b(p->key)};
        if (heap_push(&s.heap, e) < 0) goto nomem;
    }
    s.ngrown = 0;

    merges = PyList_New(0);
    if (!merges) goto fail;
    int32_t step = 0;
    while (s.tok.n < max_tokens && s.heap.n > 0) {
        Entry top = heap_pop(&s.heap);
        Pair *p = pairs_find(&s.pairs, top.a, top.b);
        int64_t count = p ? p->count : 0;
        if (top.count != count) { /* stale: push back with the true count */
            if (count > 0) {
                top.count = count;
                if (heap_push(&s.heap, top) < 0) goto nomem;
            }
            continue;
        }
        if (count < min_frequency) break;

        int32_t a = top.a, b = top.b, c = tok_concat(&s.tok, a, b);
        if (c < 0) goto nomem;
        PyObject *m = Py_BuildValue("(iii)", a, b, c);
        if (!m || PyList_Append(merges, m) < 0) { Py_XDECREF(m); goto fail; }
        Py_DECREF(m);

        /* take the pair's word list out of the table (the table may grow below) */
        int32_t *where = p->where, nwhere = p->nwhere;
        p->where = NULL;
        p->nwhere = p->capwhere = 0;
        for (int32_t i = 0; i < nwhere; i++)
            if (merge_word(&s, where[i], a, b, c, step) < 0) { free(where); goto nomem; }
        free(where);
        pairs_find(&s.pairs, a, b)->count = 0; /* every occurrence is gone */

        for (size_t i = 0; i < s.ngrown; i++) {
            Pair *q = pairs_find(&s.pairs, key_a(s.grown[i]), key_b(s.grown[i]));
            if (q->count > 0) {
                Entry e = {q->count, key_a(q->key), key_b(q->key)};
                if (heap_push(&s.heap, e) < 0) goto nomem;
            }
        }
        s.ngrown = 0;
        step++;

        if ((step & 255) == 0) {
            if (PyErr_CheckSignals() < 0) goto fail;
            if (callback != Py_None) {
                PyObject *r = PyObject_CallFunction(callback, "i", (int)(s.tok.n - 256));
                if (!r) goto fail;
                Py_DECREF(r);
            }
        }
    }
    if (callback != Py_None) {
        PyObject *r = PyObject_CallFunction(callback, "i", (int)(s.tok.n - 256));
        if (!r) goto fail;
        Py_DECREF(r);
    }
    Py_DECREF(words);
    Py_DECREF(counts);
    state_free(&s);
    return merges;

nomem:
    PyErr_NoMemory();
fail:
    Py_XDECREF(words);
    Py_XDECREF(counts);
    Py_XDECREF(merges);
    state_free(&s);
    return NULL;
}

static PyMethodDef methods[] = {
    {"train", train, METH_VARARGS,
     "train(words, counts, max_tokens, min_frequency, callback=None) -> [(a, b, new), ...]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "lmforge._bpe", "C core of lmforge's BPE trainer.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__bpe(void) { return PyModule_Create(&module); }
