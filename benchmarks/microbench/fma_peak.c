// FMA peak of one core: 12 independent chains of 512-bit FMAs (no loads).
// gcc -O2 -mavx512f fma_peak.c -o fma_peak && ./fma_peak
// On the project's 2-core VM (AMD EPYC, family 26 / Zen 5), 2026-11-29: 262 GFLOP/s,
// i.e. two full-width FMAs per cycle at ~4.1 GHz.
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
  __m512 a[12];
  for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps(i * 0.001f);
  const __m512 b = _mm512_set1_ps(0.9999f), c = _mm512_set1_ps(1e-7f);
  const long n = 200000000;
  const double t0 = now();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
  }
  const double t = now() - t0;
  float s = 0;
  for (int i = 0; i < 12; i++) s += a[i][0];
  printf("%.1f GFLOP/s on one core (%.2f GHz at 2 FMAs per cycle), checksum %f\n",
         n * 12.0 * 32 / t / 1e9, n * 12.0 / 2 / t / 1e9, s);
  return 0;
}
