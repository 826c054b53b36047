// The decoder step's cross-attention on CUDA: each row's query against its window's 1500
// encoder positions (padded to n_pad with zeros, which take part as whisper.cpp's do), all
// heads. At large batches it is most of the step's time (every window's keys and values,
// ~245 MB for large-v3, are read once a step), so it is written to stream them at the
// memory's speed; split over positions (flash decoding) so that small batches still
// fill the GPU, the parts merged by a second kernel. Greedy steps can read an int8 copy
// of the keys and values instead (WHISPERD_CROSS_KV_INT8): half the bytes.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace whisperd {

// Floats of `part` (scratch) a step of `rows` rows needs at most.
size_t cross_part_floats(int rows, int n_head, int n_pad);

// The int8 copy of one layer's cross K/V: k/v [slot][n_ctx][C] (only the window's
// positions: the padding is zeros, added without reading it), scales [slot][n_ctx][n_head]
// as half2 (K's, V's): x ~ int8 * scale, one scale a head's 64 values of a position. f16
// scales are 3 % of the int8 rows' bytes (f32 would be 6 %, read at every step too), and
// cost no accuracy: the values are divided by the scale once it is rounded to f16.
struct CrossInt8 {
    const int8_t *k, *v;
    const half2 *scales;
};

// out[row] = softmax(q' K^T) V for every row and head, q' = (q + bq) * scale; rows are
// the W slots' R rows each, slot-major; K/V [W][n_pad][C] (heads side by side), of which
// positions n_ctx.. are zeros. With `q8` (greedy steps, R == 1, where the shape allows)
// the int8 copy is read instead of ck/cv.
void cross_attention(const half *q, const float *bq, const half *ck, const half *cv, const CrossInt8 *q8,
                     float *part, half *out, int W, int R, int C, int n_pad, int n_ctx, int n_head, float scale,
                     cudaStream_t stream);

// Whether cross_attention can read an int8 copy for a model of this width.
bool cross_int8_supported(int C, int n_head);

// The int8 copy of slots[0..n) (a device array) made from their f16 K/V [slot][n_pad][C]:
// positions < n_ctx, symmetric, scale = max |x| / 127 (rounded to f16) per head.
void quantize_cross(const half *ck, const half *cv, int8_t *k8, int8_t *v8, half2 *scales, const int *slots, int n,
                    int C, int n_pad, int n_ctx, int n_head, cudaStream_t stream);

}  // namespace whisperd
