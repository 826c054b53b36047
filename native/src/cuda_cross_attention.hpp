// The decoder step's cross-attention on CUDA: each row's query against its window's 1500
// encoder positions (padded to n_pad with zeros, which take part as whisper.cpp's do), all
// heads. At large batches it is most of the step's time (every window's keys and values,
// ~245 MB for large-v3, are read once a step), so it is written to stream them at the
// memory's speed; split over positions (flash decoding) so that small batches still
// fill the GPU, the parts merged by a second kernel.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace whisperd {

// Floats of `part` (scratch) a step of `rows` rows needs at most.
size_t cross_part_floats(int rows, int n_head, int n_pad);

// out[row] = softmax(q' K^T) V for every row and head, q' = (q + bq) * scale; rows are
// the W slots' R rows each, slot-major; K/V [W][n_pad][C] (heads side by side).
void cross_attention(const half *q, const float *bq, const half *ck, const half *cv, float *part, half *out, int W,
                     int R, int C, int n_pad, int n_head, float scale, cudaStream_t stream);

}  // namespace whisperd
