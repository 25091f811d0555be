/* The 3x3, stride-1, padding-1 convolution of a map with few channels (the student's first
 * layer, whose input is the image batch: 1 to 4 channels) and its two gradients, for
 * datadistill/models/image_conv.py.
 *
 * With 3 input channels a pixel's output is 27 multiply-adds per output channel: as a matrix
 * product the inner dimension is 27, too short for the BLAS library's blocking (the matmul +
 * fold form of the input gradient ran at about 40 GFLOP/s where this CPU's single-thread
 * matmul peak is about 95). Here each is one register-blocked loop of multiply-adds:
 *
 *   forward      y[p][o]  = sum_t xp[p + off(t)] * wk[t][o]      (pixels x vectors of o)
 *   weight grad  dwk[t][o] = sum_p xp[p + off(t)] * dy[p][o]     (taps x vectors of o)
 *   input grad   cols[p][t] = sum_o dy[p][o] * wt[o][t] (pixels x vectors of taps), then
 *                added into the padded input at p + off(t) (the transposed forward)
 *
 * Layouts (contiguous, element type REAL = float or double, suffix _f32 / _f64):
 *   xp  (n, h + 2, w + 2, c)   the input, zero-padded by one pixel on every side
 *   wk  (9 c, co)              the filter; row t = (ky * 3 + kx) * c + ci holds w[:, ci, ky, kx]
 *   wt  (co, tp)               wk transposed, zero past its 9 c taps (tp: whole vector pairs)
 *   y, dy (n, h, w, co)        the output and its gradient (a channels_last tensor's memory)
 *   dx  (n, h, w, c)           the input gradient
 * co must be a multiple of the vector's lane count NV (16 floats or 8 doubles cover every
 * build). Every sum runs in a fixed order (one multiply-add per term, in tap, pixel or channel
 * order) that does not depend on where a pixel or a channel falls in a register block or on
 * the vector width, so builds with and without AVX-512 give the same bits.
 */

#include <string.h>
/* Register blocks: 16 accumulators with AVX-512's 32 vector registers, 8 with 16. The
 * forward's 8 pixels x 2 vectors ran 15 % faster than 4 x 4 at CIFAR-10's first layer
 * (Zen 4): more multiply-adds per weight load. */
#if defined(__AVX512F__)
#define VBYTES 64
#define FPX 8  /* forward: pixels per register block (FPX x FVB accumulators) */
#define GVB 2  /* weight gradient: vectors per register block (GTB x GVB accumulators) */
#define IPX 8  /* input gradient: pixels per register block (IPX x 2 accumulators) */
#else
#define VBYTES 32
#define FPX 4
#define GVB 1
#define IPX 4
#endif
#define FVB 2  /* forward: vectors of output channels per register block */
#define GTB 9  /* weight gradient: taps per register block */

#define MAXTAPS 36  /* 9 taps per input channel, at most 4 channels */
/* a += b * c as one fused multiply-add (see winograd_tiles.c) */
#if defined(__GNUC__) && !defined(__clang__)
#define CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define CONTRACT
#endif

/* -- per type -- */

typedef REAL vic_SUFFIX __attribute__((vector_size(VBYTES)));
#define NVI_SUFFIX ((int)(VBYTES / sizeof(REAL)))

static inline vic_SUFFIX ld_SUFFIX(const REAL *p) {
    vic_SUFFIX v;
    memcpy(&v, p, VBYTES);
    return v;
}

static inline void st_SUFFIX(REAL *p, vic_SUFFIX v) { memcpy(p, &v, VBYTES); }

/* Offsets of the 9 c taps from a window's top-left pixel in a padded map of row length
 * wp = w + 2: tap t = (ky * 3 + kx) * c + ci is (ky * wp + kx) * c + ci elements away. */
static void tap_offsets_SUFFIX(long *off, long c, long wp) {
    for (long t = 0; t < 9 * c; t++) {
        long k = t / c, ci = t % c;
        off[t] = ((k / 3) * wp + k % 3) * c + ci;
    }
}

/* y for px pixels (<= FPX) and vb vectors (<= FVB) of output channels: x is the padded map
 * at the first pixel's window, y its output at the first vector. FWD_BODY is the loop of
 * both forms: fwd_full (constant trip counts, the accumulators stay in registers) and
 * fwd_part (the map's last pixels, the channels' last vectors). */
#define FWD_BODY(PX_, VB_) do { \
    vic_SUFFIX acc[FPX][FVB]; \
    for (int p = 0; p < FPX; p++) \
        for (int v = 0; v < FVB; v++) acc[p][v] = (vic_SUFFIX){0}; \
    for (long t = 0; t < taps; t++) { \
        vic_SUFFIX wv[FVB]; \
        for (int v = 0; v < FVB; v++) \
            wv[v] = v < (VB_) ? ld_SUFFIX(wk + t * co + v * NVI_SUFFIX) : (vic_SUFFIX){0}; \
        for (int p = 0; p < FPX; p++) { \
            if (p >= (PX_)) continue; \
            REAL s = x[p * c + off[t]]; \
            for (int v = 0; v < FVB; v++) \
                if (v < (VB_)) acc[p][v] += s * wv[v]; \
        } \
    } \
    for (int p = 0; p < (PX_); p++) \
        for (int v = 0; v < (VB_); v++) st_SUFFIX(y + p * co + v * NVI_SUFFIX, acc[p][v]); \
} while (0)

