/* Winograd F(4x4, 3x3) tile transforms for datadistill/models/winograd.py.
 *
 * Each function is one pass over a channels_last map: it reads the tiles of every image,
 * transforms them with the sparse matrices of Lavin & Gray (interpolation points 0, +-1, +-2)
 * as a few additions per element, and writes the result where the next step wants it. The
 * PyTorch form of the same transforms (winograd.py, used where no C compiler is found) pads,
 * gathers the overlapping tiles into a copy and multiplies by the dense 36x36 Kronecker matrix:
 * three passes, and 3x the arithmetic. The values are the same up to float rounding.
 *
 * Layouts (all contiguous, element type REAL = float or double, one copy of each function
 * per type, suffix _f32 / _f64):
 *   map   (n, h, w, c)        a channels_last tensor's memory
 *   tiles (36, n*th*tw, c)    th = ceil(h/4), tw = ceil(w/4); tile index (image, row, column)
 * Channels are the innermost axis, taken in blocks of CB as one GCC vector each: a tile's 36
 * blocks pass through registers and one local row block, not through copies in memory.
 *
 * tile_products: the 36 matrix products between the transforms, (tiles x Cin) @ (Cin x Cout)
 * and their transposed forms. On CPUs where the BLAS library does not run its widest kernels
 * (MKL on AMD EPYC measured 56-92 GFLOP/s where oneDNN's convolutions reach 113) a plain
 * register-blocked loop in GCC's vector extensions is 10-30 % faster at these sizes; each
 * element is one sum over k in order, so the result does not depend on the blocking.
 */

/* The transform domain's products (tile_products below): register blocks of MR rows times two
 * vectors of columns. With AVX-512 there are 32 vector registers, so 12 rows (24 accumulators);
 * elsewhere 16, so 6 rows, each block passing over a panel of the right factor that is held
 * in the first-level cache (product_ below). */
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#define VBYTES 64
#define MR 12
#else
#define VBYTES 32
#define MR 6
#endif
/* The products' accumulations are written a += b * c to be fused into one multiply-add (one
 * rounding) per term: GCC does so only when asked (ISO C mode turns contraction off), clang by
 * default within an expression. The other loops of this file are not contracted. */
#if defined(__GNUC__) && !defined(__clang__)
#define CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define CONTRACT
#endif

/* The three transforms of one line of 6 or 4 values, written with accessors: O(i) is the i-th
 * output and I(i) the i-th input, each an lvalue / value for one channel (the caller's loop
 * variable k), so that one macro serves a tile's rows and its columns wherever they live. */

/* 6 inputs -> 6 outputs of B^T (input transform). */
#define BT6(O, I) do { \
    O(0) = 4 * I(0) - 5 * I(2) + I(4); \
    O(1) = -4 * (I(1) + I(2)) + I(3) + I(4); \
    O(2) = 4 * (I(1) - I(2)) - I(3) + I(4); \
    O(3) = 2 * (I(3) - I(1)) - I(2) + I(4); \
    O(4) = 2 * (I(1) - I(3)) - I(2) + I(4); \
    O(5) = 4 * I(1) - 5 * I(3) + I(5); \
} while (0)

/* 6 inputs -> 4 outputs of A^T (output transform). */
#define AT4(O, I) do { \
    __typeof__(I(0)) s12 = I(1) + I(2), d12 = I(1) - I(2); \
    __typeof__(I(0)) s34 = I(3) + I(4), d34 = I(3) - I(4); \
    O(0) = I(0) + s12 + s34; \
    O(1) = d12 + 2 * d34; \
    O(2) = s12 + 4 * s34; \
    O(3) = d12 + 8 * d34 + I(5); \
} while (0)

/* 4 inputs -> 6 outputs of A (the output gradient's transform, for the filter gradient). */
#define A6(O, I) do { \
    __typeof__(I(0)) s02 = I(0) + I(2), s13 = I(1) + I(3); \
    __typeof__(I(0)) f02 = I(0) + 4 * I(2), f13 = 2 * I(1) + 8 * I(3); \
    O(0) = I(0); \
    O(1) = s02 + s13; \
    O(2) = s02 - s13; \
    O(3) = f02 + f13; \
    O(4) = f02 - f13; \
    O(5) = I(3); \
} while (0)

/* -- per type -- */

/* One block of CB channels as a GCC vector of one register's width (VBYTES: 16 floats with
 * AVX-512, 8 with AVX2). Blocks twice as wide, split by the compiler into two registers,
 * spilled the transforms' row blocks on AVX2 and ran the gradient tiles and the filter
 * gradient at half this speed. The transforms below compute on whole blocks, element by
 * element in the order the macros write, so each channel's value is the one a scalar loop
 * gives, bit for bit, whatever the block's width. */
