// Causal multi-head self-attention core (the projections are separate linear layers).
// qkv: [B, T, 3C] holding q, k, v; head h uses channels [h*hd, (h+1)*hd) of each. att: [B, H, T, T]
// softmax probabilities saved for backward (only t2 <= t is meaningful). out: [B, T, C].
#pragma once

namespace scmoe::cpu {

template <class T>
void attention_forward(T* out, T* att, const T* qkv, int B, int Tn, int C, int H);

// dqkv is overwritten. Parallel over (batch, head), which own disjoint slices of dqkv, so the result
// does not depend on the thread count.
template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, int B, int Tn, int C, int H);

// The decode step of generation: one query (the newest position) over a KV cache of Tk positions.
// q: [C]; k, v: [Tk, C] cached keys and values (the newest included); att: [H, Tk] scratch; out: [C].
// The same arithmetic as attention_forward's row t = Tk-1, so incremental decoding reproduces the
// full forward's outputs.
template <class T>
void attention_decode(T* out, T* att, const T* q, const T* k, const T* v, int Tk, int C, int H);

}  // namespace scmoe::cpu