CONTRACT static void fwd_full_SUFFIX(const REAL *restrict x, const long *restrict off,
                                     long taps, long c, const REAL *restrict wk, long co,
                                     REAL *restrict y) {
    FWD_BODY(FPX, FVB);
}

CONTRACT __attribute__((noinline)) static void fwd_part_SUFFIX(
        const REAL *restrict x, const long *restrict off, long taps, long c,
        const REAL *restrict wk, long co, REAL *restrict y, int px, int vb) {
    FWD_BODY(px, vb);
}
#undef FWD_BODY

CONTRACT void ic_forward_SUFFIX(const REAL *restrict xp, const REAL *restrict wk,
                                REAL *restrict y, long n, long h, long w, long c, long co) {
    long off[MAXTAPS], taps = 9 * c, wp = w + 2;
    tap_offsets_SUFFIX(off, c, wp);
    for (long img = 0; img < n; img++)
    for (long r = 0; r < h; r++) {
        const REAL *xr = xp + (img * (h + 2) + r) * wp * c;
        REAL *yr = y + (img * h + r) * w * co;
        for (long j = 0; j < w; j += FPX) {
            int px = w - j < FPX ? (int)(w - j) : FPX;
            for (long o = 0; o < co; o += FVB * NVI_SUFFIX) {
                int vb = (co - o) / NVI_SUFFIX < FVB ? (int)((co - o) / NVI_SUFFIX) : FVB;
                const REAL *xw = xr + j * c;
                REAL *yw = yr + j * co + o;
                if (px == FPX && vb == FVB)
                    fwd_full_SUFFIX(xw, off, taps, c, wk + o, co, yw);
                else
                    fwd_part_SUFFIX(xw, off, taps, c, wk + o, co, yw, px, vb);
            }
        }
    }
}

/* dwk[t0 .. t0 + tb][o .. o + vb vectors] += the sums over image img's pixels (xi, dyi: the
 * image's padded input and output gradient); two forms, as the forward's. */
#define WGRAD_BODY(TB_, VB_) do { \
    vic_SUFFIX acc[GTB][GVB]; \
    for (int t = 0; t < GTB; t++) \
        for (int v = 0; v < GVB; v++) acc[t][v] = (vic_SUFFIX){0}; \
    for (long r = 0; r < h; r++) \
        for (long j = 0; j < w; j++) { \
            const REAL *x = xi + (r * (w + 2) + j) * c; \
            const REAL *d = dyi + (r * w + j) * co + o; \
            vic_SUFFIX dv[GVB]; \
            for (int v = 0; v < GVB; v++) \
                dv[v] = v < (VB_) ? ld_SUFFIX(d + v * NVI_SUFFIX) : (vic_SUFFIX){0}; \
            for (int t = 0; t < GTB; t++) { \
                if (t >= (TB_)) continue; \
                REAL s = x[off[t0 + t]]; \
                for (int v = 0; v < GVB; v++) \
                    if (v < (VB_)) acc[t][v] += s * dv[v]; \
            } \
        } \
    for (int t = 0; t < (TB_); t++) \
        for (int v = 0; v < (VB_); v++) { \
            REAL *q = dwk + (t0 + t) * co + o + v * NVI_SUFFIX; \
            st_SUFFIX(q, ld_SUFFIX(q) + acc[t][v]); \
        } \
} while (0)

CONTRACT static void wgrad_full_SUFFIX(const REAL *restrict xi, const long *restrict off,
                                       const REAL *restrict dyi, REAL *restrict dwk, long h,
                                       long w, long c, long co, long t0, long o) {
    WGRAD_BODY(GTB, GVB);
}

CONTRACT __attribute__((noinline)) static void wgrad_part_SUFFIX(
        const REAL *restrict xi, const long *restrict off, const REAL *restrict dyi,
        REAL *restrict dwk, long h, long w, long c, long co, long t0, long o, int tb, int vb) {
    WGRAD_BODY(tb, vb);
}
#undef WGRAD_BODY