#undef CB
#define CB ((long)(VBYTES / sizeof(REAL)))
typedef REAL cv_SUFFIX __attribute__((vector_size(VBYTES)));

/* Channels c0 .. c0 + cb of a pixel (or of a tile row) at p, zero past cb. */
static inline cv_SUFFIX load_SUFFIX(const REAL *restrict p, long cb) {
    cv_SUFFIX v;
    if (cb == CB) {
        memcpy(&v, p, sizeof v);
    } else {
        REAL tmp[CB];
        for (int k = 0; k < CB; k++) tmp[k] = k < cb ? p[k] : 0;
        memcpy(&v, tmp, sizeof v);
    }
    return v;
}

/* Writes the first cb channels of v to p. */
static inline void store_SUFFIX(REAL *restrict p, cv_SUFFIX v, long cb) {
    if (cb == CB) {
        memcpy(p, &v, sizeof v);
    } else {
        REAL tmp[CB];
        memcpy(tmp, &v, sizeof v);
        for (long k = 0; k < cb; k++) p[k] = tmp[k];
    }
}

/* d[j] = pixel (row, col0 + j) of image img of map x (n, h, w, c), channels c0 .. c0 + cb,
 * for j < size; zero past the map's edges (the padding). */
static inline void gather_row_SUFFIX(cv_SUFFIX *restrict d, const REAL *restrict x, int size,
                                     long img, long row, long col0, long h, long w, long c,
                                     long c0, long cb) {
    for (int j = 0; j < size; j++) {
        long col = col0 + j;
        if (row < 0 || row >= h || col < 0 || col >= w)
            d[j] = (cv_SUFFIX){0};
        else
            d[j] = load_SUFFIX(x + ((img * h + row) * w + col) * c + c0, cb);
    }
}

/* Each transform runs a tile's rows into a local block r, then r's columns to where they go. */

/* tiles[36][T][c] = B^T d B for the 6x6 tiles (stride 4, offset -1: padding 1) of map x. */
void input_tiles_SUFFIX(const REAL *restrict x, REAL *restrict tiles, long n, long h, long w, long c) {
    long th = (h + 3) / 4, tw = (w + 3) / 4, T = n * th * tw;
    for (long img = 0; img < n; img++)
    for (long ti = 0; ti < th; ti++)
    for (long tj = 0; tj < tw; tj++) {
        long t = (img * th + ti) * tw + tj;
        for (long c0 = 0; c0 < c; c0 += CB) {
            long cb = c - c0 < CB ? c - c0 : CB;
            cv_SUFFIX r[6][6];
            /* columns of each row (the right factor B), then rows (the left factor B^T) */
            for (int i = 0; i < 6; i++) {
                cv_SUFFIX d[6];
                gather_row_SUFFIX(d, x, 6, img, 4 * ti - 1 + i, 4 * tj - 1, h, w, c, c0, cb);
#define O_(j) r[i][j]
#define I_(j) d[j]
                BT6(O_, I_);
#undef O_
#undef I_
            }
            for (int b = 0; b < 6; b++) {
                cv_SUFFIX res[6];
#define O_(a) res[a]
#define I_(a) r[a][b]
                BT6(O_, I_);
#undef O_
#undef I_
                for (int a = 0; a < 6; a++)
                    store_SUFFIX(tiles + ((long)(6 * a + b) * T + t) * c + c0, res[a], cb);
            }
        }
    }
}

/* map y (n, h, w, co) = A^T m A for the transform-domain products m[36][T][co] (tiles past
 * the map's edge are cropped). */
void output_tiles_SUFFIX(const REAL *restrict m, REAL *restrict y, long n, long h, long w, long co) {
    long th = (h + 3) / 4, tw = (w + 3) / 4, T = n * th * tw;
    for (long img = 0; img < n; img++)
    for (long ti = 0; ti < th; ti++)
    for (long tj = 0; tj < tw; tj++) {
        long t = (img * th + ti) * tw + tj;
        for (long c0 = 0; c0 < co; c0 += CB) {
            long cb = co - c0 < CB ? co - c0 : CB;
            cv_SUFFIX r[6][4];
            for (int a = 0; a < 6; a++) {
                cv_SUFFIX v[6];
                for (int j = 0; j < 6; j++)
                    v[j] = load_SUFFIX(m + ((long)(6 * a + j) * T + t) * co + c0, cb);
#define O_(j) r[a][j]
#define I_(j) v[j]
                AT4(O_, I_);
#undef O_
#undef I_
            }
            for (int b = 0; b < 4; b++) {
                long cc = 4 * tj + b;
                if (cc >= w) continue;
                cv_SUFFIX res[4];
#define O_(i) res[i]
#define I_(a) r[a][b]
                AT4(O_, I_);
#undef O_
#undef I_
                for (int i = 0; i < 4 && 4 * ti + i < h; i++)
                    store_SUFFIX(y + ((img * h + 4 * ti + i) * w + cc) * co + c0, res[i], cb);
            }
        }
    }
}

