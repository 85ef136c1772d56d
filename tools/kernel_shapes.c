// How fast the micro-kernel's inner loop can run, apart from everything around
// it: R rows x P 16-float panels, each step P panel loads from L1, R broadcasts
// from memory, R*P AVX-512 multiply-adds (ours is 12 x 2, see direct.rs), and the
// same 12 x 2 shape with bf16 pairs (`vdpbf16ps`). One thread; prints GFLOP/s.
//
//   gcc -O3 -march=x86-64-v4 tools/kernel_shapes.c -o /tmp/kernel_shapes && /tmp/kernel_shapes
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#define K 256
static float A[16][K] __attribute__((aligned(64)));
static float B[6][K][16] __attribute__((aligned(64)));
static unsigned short Ah[16][K] __attribute__((aligned(64)));
static unsigned short Bh[2][K / 2][32] __attribute__((aligned(64)));
static float C[16][96];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define KERNEL(R, P)                                                                  \
    static void k_##R##_##P(long iters) {                                             \
        for (long it = 0; it < iters; it++) {                                         \
            __m512 acc[R][P];                                                         \
            for (int i = 0; i < R; i++)                                               \
                for (int p = 0; p < P; p++) acc[i][p] = _mm512_setzero_ps();          \
            for (int c = 0; c < K; c++) {                                             \
                __m512 b[P];                                                          \
                for (int p = 0; p < P; p++) b[p] = _mm512_load_ps(B[p][c]);           \
                for (int i = 0; i < R; i++) {                                         \
                    __m512 a = _mm512_set1_ps(A[i][c]);                               \
                    for (int p = 0; p < P; p++) acc[i][p] = _mm512_fmadd_ps(a, b[p], acc[i][p]); \
                }                                                                     \
            }                                                                         \
            for (int i = 0; i < R; i++)                                               \
                for (int p = 0; p < P; p++) _mm512_storeu_ps(&C[i][p * 16], acc[i][p]); \
            __asm__ volatile("" ::: "memory");                                        \
        }                                                                             \
    }
KERNEL(12, 2)
KERNEL(8, 3)
KERNEL(6, 4)
KERNEL(14, 2)

__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl"))) static void k_bf16(long iters) {
    for (long it = 0; it < iters; it++) {
        __m512 acc[12][2];
        for (int i = 0; i < 12; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        for (int c = 0; c < K; c += 2) {
            __m512bh b0 = (__m512bh)_mm512_load_si512(Bh[0][c / 2]);
            __m512bh b1 = (__m512bh)_mm512_load_si512(Bh[1][c / 2]);
            for (int i = 0; i < 12; i++) {
                __m512bh a = (__m512bh)_mm512_set1_epi32(*(int *)&Ah[i][c]);
                acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
                acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
            }
        }
        for (int i = 0; i < 12; i++) {
            _mm512_storeu_ps(&C[i][0], acc[i][0]);
            _mm512_storeu_ps(&C[i][16], acc[i][1]);
        }
        __asm__ volatile("" ::: "memory");
    }
}

#define RUN(R, P)                                                                    \
    {                                                                                \
        long it = 2000000 / (R * P);                                                 \
        double t = now();                                                            \
        k_##R##_##P(it);                                                             \
        t = now() - t;                                                               \
        printf("f32  %2d x %d: %6.1f GFLOP/s\n", R, P, 2.0 * R * P * 16 * K * it / t / 1e9); \
    }

int main(void) {
    for (int i = 0; i < 16; i++)
        for (int c = 0; c < K; c++) A[i][c] = 1e-3f * (i + c), Ah[i][c] = 0x3f80;
    for (int p = 0; p < 6; p++)
        for (int c = 0; c < K; c++)
            for (int j = 0; j < 16; j++) B[p][c][j] = 1e-3f;
    for (int round = 0; round < 3; round++) {
        RUN(12, 2) RUN(8, 3) RUN(6, 4) RUN(14, 2)
        long it = 100000;
        double t = now();
        k_bf16(it);
        t = now() - t;
        printf("bf16 12 x 2: %6.1f GFLOP/s\n", 2.0 * 12 * 32 * K * it / t / 1e9);
    }
    return 0;
}
