// The native backend's untuned default: which implementation a residual unit or conv takes when
// no measurement is at hand (XCODEC_FAST_TUNE=off, or a site torch.compile traces before it was
// measured). With tuning on (the default), xcodec_fast/ops/tuning.py times every implementation
// at each site on the machine at hand and these crossovers are not used.
//
// Measured on ONE machine: a 2-core AVX-512 Intel Xeon VM, fp32, 2 threads, torch 2.13, 2026-11.
// On a 2-core AMD EPYC VM the same comparison came out the other way at most sites (the dispatch
// table `xcodec-fast info` prints there picks oneDNN for most residual units).
#pragma once

#include <cstdint>

namespace {

// Where the GEMM path beats oneDNN (fp32, 2 threads, 2-core AVX-512 Xeon, torch 2.13, ms, d=1/d=9):
//   C×T          oneDNN path   GEMM path
//   64×160000    134 / 130      60 / 61
//   128×80000    175 / 168      97 / 89
//   128×20000     34 /  33      19 / 19
//   256×20000     90 /  92      76 / 75
//   256×4000      16 /  15      15 / 16
//   512×4000      59 /  57      58 / 58
//   512×1000      15 /  15      14 / 16
// so C ≤ 256 takes the GEMM path and wider units stay on oneDNN (a tie there, and oneDNN is what
// eager runs).
constexpr int64_t kGemmMaxChannels = 256;

// Where the GEMM path beats snake + oneDNN (fp32, 2 threads, 2-core AVX-512 Xeon, torch 2.13, ms):
//   C_in -> C_out, frames, kernel/stride   oneDNN   GEMM
//   64 -> 128, 160000, 16/8                  64      27
//   128 -> 256, 20000, 10/5                  16      12
//   256 -> 512, 4000, 8/4                    9.5     8.7
//   512 -> 1024, 1000, 4/2                   8.5     10.4
//   1024 -> 256, 500, 3/1                    3.1     3.5
//   64 -> 1, 160000, 7/1                     39      13
constexpr int64_t kConvGemmMaxInChannels = 256;

// The GEMM path wins at every decoder site (same machine, ms, oneDNN vs GEMM): 1024 -> 512 × 500
// frames ×8: 48 vs 39; 512 -> 256 × 4000 ×5: 76 vs 41; 256 -> 128 × 20000 ×4: 132 vs 58;
// 128 -> 64 × 80000 ×2: 124 vs 40.

}  // namespace