/* tiles[36][T][co] = A g A^T for the 4x4 tiles of the output gradient g (n, h, w, co), zero
 * past the map's edge: the filter gradient's right-hand factor. */
void grad_tiles_SUFFIX(const REAL *restrict g, REAL *restrict tiles, long n, long h, long w, long co) {
    long th = (h + 3) / 4, tw = (w + 3) / 4, T = n * th * tw;
    for (long img = 0; img < n; img++)
    for (long ti = 0; ti < th; ti++)
    for (long tj = 0; tj < tw; tj++) {
        long t = (img * th + ti) * tw + tj;
        for (long c0 = 0; c0 < co; c0 += CB) {
            long cb = co - c0 < CB ? co - c0 : CB;
            cv_SUFFIX r[4][6];
            for (int i = 0; i < 4; i++) {
                cv_SUFFIX d[4];
                gather_row_SUFFIX(d, g, 4, img, 4 * ti + i, 4 * tj, h, w, co, c0, cb);
#define O_(j) r[i][j]
#define I_(j) d[j]
                A6(O_, I_);
#undef O_
#undef I_
            }
            for (int b = 0; b < 6; b++) {
                cv_SUFFIX res[6];
#define O_(a) res[a]
#define I_(i) r[i][b]
                A6(O_, I_);
#undef O_
#undef I_
                for (int a = 0; a < 6; a++)
                    store_SUFFIX(tiles + ((long)(6 * a + b) * T + t) * co + c0, res[a], cb);
            }
        }
    }
}

/* C_b (+)= op(A_b) B_b for b < nb, every operand contiguous: op(A_b) = A_b (M x K) or, with
 * ta, A_b^T for A_b stored (K x M); B_b (K x N); C_b (M x N), added to with acc, else
 * overwritten. N must be a multiple of two vectors (2 * VBYTES / sizeof(REAL)). */
typedef REAL vec_SUFFIX __attribute__((vector_size(VBYTES)));
#define NV_SUFFIX ((long)(VBYTES / sizeof(REAL)))

CONTRACT static inline __attribute__((always_inline)) void block_SUFFIX(int ta, int acc, const REAL *restrict A, long lda,
                                const REAL *restrict B, long ldb, REAL *restrict C, long ldc,
                                long K, int mr) {
    vec_SUFFIX c0[MR], c1[MR];
    for (int r = 0; r < MR; r++) {
        if (acc && r < mr) {
            memcpy(&c0[r], C + r * ldc, VBYTES);
            memcpy(&c1[r], C + r * ldc + NV_SUFFIX, VBYTES);
        } else {
            c0[r] = (vec_SUFFIX){0};
            c1[r] = (vec_SUFFIX){0};
        }
    }
    for (long k = 0; k < K; k++) {
        vec_SUFFIX b0, b1;
        memcpy(&b0, B + k * ldb, VBYTES);
        memcpy(&b1, B + k * ldb + NV_SUFFIX, VBYTES);
        for (int r = 0; r < MR; r++) {
            if (r < mr) {
                REAL a = ta ? A[k * lda + r] : A[r * lda + k];
                c0[r] += a * b0;
                c1[r] += a * b1;
            }
        }
    }
    for (int r = 0; r < mr; r++) {
        memcpy(C + r * ldc, &c0[r], VBYTES);
        memcpy(C + r * ldc + NV_SUFFIX, &c1[r], VBYTES);
    }
}

/* C (+)= op(A) P for every block of MR rows of M, over one panel P (K rows by two vectors,
 * row stride ldp) of the right factor; C's rows N apart. */
CONTRACT static void rows_SUFFIX(int ta, int acc, const REAL *restrict A, long lda,
                                 const REAL *restrict P, long ldp, REAL *restrict C, long M,
                                 long K, long N) {
    for (long i = 0; i < M; i += MR) {
        const REAL *a = ta ? A + i : A + i * lda;
        if (M - i >= MR) {  /* a full block: constant trip counts */
            if (ta) block_SUFFIX(1, acc, a, lda, P, ldp, C + i * N, N, K, MR);
            else block_SUFFIX(0, acc, a, lda, P, ldp, C + i * N, N, K, MR);
        } else {
            block_SUFFIX(ta, acc, a, lda, P, ldp, C + i * N, N, K, (int)(M - i));
        }
    }
}

/* The right factor's panels (K rows by two vectors) are copied into ``panel`` before the rows
 * pass: read in place, a panel's rows lie N values apart and fall into a few sets of the
 * first-level cache, which cannot hold them, so every block of rows read the panel again
 * from the second level. With no buffer (panel NULL) they are read in place. The sums are
 * the same in either form. */
