import type { Precision } from './bf16.js';

/**
 * The host LM's hot ops (issue 8): the second seam beside `SaeKernels`. The transformer in src/lm
 * calls only these for its arithmetic, so a native or GPU implementation slots in without touching
 * the model, harvest or splice-eval. Float32 throughout, row-major; a "token row" layout [B·T, …]
 * puts sequence b's position t at row b·T + t.
 */
export interface LmKernels {
  readonly name: string;
  /**
   * The precision rule these kernels follow (docs/precision.md); absent = 'fp32'. Under 'bf16'
   * `linear` rounds x and W to bf16 and sums in float32; every other op is as under 'fp32'.
   */
  readonly precision?: Precision;

  /**
   * y[n×m] = x[n×k] · W + bias. `layout` says how W is stored: 'in_out' = [k×m] (Hugging Face's
   * GPT-2 Conv1D, applied as x @ W) or 'out_in' = [m×k] (nn.Linear and the tied unembedding,
   * applied as x @ Wᵀ). `bias` [m] may be null. y must not alias x.
   */
  linear(x: Float32Array, n: number, k: number, W: Float32Array, m: number, layout: 'in_out' | 'out_in', bias: Float32Array | null, y: Float32Array): void;

  /** Per row of x [n×d]: (x − mean) / sqrt(var + eps) ⊙ w + b, biased variance (torch.nn.LayerNorm). y may alias x. */
  layerNorm(x: Float32Array, n: number, d: number, w: Float32Array, b: Float32Array, eps: number, y: Float32Array): void;

  /** In place over the first n values: 'tanh' = gelu_new (GPT-2's tanh approximation), 'erf' = exact gelu (GPT-NeoX). */
  gelu(x: Float32Array, n: number, kind: 'tanh' | 'erf'): void;

  /** a[i] += b[i] for i < n (the residual stream). */
  add(a: Float32Array, b: Float32Array, n: number): void;

  /**
   * GPT-NeoX rotary embedding, in place, on the first `dims` features of every head of x [B·T, H·hd]
   * at positions 0..T−1: inv_freq_i = base^(−2i/dims), θ = t·inv_freq, and with the halves
   * x1 = x[:dims/2], x2 = x[dims/2:dims] (rotate_half, not interleaved):
   * x1' = x1·cos θ − x2·sin θ, x2' = x2·cos θ + x1·sin θ.
   */
  rotary(x: Float32Array, B: number, T: number, H: number, hd: number, dims: number, base: number): void;

  /**
   * Causal softmax attention per sequence and head: q, k, v, out are [B·T, H·hd] (head h in
   * columns h·hd..), scores q·k/√hd, position t attends to 0..t. `pattern` [B, H, T, T], when
   * given, receives the probabilities (query, key), masked entries exactly 0.
   */
  attention(q: Float32Array, k: Float32Array, v: Float32Array, B: number, T: number, H: number, hd: number, out: Float32Array, pattern?: Float32Array | null): void;

  /** Per row of logits [n×V]: loss[i] = logsumexp(logits_i) − logits_i[targets[i]] (next-token cross-entropy). */
  crossEntropy(logits: Float32Array, n: number, V: number, targets: Int32Array, loss: Float32Array): void;

  /**
   * Per row i < n: out[i] = KL(softmax(p_i) ‖ softmax(q_i)) of logits p, q [n×V] (splice-eval's KL of
   * the clean next-token distribution to another run's). `qBroadcast`: q is one row [V] shared by
   * every row of p (an ablation that makes every position's output the same).
   */
  klDivergence(p: Float32Array, q: Float32Array, n: number, V: number, qBroadcast: boolean, out: Float32Array): void;
}
