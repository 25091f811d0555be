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
 * Channels are the innermost loop, in blocks of CB, so the compiler vectorises every line.
 *
 * tile_products: the 36 matrix products between the transforms, (tiles x Cin) @ (Cin x Cout)
 * and their transposed forms. On CPUs where the BLAS library does not run its widest kernels
 * (MKL on AMD EPYC measured 56-92 GFLOP/s where oneDNN's convolutions reach 113) a plain
 * register-blocked loop in GCC's vector extensions is 10-30 % faster at these sizes; each
 * element is one sum over k in order, so the result does not depend on the blocking.
 */

#define CB 16

/* The transform domain's products (tile_products below): register blocks of MR rows times two
 * vectors of columns. With AVX-512 there are 32 vector registers, so 12 rows (24 accumulators);
 * elsewhere 16, so 6 rows. Rows are taken in blocks of MB, so a block of the left factor and a
 * panel of the right one stay in the first-level cache while they are used. */
#include <string.h>
#if defined(__AVX512F__)
#define VBYTES 64
#define MR 12
#else
#define VBYTES 32
#define MR 6
#endif
#define MB 36
/* The products' accumulations are written a += b * c to be fused into one multiply-add (one
 * rounding) per term: GCC does so only when asked (ISO C mode turns contraction off), clang by
 * default within an expression. The other loops of this file are not contracted. */
#if defined(__GNUC__) && !defined(__clang__)
#define CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define CONTRACT
#endif

/* 6 inputs -> 6 outputs of B^T (input transform); d and r are [6][CB]. */
#define BT6(r, d, k) do { \
    r[0][k] = 4 * d[0][k] - 5 * d[2][k] + d[4][k]; \
    r[1][k] = -4 * (d[1][k] + d[2][k]) + d[3][k] + d[4][k]; \
    r[2][k] = 4 * (d[1][k] - d[2][k]) - d[3][k] + d[4][k]; \
    r[3][k] = 2 * (d[3][k] - d[1][k]) - d[2][k] + d[4][k]; \
    r[4][k] = 2 * (d[1][k] - d[3][k]) - d[2][k] + d[4][k]; \
    r[5][k] = 4 * d[1][k] - 5 * d[3][k] + d[5][k]; \
} while (0)

/* 6 inputs -> 4 outputs of A^T (output transform). */
#define AT4(r, m, k) do { \
    REAL s12 = m[1][k] + m[2][k], d12 = m[1][k] - m[2][k]; \
    REAL s34 = m[3][k] + m[4][k], d34 = m[3][k] - m[4][k]; \
    r[0][k] = m[0][k] + s12 + s34; \
    r[1][k] = d12 + 2 * d34; \
    r[2][k] = s12 + 4 * s34; \
    r[3][k] = d12 + 8 * d34 + m[5][k]; \
} while (0)

/* 4 inputs -> 6 outputs of A (the output gradient's transform, for the filter gradient). */
#define A6(r, d, k) do { \
    REAL s02 = d[0][k] + d[2][k], s13 = d[1][k] + d[3][k]; \
    REAL f02 = d[0][k] + 4 * d[2][k], f13 = 2 * d[1][k] + 8 * d[3][k]; \
    r[0][k] = d[0][k]; \
    r[1][k] = s02 + s13; \
    r[2][k] = s02 - s13; \
    r[3][k] = f02 + f13; \
    r[4][k] = f02 - f13; \
    r[5][k] = d[3][k]; \
} while (0)

/* -- per type -- */

/* Copies of one channel block; a full block has a constant length, so it compiles to vector
 * moves (a variable-length loop would become a call to memcpy per block). */
static inline void load_SUFFIX(REAL *restrict dst, const REAL *restrict src, long cb) {
    if (cb == CB) {
        for (int k = 0; k < CB; k++) dst[k] = src[k];
    } else {
        for (int k = 0; k < CB; k++) dst[k] = k < cb ? src[k] : 0;
    }
}

/* d[i * size + j] = pixel (row0 + i, col0 + j) of image img of map x (n, h, w, c), channels
 * c0 .. c0 + cb; zero past the map's edges (the padding). */
static inline void gather_SUFFIX(REAL (*restrict d)[CB], const REAL *restrict x, int size,
                                 long img, long row0, long col0, long h, long w, long c,
                                 long c0, long cb) {
    for (int i = 0; i < size; i++) {
        long row = row0 + i;
        for (int j = 0; j < size; j++) {
            long col = col0 + j;
            if (row < 0 || row >= h || col < 0 || col >= w)
                for (int k = 0; k < CB; k++) d[i * size + j][k] = 0;
            else
                load_SUFFIX(d[i * size + j], x + ((img * h + row) * w + col) * c + c0, cb);
        }
    }
}

static inline void store_SUFFIX(REAL *restrict dst, const REAL *restrict src, long cb) {
    if (cb == CB) {
        for (int k = 0; k < CB; k++) dst[k] = src[k];
    } else {
        for (long k = 0; k < cb; k++) dst[k] = src[k];
    }
}