CONTRACT static void product_SUFFIX(int ta, int acc, const REAL *restrict A, const REAL *restrict B,
                           REAL *restrict C, long M, long K, long N, REAL *restrict panel) {
    for (long j = 0; j < N; j += 2 * NV_SUFFIX) {
        if (panel) {
            for (long k = 0; k < K; k++)
                memcpy(panel + 2 * k * NV_SUFFIX, B + k * N + j, 2 * VBYTES);
            rows_SUFFIX(ta, acc, A, ta ? M : K, panel, 2 * NV_SUFFIX, C + j, M, K, N);
        } else {
            rows_SUFFIX(ta, acc, A, ta ? M : K, B + j, N, C + j, M, K, N);
        }
    }
}

CONTRACT void tile_products_SUFFIX(int ta, int acc, const REAL *restrict A, const REAL *restrict B,
                          REAL *restrict C, long nb, long M, long K, long N) {
    char *mem = malloc(2 * VBYTES * (K > 0 ? K : 1) + 64);
    REAL *panel = mem ? (REAL *)(mem + (64 - (size_t)mem % 64) % 64) : 0;  /* 64-byte aligned */
    for (long b = 0; b < nb; b++)
        product_SUFFIX(ta, acc, A + b * M * K, B + b * K * N, C + b * M * N, M, K, N, panel);
    free(mem);
}

/* C_b (+)= A_b U_b for b < 36 with U = G f G^T, the filter's transform, made here panel by
 * panel instead of being stored: A (36, M, K) and C (36, M, N) contiguous; wt (9, K, N) the
 * filter's taps, contiguous; g (36, 9) G's Kronecker form (row b: U_b = sum_t g[b][t] wt[t]).
 * Each panel of U_b, K rows by two vectors, is summed over its taps in order (zeros skipped,
 * one multiply-add per tap) into a buffer that stays in the first-level cache and serves
 * every row of A_b: the transform costs no pass over memory. N a multiple of two vectors. */
CONTRACT void filter_products_SUFFIX(int acc, const REAL *restrict A, const REAL *restrict wt,
                                     const REAL *restrict g, REAL *restrict C, long M, long K,
                                     long N) {
    REAL *panel = malloc(VBYTES * 2 * (K > 0 ? K : 1));  /* K x two vectors */
    if (!panel) return;
    for (int b = 0; b < 36; b++) {
        const REAL *Ab = A + b * M * K;
        REAL *Cb = C + b * M * N;
        int taps[9], nt = 0;
        for (int t = 0; t < 9; t++)
            if (g[b * 9 + t] != 0) taps[nt++] = t;
        for (long j = 0; j < N; j += 2 * NV_SUFFIX) {
            for (long k = 0; k < K; k++) {
                vec_SUFFIX s0 = {0}, s1 = {0};
                for (int q = 0; q < nt; q++) {
                    const REAL *src = wt + (taps[q] * K + k) * N + j;
                    vec_SUFFIX v0, v1;
                    memcpy(&v0, src, VBYTES);
                    memcpy(&v1, src + NV_SUFFIX, VBYTES);
                    REAL c = g[b * 9 + taps[q]];
                    s0 = s0 + c * v0;
                    s1 = s1 + c * v1;
                }
                memcpy(panel + 2 * k * NV_SUFFIX, &s0, VBYTES);  /* malloc: not vector-aligned */
                memcpy(panel + (2 * k + 1) * NV_SUFFIX, &s1, VBYTES);
            }
            rows_SUFFIX(0, acc, Ab, K, panel, 2 * NV_SUFFIX, Cb + j, M, K, N);
        }
    }
    free(panel);
}

/* dw (co, c, 3, 3) contiguous = G^T dU per channel pair, dU (36, co, c) contiguous: the
 * filter gradient out of the transform domain, written in the filter's own layout. g as in
 * filter_products; each tap's value is summed over the 36 points in order (zeros skipped). */
void filter_grad_SUFFIX(const REAL *restrict du, const REAL *restrict g, REAL *restrict dw,
                        long co, long c) {
    long plane = co * c;
    for (long o = 0; o < co; o++)
        for (long i0 = 0; i0 < c; i0 += CB) {
            long cb = c - i0 < CB ? c - i0 : CB;
            cv_SUFFIX r[9] = {{0}};
            for (int b = 0; b < 36; b++) {
                cv_SUFFIX v = load_SUFFIX(du + b * plane + o * c + i0, cb);
                for (int t = 0; t < 9; t++) {
                    REAL k = g[b * 9 + t];
                    if (k != 0) r[t] = r[t] + k * v;
                }
            }
            REAL *out = dw + (o * c + i0) * 9;
            for (int t = 0; t < 9; t++)
                for (long j = 0; j < cb; j++) out[j * 9 + t] = r[t][j];
        }
}
