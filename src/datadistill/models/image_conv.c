/* The 3x3, stride-1, padding-1 convolution of a map with few channels (the student's first
 * layer, whose input is the image batch: 1 to 4 channels) and its two gradients, for
 * datadistill/models/image_conv.py.
 *
 * With 3 input channels a pixel's output is 27 multiply-adds per output channel: as a matrix
 * product the inner dimension is 27, too short for the BLAS library's blocking (MKL and
 * oneDNN ran these three kernels at 35-60 GFLOP/s where this CPU's single-thread matmul peak
 * is about 95). Here each is one register-blocked loop at the multiply-add rate:
 *
 *   forward      y[p][o]  = sum_t xp[p + off(t)] * wk[t][o]      (pixels x vectors of o)
 *   weight grad  dwk[t][o] = sum_p xp[p + off(t)] * dy[p][o]     (taps x vectors of o)
 *   input grad   cols[p][t] = sum_o dy[p][o] * wk[t][o], then added into the padded input at
 *                p + off(t) (the transposed forward); each sum over o is taken per vector
 *                lane and the lanes of NV such sums are added in one tree of shuffles
 *
 * Layouts (contiguous, element type REAL = float or double, suffix _f32 / _f64):
 *   xp  (n, h + 2, w + 2, c)   the input, zero-padded by one pixel on every side
 *   wk  (9 c, co)              the filter; row t = (ky * 3 + kx) * c + ci holds w[:, ci, ky, kx]
 *   y, dy (n, h, w, co)        the output and its gradient (a channels_last tensor's memory)
 *   dx  (n, h, w, c)           the input gradient
 * co must be a multiple of the vector's lane count NV (16 floats or 8 doubles cover every
 * build). Every sum runs in a fixed order that does not depend on where a pixel or a channel
 * falls in a register block, so a result is reproducible on one machine; the input gradient's
 * lane tree depends on NV, so builds with and without AVX-512 may differ in the last bits.
 */

#include <string.h>
#if defined(__AVX512F__)
#define VBYTES 64
#define FPX 4  /* forward: pixels per register block (FPX x FVB accumulators) */
#define GVB 2  /* weight gradient: vectors per register block (GTB x GVB accumulators) */
#else
#define VBYTES 32
#define FPX 2
#define GVB 1
#endif
#define FVB 4  /* forward: vectors of output channels per register block */
#define GTB 9  /* weight gradient: taps per register block */
#define ITB 4  /* input gradient: taps per block; NV / ITB pixels (NV >= 4 lanes in every
                  build), so NV accumulators */
#define MAXTAPS 36  /* 9 taps per input channel, at most 4 channels */
/* a += b * c as one fused multiply-add (see winograd_tiles.c) */
#if defined(__GNUC__) && !defined(__clang__)
#define CONTRACT __attribute__((optimize("fp-contract=fast")))
#else
#define CONTRACT
#endif

/* shuffle masks for the input gradient's lane sums: integer lanes as wide as REAL's */
typedef int mic_f32 __attribute__((vector_size(VBYTES)));
typedef long long mic_f64 __attribute__((vector_size(VBYTES)));

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

/* The masks of lane_sums: at the level whose groups are ``half`` lanes wide, lo[i] and hi[i]
 * pick, for lane i of the folded vector, the two lanes of the pair (a ++ b) it adds. */
static void lane_masks_SUFFIX(mic_SUFFIX *lo, mic_SUFFIX *hi) {
    int level = 0;
    for (int half = NVI_SUFFIX / 2; half >= 1; half /= 2, level++)
        for (int i = 0; i < NVI_SUFFIX; i++) {
            int q = i / half, k = i % half;
            lo[level][i] = q * 2 * half + k;
            hi[level][i] = q * 2 * half + half + k;
        }
}

/* One vector whose lane q is the sum of a[q]'s lanes, for NV vectors a (overwritten): at each
 * level pairs of vectors are folded into one, every group of lanes keeping the sum of its two
 * halves, until each group is one lane. */
static inline __attribute__((always_inline)) vic_SUFFIX lane_sums_SUFFIX(
        vic_SUFFIX *a, const mic_SUFFIX *lo, const mic_SUFFIX *hi) {
    int cnt = NVI_SUFFIX, level = 0;
    for (int half = NVI_SUFFIX / 2; half >= 1; half /= 2, level++) {
        for (int i = 0; i < cnt / 2; i++)
            a[i] = __builtin_shuffle(a[2 * i], a[2 * i + 1], lo[level])
                 + __builtin_shuffle(a[2 * i], a[2 * i + 1], hi[level]);
        cnt /= 2;
    }
    return a[0];
}