/* tiles[36][T][c] = B^T d B for the 6x6 tiles (stride 4, offset -1: padding 1) of map x. */
void input_tiles_SUFFIX(const REAL *restrict x, REAL *restrict tiles, long n, long h, long w, long c) {
    long th = (h + 3) / 4, tw = (w + 3) / 4, T = n * th * tw;
    REAL d[6][6][CB], r[6][6][CB], o[6][6][CB];
    for (long img = 0; img < n; img++)
    for (long ti = 0; ti < th; ti++)
    for (long tj = 0; tj < tw; tj++) {
        long t = (img * th + ti) * tw + tj;
        for (long c0 = 0; c0 < c; c0 += CB) {
            long cb = c - c0 < CB ? c - c0 : CB;
            gather_SUFFIX(d[0], x, 6, img, 4 * ti - 1, 4 * tj - 1, h, w, c, c0, cb);
            /* columns of each row (the right factor B), then rows (the left factor B^T) */
            for (int i = 0; i < 6; i++)
                for (int k = 0; k < CB; k++) BT6(r[i], d[i], k);
            for (int b = 0; b < 6; b++) {
                REAL col[6][CB], res[6][CB];
                for (int i = 0; i < 6; i++)
                    for (int k = 0; k < CB; k++) col[i][k] = r[i][b][k];
                for (int k = 0; k < CB; k++) BT6(res, col, k);
                for (int a = 0; a < 6; a++)
                    for (int k = 0; k < CB; k++) o[a][b][k] = res[a][k];
            }
            for (int e = 0; e < 36; e++) {
                store_SUFFIX(tiles + ((long)e * T + t) * c + c0, o[e / 6][e % 6], cb);
            }
        }
    }
}

/* map y (n, h, w, co) = A^T m A for the transform-domain products m[36][T][co] (tiles past
 * the map's edge are cropped). */
void output_tiles_SUFFIX(const REAL *restrict m, REAL *restrict y, long n, long h, long w, long co) {
    long th = (h + 3) / 4, tw = (w + 3) / 4, T = n * th * tw;
    REAL v[6][6][CB], r[6][4][CB];
    for (long img = 0; img < n; img++)
    for (long ti = 0; ti < th; ti++)
    for (long tj = 0; tj < tw; tj++) {
        long t = (img * th + ti) * tw + tj;
        for (long c0 = 0; c0 < co; c0 += CB) {
            long cb = co - c0 < CB ? co - c0 : CB;
            for (int e = 0; e < 36; e++)
                load_SUFFIX(v[e / 6][e % 6], m + ((long)e * T + t) * co + c0, cb);
            for (int a = 0; a < 6; a++)
                for (int k = 0; k < CB; k++) AT4(r[a], v[a], k);
            for (int b = 0; b < 4; b++) {
                REAL col[6][CB], res[4][CB];
                for (int a = 0; a < 6; a++)
                    for (int k = 0; k < CB; k++) col[a][k] = r[a][b][k];
                for (int k = 0; k < CB; k++) AT4(res, col, k);
                long cc = 4 * tj + b;
                if (cc >= w) continue;
                for (int a = 0; a < 4; a++) {
                    long row = 4 * ti + a;
                    if (row >= h) break;
                    store_SUFFIX(y + ((img * h + row) * w + cc) * co + c0, res[a], cb);
                }
            }
        }
    }
}

/* tiles[36][T][co] = A g A^T for the 4x4 tiles of the output gradient g (n, h, w, co), zero
 * past the map's edge: the filter gradient's right-hand factor. */
void grad_tiles_SUFFIX(const REAL *restrict g, REAL *restrict tiles, long n, long h, long w, long co) {
    long th = (h + 3) / 4, tw = (w + 3) / 4, T = n * th * tw;
    REAL d[4][4][CB], r[4][6][CB];
    for (long img = 0; img < n; img++)
    for (long ti = 0; ti < th; ti++)
    for (long tj = 0; tj < tw; tj++) {
        long t = (img * th + ti) * tw + tj;
        for (long c0 = 0; c0 < co; c0 += CB) {
            long cb = co - c0 < CB ? co - c0 : CB;
            gather_SUFFIX(d[0], g, 4, img, 4 * ti, 4 * tj, h, w, co, c0, cb);
            for (int i = 0; i < 4; i++)
                for (int k = 0; k < CB; k++) A6(r[i], d[i], k);
            for (int b = 0; b < 6; b++) {
                REAL col[4][CB], res[6][CB];
                for (int i = 0; i < 4; i++)
                    for (int k = 0; k < CB; k++) col[i][k] = r[i][b][k];
                for (int k = 0; k < CB; k++) A6(res, col, k);
                for (int a = 0; a < 6; a++)
                    store_SUFFIX(tiles + ((long)(a * 6 + b) * T + t) * co + c0, res[a], cb);
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

CONTRACT static void product_SUFFIX(int ta, int acc, const REAL *restrict A, const REAL *restrict B,
                           REAL *restrict C, long M, long K, long N) {
    long lda = ta ? M : K;
    for (long i0 = 0; i0 < M; i0 += MB) {
        long i1 = i0 + MB < M ? i0 + MB : M;
        for (long j = 0; j < N; j += 2 * NV_SUFFIX)
            for (long i = i0; i < i1; i += MR) {
                const REAL *a = ta ? A + i : A + i * lda;
                if (i1 - i >= MR) {  /* a full block: constant trip counts */
                    if (ta) block_SUFFIX(1, acc, a, lda, B + j, N, C + i * N + j, N, K, MR);
                    else block_SUFFIX(0, acc, a, lda, B + j, N, C + i * N + j, N, K, MR);
                } else {
                    block_SUFFIX(ta, acc, a, lda, B + j, N, C + i * N + j, N, K, (int)(i1 - i));
                }
            }
    }
}

CONTRACT void tile_products_SUFFIX(int ta, int acc, const REAL *restrict A, const REAL *restrict B,
                          REAL *restrict C, long nb, long M, long K, long N) {
    for (long b = 0; b < nb; b++)
        product_SUFFIX(ta, acc, A + b * M * K, B + b * K * N, C + b * M * N, M, K, N);
}
