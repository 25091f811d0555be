/* The full-size passes of the instance norm -> ReLU -> 2x2 average pool block's backward and
 * double backward (datadistill/models/convnet_ops.py, _NormActPoolGrad), for channels_last
 * maps on the CPU.
 *
 * Every activation-sized quantity of those formulas is a per-(sample, channel) combination
 *
 *     v = cd * dy + cl * l + cz * z + c1
 *
 * of three maps, dy (the gradient at the norm output: the pooled gradient dp spread over its
 * 2x2 window and divided by 4, or dp itself without pooling, times the ReLU mask), an
 * adjoint l (pass z with cl = 0 where there is none) and the norm input z. One call makes one
 * pass over them and either writes v, writes avgpool(mask * v), or sums v, v * z and v * dy
 * over each instance. PyTorch ops take a pass per multiply-add and a temporary per product.
 *
 * The ReLU mask is not a saved map: it is y > 0 for the norm's output y = ms * z + mt, with
 * the forward's per-(sample, channel) scale and shift, computed as the forward computes it
 * (one rounding per operation: this file is not contracted), so it is the forward's mask bit
 * for bit. The block then keeps z alone, where keeping relu(y) as well cost one more
 * activation-sized map per block and step, written once and read by every pass.
 *
 * Layouts: z, l, v (n, h, w, c); dp and pooled outputs (n, h/2, w/2, c) with pooling,
 * else (n, h, w, c); coefficients, ms and mt (n, c); sums (n, 3, c) in double (NULL unless
 * mode 2).
 */

/* No multiply-add is fused into one rounding here, whatever the compiler's default (GCC in
 * ISO C mode already does not; clang would within an expression): the mask must be the
 * forward's bit for bit, and the PyTorch form's too. */
#pragma STDC FP_CONTRACT OFF

/* -- per type -- */

/* The ReLU mask at pixel i: the norm's output is positive (see the file's comment) */
#define ON_SUFFIX(i) (ks[k] * z[(i) + k] + kt[k] > 0)
/* dy at pixel i (dp's index j); both products are made and one chosen, so the loops
 * vectorise (with -fno-trapping-math, ckernels.FLAGS: without it GCC sinks each product
 * into its branch and, short of AVX-512's masked arithmetic, runs a branch per element) */
#define DY_SUFFIX(i, j) (ON_SUFFIX(i) ? sc * dp[(j) + k] : (REAL)0 * dp[(j) + k])

/* mode 0: out = v; mode 1: out = avgpool2x2(mask * v) (without pooling: mask * v);
 * mode 2: sums[n][0..2][c] of v, v * z and v * dy over the instance. */
void nap_pass_SUFFIX(int mode, int pool, const REAL *restrict dp, const REAL *restrict ms,
                     const REAL *restrict mt, const REAL *restrict l, const REAL *restrict z,
                     const REAL *restrict cd, const REAL *restrict cl,
                     const REAL *restrict cz, const REAL *restrict c1, REAL *restrict out,
                     double *restrict sums, long n, long h, long w, long c) {
    long h2 = pool ? h / 2 : h, w2 = pool ? w / 2 : w;
    const REAL sc = pool ? (REAL)0.25 : 1;  /* dp / 4 is exact */
    for (long img = 0; img < n; img++) {
        const REAL *restrict kd = cd + img * c, *restrict kl = cl + img * c;
        const REAL *restrict kz = cz + img * c, *restrict k1 = c1 + img * c;
        const REAL *restrict ks = ms + img * c, *restrict kt = mt + img * c;
        double *restrict s1 = sums ? sums + img * 3 * c : 0;
        double *restrict sz = s1 ? s1 + c : 0, *restrict sd = s1 ? s1 + 2 * c : 0;
        if (mode == 2)
            for (long k = 0; k < c; k++) s1[k] = sz[k] = sd[k] = 0;
        for (long r = 0; r < h; r++) {
            for (long q = 0; q < w; q++) {
                long i = ((img * h + r) * w + q) * c;
                long j = ((img * h2 + (pool ? r / 2 : r)) * w2 + (pool ? q / 2 : q)) * c;
                if (mode == 0) {
                    for (long k = 0; k < c; k++) {
                        REAL v = kd[k] * DY_SUFFIX(i, j) + kl[k] * l[i + k]
                                 + kz[k] * z[i + k] + k1[k];
                        out[i + k] = v;
                    }
                } else if (mode == 2) {
                    for (long k = 0; k < c; k++) {
                        REAL dy = DY_SUFFIX(i, j);
                        REAL v = kd[k] * dy + kl[k] * l[i + k] + kz[k] * z[i + k] + k1[k];
                        s1[k] += v;
                        sz[k] += (double)v * z[i + k];
                        sd[k] += (double)v * dy;
                    }
                } else {
                    /* pooled: accumulate the masked window into out (zeroed at its first
                     * pixel, scaled by 1/4 at its last) */
                    int first = (!pool) || (r % 2 == 0 && q % 2 == 0);
                    int last = (!pool) || (r % 2 == 1 && q % 2 == 1);
                    for (long k = 0; k < c; k++) {
                        REAL v = kd[k] * DY_SUFFIX(i, j) + kl[k] * l[i + k]
                                 + kz[k] * z[i + k] + k1[k];
                        v = ON_SUFFIX(i) ? v : 0;
                        REAL acc = first ? v : out[j + k] + v;
                        out[j + k] = last ? acc * sc : acc;
                    }
                }
            }
        }
    }
}