/* cols for NV / ITB pixels (px valid, the rest read as zero) and ITB taps from t0: lane
 * p * ITB + t of the result; d is dy at the first pixel. Two forms, as the forward's. */
#define IGRAD_BODY(PX_) do { \
    vic_SUFFIX acc[NVI_SUFFIX]; \
    for (int q = 0; q < NVI_SUFFIX; q++) acc[q] = (vic_SUFFIX){0}; \
    for (long o = 0; o < co; o += NVI_SUFFIX) { \
        vic_SUFFIX dv[NVI_SUFFIX / ITB], wv[ITB]; \
        for (int p = 0; p < NVI_SUFFIX / ITB; p++) \
            dv[p] = p < (PX_) ? ld_SUFFIX(d + p * co + o) : (vic_SUFFIX){0}; \
        for (int t = 0; t < ITB; t++) wv[t] = ld_SUFFIX(wk + (t0 + t) * co + o); \
        for (int p = 0; p < NVI_SUFFIX / ITB; p++) \
            for (int t = 0; t < ITB; t++) acc[p * ITB + t] += dv[p] * wv[t]; \
    } \
    return lane_sums_SUFFIX(acc, lo, hi); \
} while (0)

CONTRACT static inline __attribute__((always_inline)) vic_SUFFIX igrad_full_SUFFIX(
        const REAL *restrict d, const REAL *restrict wk, long co, long t0,
        const mic_SUFFIX *lo, const mic_SUFFIX *hi) {
    IGRAD_BODY(NVI_SUFFIX / ITB);
}

CONTRACT __attribute__((noinline)) static vic_SUFFIX igrad_part_SUFFIX(
        const REAL *restrict d, const REAL *restrict wk, long co, long t0,
        const mic_SUFFIX *lo, const mic_SUFFIX *hi, int px) {
    IGRAD_BODY(px);
}
#undef IGRAD_BODY

/* dx (n, h, w, c). A row's cols go with one vector store per block into ``cols`` (tap block
 * g, pixel j, tap t at (g (w + 16) + j) ITB + t), and are then added into ``pad``, a padded
 * copy of the image ((h + 2) (w + 2) c elements), tap by tap and pixel by pixel; pad's inside
 * is then copied out. wk has its 9 c rows padded with zero rows to a multiple of ITB, and
 * cols holds that many times w + 16 elements. */
CONTRACT void ic_input_grad_SUFFIX(const REAL *restrict dy, const REAL *restrict wk,
                                   REAL *restrict dx, REAL *restrict pad, REAL *restrict cols,
                                   long n, long h, long w, long c, long co) {
    enum { PXI = NVI_SUFFIX / ITB };
    long off[MAXTAPS], taps = 9 * c, wp = w + 2, gs = (w + 16) * ITB;
    mic_SUFFIX lo[8], hi[8];  /* log2(NV) <= 8 levels */
    tap_offsets_SUFFIX(off, c, wp);
    lane_masks_SUFFIX(lo, hi);
    for (long img = 0; img < n; img++) {
        memset(pad, 0, (size_t)((h + 2) * wp * c) * sizeof(REAL));
        const REAL *dyi = dy + img * h * w * co;
        for (long r = 0; r < h; r++) {
            for (long j = 0; j < w; j += PXI) {
                int px = w - j < PXI ? (int)(w - j) : PXI;
                const REAL *d = dyi + (r * w + j) * co;
                for (long t0 = 0, g = 0; t0 < taps; t0 += ITB, g++) {
                    vic_SUFFIX v = px == PXI ? igrad_full_SUFFIX(d, wk, co, t0, lo, hi)
                                             : igrad_part_SUFFIX(d, wk, co, t0, lo, hi, px);
                    st_SUFFIX(cols + g * gs + j * ITB, v);
                }
            }
            REAL *row = pad + r * wp * c;
            for (long t = 0; t < taps; t++) {
                const REAL *ct = cols + (t / ITB) * gs + t % ITB;
                REAL *x = row + off[t];
                for (long j = 0; j < w; j++) x[j * c] += ct[j * ITB];
            }
        }
        REAL *dxi = dx + img * h * w * c;
        for (long r = 0; r < h; r++)
            memcpy(dxi + r * w * c, pad + ((r + 1) * wp + 1) * c, (size_t)(w * c) * sizeof(REAL));
    }
}
