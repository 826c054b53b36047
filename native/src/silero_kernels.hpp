// The few dense kernels our Silero VAD forward needs (silero_vad.cpp), with the widest
// vector instructions the CPU has chosen at run time: the extension itself is built for
// the baseline x86-64 (shipped images run on unknown hosts), and Silero's cost is nearly
// all multiply-adds.
#pragma once

#include <cstddef>
#include <vector>

namespace whisperd::silero {

// Rows of A and columns of B/C must come in these multiples (callers pad with zeros).
constexpr int kRowBlock = 4;
constexpr int kColBlock = 32;

// C[m][n] = act(sum_k A[m][k] * B[k][n] + bias[n]) for m < M, n < N, with A row-major
// M x K (row stride K), B as pack_panels(N, K, B, kColBlock) left it, C row-major M x N;
// act = relu when asked. M % kRowBlock == 0, N % kColBlock == 0; bias may be null.
void gemm(int M, int N, int K, const float *A, const float *B, const float *bias, bool relu, float *C);

constexpr int kMatvecBlock = 64;

// y[n] += sum_k x[k] * B[k][n] for n < N (N % kMatvecBlock == 0), B as
// pack_panels(N, K, B, kMatvecBlock) left it.
void matvec_acc(int N, int K, const float *x, const float *B, float *y);

// B (row-major K x N) as panels of `block` columns, each K x block row-major, one after
// the other: the kernels read a block's columns down all of K, and a contiguous panel
// streams from cache faster than rows strided by N (the LSTM step: 15 % less time).
std::vector<float> pack_panels(int N, int K, const float *B, int block);

// One LSTM step over pre-activations gates = (input, forget, cell, output), `hidden`
// each (a multiple of 16): c = f * c + i * tanh(g), h = o * tanh(c), with sigmoid and
// tanh from a vectorised expf (within ~1e-7 of glibc's, which ggml uses).
void lstm_cell(int hidden, const float *gates, float *c, float *h);

// x[i] = float(half(x[i])), rounding to nearest even: what ggml's im2col does to a
// convolution's input before its f16 matrix product.
void round_to_f16(float *x, size_t n);

}  // namespace whisperd::silero