/* The forward's statistics per instance: stats[n][0][c] = mean of z, stats[n][1][c] = sum of
 * (z - mean)^2, both accumulated in double (centred before squaring: no cancellation). */
void nap_stats_SUFFIX(const REAL *restrict z, double *restrict stats, long n, long h, long w,
                      long c) {
    long m = h * w;
    for (long img = 0; img < n; img++) {
        const REAL *restrict zi = z + img * m * c;
        double *restrict mean = stats + img * 2 * c, *restrict ss = mean + c;
        for (long k = 0; k < c; k++) mean[k] = ss[k] = 0;
        for (long p = 0; p < m; p++)
            for (long k = 0; k < c; k++) mean[k] += zi[p * c + k];
        for (long k = 0; k < c; k++) mean[k] /= (double)m;
        for (long p = 0; p < m; p++)
            for (long k = 0; k < c; k++) {
                double d = zi[p * c + k] - mean[k];
                ss[k] += d * d;
            }
    }
}

/* The block's output: relu(s * z + t) per (sample, channel) coefficients s, t (n, c), or
 * with pooling its 2x2 average (n, h/2, w/2, c), each window summed as its two rows' pairs
 * then the two sums, from the four values made in registers (relu(s * z + t) itself is not
 * written: the passes above remake its mask). */
void nap_forward_SUFFIX(int pool, const REAL *restrict z, const REAL *restrict s,
                        const REAL *restrict t, REAL *restrict out, long n, long h, long w,
                        long c) {
    long h2 = h / 2, w2 = w / 2;
    for (long img = 0; img < n; img++) {
        const REAL *restrict si = s + img * c, *restrict ti = t + img * c;
        if (!pool) {
            for (long i = img * h * w * c; i < (img + 1) * h * w * c; i += c)
                for (long k = 0; k < c; k++) {
                    REAL y = si[k] * z[i + k] + ti[k];
                    out[i + k] = y < 0 ? 0 : y;  /* NaN stays NaN, as in relu */
                }
            continue;
        }
        for (long r = 0; r < h2; r++)
            for (long q = 0; q < w2; q++) {
                const REAL *restrict z00 = z + ((img * h + 2 * r) * w + 2 * q) * c;
                const REAL *restrict z10 = z00 + w * c;
                REAL *restrict o = out + ((img * h2 + r) * w2 + q) * c;
                for (long k = 0; k < c; k++) {
                    REAL y00 = si[k] * z00[k] + ti[k], y01 = si[k] * z00[c + k] + ti[k];
                    REAL y10 = si[k] * z10[k] + ti[k], y11 = si[k] * z10[c + k] + ti[k];
                    y00 = y00 < 0 ? 0 : y00;
                    y01 = y01 < 0 ? 0 : y01;
                    y10 = y10 < 0 ? 0 : y10;
                    y11 = y11 < 0 ? 0 : y11;
                    o[k] = ((y00 + y01) + (y10 + y11)) * (REAL)0.25;
                }
            }
    }
}