/* dwk (9 c, co) = the filter gradient, summed image by image in order. */
CONTRACT void ic_weight_grad_SUFFIX(const REAL *restrict xp, const REAL *restrict dy,
                                    REAL *restrict dwk, long n, long h, long w, long c,
                                    long co) {
    long off[MAXTAPS], taps = 9 * c;
    tap_offsets_SUFFIX(off, c, w + 2);
    memset(dwk, 0, (size_t)(taps * co) * sizeof(REAL));
    for (long img = 0; img < n; img++) {
        const REAL *xi = xp + img * (h + 2) * (w + 2) * c;
        const REAL *dyi = dy + img * h * w * co;
        for (long o = 0; o < co; o += GVB * NVI_SUFFIX) {
            int vb = (co - o) / NVI_SUFFIX < GVB ? (int)((co - o) / NVI_SUFFIX) : GVB;
            for (long t0 = 0; t0 < taps; t0 += GTB) {
                int tb = taps - t0 < GTB ? (int)(taps - t0) : GTB;
                if (tb == GTB && vb == GVB)
                    wgrad_full_SUFFIX(xi, off, dyi, dwk, h, w, c, co, t0, o);
                else
                    wgrad_part_SUFFIX(xi, off, dyi, dwk, h, w, c, co, t0, o, tb, vb);
            }
        }
    }
}

/* cols[p][t] = sum_o dy[p][o] * wt[o][t] for px pixels (<= IPX, the rest skipped) and two
 * vectors of taps from t0: dy's values broadcast, the taps in the vector lanes, so no sum
 * crosses lanes. d is dy at the first pixel, wt the transposed filter (co, tp), cols the
 * row's (w, tp) block at the first pixel. Two forms, as the forward's. */
#define IGRAD_BODY(PX_) do { \
    vic_SUFFIX acc[IPX][2]; \
    for (int p = 0; p < IPX; p++) acc[p][0] = acc[p][1] = (vic_SUFFIX){0}; \
    for (long o = 0; o < co; o++) { \
        vic_SUFFIX w0 = ld_SUFFIX(wt + o * tp + t0); \
        vic_SUFFIX w1 = ld_SUFFIX(wt + o * tp + t0 + NVI_SUFFIX); \
        for (int p = 0; p < IPX; p++) { \
            if (p >= (PX_)) continue; \
            REAL s = d[p * co + o]; \
            acc[p][0] += s * w0; \
            acc[p][1] += s * w1; \
        } \
    } \
    for (int p = 0; p < (PX_); p++) { \
        st_SUFFIX(cols + p * tp + t0, acc[p][0]); \
        st_SUFFIX(cols + p * tp + t0 + NVI_SUFFIX, acc[p][1]); \
    } \
} while (0)

CONTRACT static void igrad_full_SUFFIX(const REAL *restrict d, const REAL *restrict wt,
                                       REAL *restrict cols, long co, long tp, long t0) {
    IGRAD_BODY(IPX);
}

CONTRACT __attribute__((noinline)) static void igrad_part_SUFFIX(
        const REAL *restrict d, const REAL *restrict wt, REAL *restrict cols, long co,
        long tp, long t0, int px) {
    IGRAD_BODY(px);
}
#undef IGRAD_BODY

/* dx (n, h, w, c). A row's cols (w, tp) are computed in register blocks, then added into
 * ``pad``, a padded copy of the image ((h + 2) (w + 2) c elements), tap by tap and pixel by
 * pixel; pad's inside is then copied out. wt (co, tp) is the filter transposed, its 9 c
 * taps padded with zeros to tp, a multiple of two vectors; cols holds w tp elements. */
CONTRACT void ic_input_grad_SUFFIX(const REAL *restrict dy, const REAL *restrict wt,
                                   REAL *restrict dx, REAL *restrict pad, REAL *restrict cols,
                                   long n, long h, long w, long c, long co, long tp) {
    long off[MAXTAPS], taps = 9 * c, wp = w + 2;
    tap_offsets_SUFFIX(off, c, wp);
    for (long img = 0; img < n; img++) {
        memset(pad, 0, (size_t)((h + 2) * wp * c) * sizeof(REAL));
        const REAL *dyi = dy + img * h * w * co;
        for (long r = 0; r < h; r++) {
            for (long j = 0; j < w; j += IPX) {
                int px = w - j < IPX ? (int)(w - j) : IPX;
                const REAL *d = dyi + (r * w + j) * co;
                for (long t0 = 0; t0 < tp; t0 += 2 * NVI_SUFFIX) {
                    if (px == IPX) igrad_full_SUFFIX(d, wt, cols + j * tp, co, tp, t0);
                    else igrad_part_SUFFIX(d, wt, cols + j * tp, co, tp, t0, px);
                }
            }
            REAL *row = pad + r * wp * c;
            for (long t = 0; t < taps; t++) {
                const REAL *ct = cols + t;
                REAL *x = row + off[t];
                for (long j = 0; j < w; j++) x[j * c] += ct[j * tp];
            }
        }
        REAL *dxi = dx + img * h * w * c;
        for (long r = 0; r < h; r++)
            memcpy(dxi + r * w * c, pad + ((r + 1) * wp + 1) * c, (size_t)(w * c) * sizeof(REAL));
    }
}
