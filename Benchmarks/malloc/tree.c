// Small-object program: trees and graphs. Models compilers, interpreters and solvers (an AST, a Barnes–Hut octree, a
// BDD package, a symbol graph): one thread builds many short-lived binary trees of 32-byte nodes next to a
// long-lived one, walks and frees them, then builds a graph whose 60 000 nodes (48 B) own adjacency arrays grown
// with realloc as edges arrive (8 B to a few hundred bytes), walks it, and frees it all. Almost every block is
// 16–256 B and most die young, in the order they were built or its reverse.
// Stresses: the small-size fast paths (malloc and free of a handful of size classes at a high rate), locality of
// consecutive allocations, small realloc growth, and the per-object memory overhead of a large live tree.
#include "bench.h"

typedef struct node {
    struct node *left, *right;
    long value;
    long depth;
} node_t;

static node_t *build(int depth, uint64_t *state) {
    node_t *n = malloc(sizeof *n);
    n->value = (long)(bench_next(state) & 0xFFFF);
    n->depth = depth;
    n->left = depth > 0 ? build(depth - 1, state) : NULL;
    n->right = depth > 0 ? build(depth - 1, state) : NULL;
    return n;
}

static unsigned long long walk_and_free(node_t *n) {
    if (n == NULL) return 0;
    unsigned long long sum = (unsigned long long)n->value + walk_and_free(n->left) + walk_and_free(n->right);
    free(n);
    return sum;
}

static unsigned long long walk(const node_t *n) {
    return n == NULL ? 0 : (unsigned long long)n->value + walk(n->left) + walk(n->right);
}

typedef struct vertex {
    struct vertex **edges;
    long count, capacity;
    long mark;
    long weight;
    long pad;
} vertex_t;

int main(int argc, char **argv) {
    const long SCALE = bench_count(argc, argv, 1);  // argument: passes over the tree phase and the graph phase
    enum { MAX_DEPTH = 16, LONG_LIVED_DEPTH = 16, VERTICES = 60000, EDGES = 400000 };
    uint64_t state = 0x7EEULL;
    unsigned long long checksum = 0;
    double start = bench_now_ms();
    for (long pass = 0; pass < SCALE; pass++) {
        node_t *long_lived = build(LONG_LIVED_DEPTH, &state);
        for (int depth = 4; depth <= MAX_DEPTH; depth += 2) {
            long iterations = 1L << (MAX_DEPTH - depth + 4);
            for (long i = 0; i < iterations; i++) checksum += walk_and_free(build(depth, &state));
        }
        checksum += walk(long_lived);
        checksum += walk_and_free(long_lived);

        vertex_t **vertices = malloc(sizeof(vertex_t *) * VERTICES);
        for (long v = 0; v < VERTICES; v++) {
            vertices[v] = calloc(1, sizeof(vertex_t));
            vertices[v]->weight = v;
        }
        for (long e = 0; e < EDGES; e++) {
            uint64_t r = bench_next(&state);
            // A skewed choice of source: a few hubs collect many edges, most vertices a handful.
            long from = (long)((r % VERTICES) * ((r >> 20) % VERTICES) / VERTICES);
            vertex_t *a = vertices[from];
            if (a->count == a->capacity) {
                a->capacity = a->capacity ? a->capacity * 2 : 1;
                a->edges = realloc(a->edges, sizeof(vertex_t *) * (size_t)a->capacity);
            }
            a->edges[a->count++] = vertices[(r >> 40) % VERTICES];
        }
        for (long v = 0; v < VERTICES; v++)
            for (long k = 0; k < vertices[v]->count; k++) checksum += (unsigned long long)vertices[v]->edges[k]->weight;
        for (long v = VERTICES - 1; v >= 0; v--) {
            free(vertices[v]->edges);
            free(vertices[v]);
        }
        free(vertices);
    }
    bench_report("tree", start, checksum);
    return 0;
}
