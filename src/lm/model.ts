import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import type { LmKernels } from '../kernels/lm-types.js';
import { createReferenceLmKernels } from '../kernels/lm-reference.js';
import { parseLmConfig, type LmConfig } from './config.js';
import { hookNames, parseHook, type HookSite } from './hooks.js';
import { loadWeights, type BlockWeights, type ModelWeights } from './weights.js';

/**
 * A hooked transformer (issue 8) in Hugging Face's math, for GPT-2 and GPT-NeoX:
 *
 *   x₀ = W_E[ids] (+ W_pos[t] for GPT-2)                       hook_embed, hook_pos_embed, blocks.0.hook_resid_pre
 *   sequential (GPT-2, NeoX without parallel residual):
 *     x_mid = x + Attn(LN₁ x)                                  hook_attn_out, hook_resid_mid
 *     x'    = x_mid + MLP(LN₂ x_mid)                           hook_mlp_out, hook_resid_post
 *   parallel (Pythia):  x' = x + Attn(LN₁ x) + MLP(LN₂ x)
 *   logits = LN_f(x_L) W_Uᵀ                                    ln_final.hook_normalized
 *
 * Attn is causal softmax attention with scale 1/√head_dim (NeoX: rotary on the first rotaryDims of
 * q and k); MLP = W_out gelu(W_in h + b_in) + b_out. Activations are the checkpoint's own hidden
 * states (no weight folding), so an SAE trained on them fits the model as Hugging Face loads it.
 *
 * Shapes: ids [B, T] (row-major), every residual-stream hook [B, T, d], hook_pattern [B, H, T, T],
 * logits [B, T, V], per-token loss [B, T−1] (position t predicts ids[t+1]).
 */
export type Replacement = Float32Array | ((x: Float32Array, shape: number[]) => void);

export interface RunOptions {
  /** hook names whose values to return (copies) */
  capture?: string[];
  /** overwrite the tensor at a hook (an array of its shape, or a callback editing it in place) before the forward continues */
  replace?: Record<string, Replacement>;
  /** return logits [B, T, V] (memory: B·T·V floats) */
  logits?: boolean;
  /** return next-token cross-entropy per position [B, T−1] and its mean */
  loss?: boolean;
  /**
   * Start the forward at a residual-stream hook (blocks.L.hook_resid_pre / hook_resid_post) with
   * this tensor there [B, T, d], skipping the blocks before it: splice-eval's spliced and ablated
   * runs share the clean run's prefix instead of recomputing it.
   */
  start?: { hook: string; x: Float32Array };
}

export interface RunResult {
  captured: Record<string, Float32Array>;
  logits?: Float32Array;
  lossPerToken?: Float32Array;
  loss?: number;
  /** blocks computed (the forward stops after the last one it needs) */
  blocksRun: number;
}

/** Rows of logits computed at once for the loss: bounds memory at ROWS × V floats, and is large enough that packing the unembedding for the GEMM is amortised. */
const LOSS_ROWS = 256;

export class HookedTransformer {
  readonly cfg: LmConfig;
  readonly weights: ModelWeights;
  readonly kernels: LmKernels;
  readonly dir: string;
  private ws: Workspace | null = null;
  private unembedT: Float32Array | null = null;

  constructor(cfg: LmConfig, weights: ModelWeights, kernels: LmKernels = createReferenceLmKernels(), dir = '') {
    this.cfg = cfg;
    this.weights = weights;
    this.kernels = kernels;
    this.dir = dir;
  }

  /** Load a Hugging Face model folder (config.json + weights). */
  static async load(dir: string, kernels?: LmKernels): Promise<HookedTransformer> {
    const cfgFile = path.join(dir, 'config.json');
    let text: string;
    try {
      text = await fs.readFile(cfgFile, 'utf8');
    } catch {
      throw new UserError(`${dir}: no config.json (not a Hugging Face model folder)`);
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      throw new UserError(`${cfgFile}: not valid JSON`);
    }
    const cfg = parseLmConfig(raw, cfgFile);
    return new HookedTransformer(cfg, await loadWeights(dir, cfg), kernels, dir);
  }

  /**
   * W_U as [d×V] ('in_out'), made once on first use (V·d floats more memory): the GEMM's packing
   * then copies contiguous rows of W_U instead of transposing [V×d] on every call, which costs
   * ~5 % of the unembedding at a few hundred rows per call.
   */
  unembedInOut(): Float32Array {
    if (!this.unembedT) {
      const { dModel: d, vocab: V } = this.cfg;
      const W = this.weights.unembed;
      const t = new Float32Array(d * V);
      for (let v = 0; v < V; v++) for (let j = 0; j < d; j++) t[j * V + v] = W[v * d + j];
      this.unembedT = t;
    }
    return this.unembedT;
  }

  hookNames(): string[] {
    return hookNames(this.cfg);
  }

  /** Check token ids against the model: a bad id or an over-long context is the user's error. */
  checkInput(ids: Int32Array, B: number, T: number): void {
    if (!(Number.isSafeInteger(B) && B >= 1 && Number.isSafeInteger(T) && T >= 1)) throw new UserError(`batch must be at least 1×1 tokens, got ${B}×${T}`);
    if (ids.length !== B * T) throw new UserError(`expected ${B}×${T} token ids, got ${ids.length}`);
    if (T > this.cfg.nPositions) throw new UserError(`context of ${T} tokens is longer than the model's ${this.cfg.nPositions} positions`);
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] < 0 || ids[i] >= this.cfg.vocab) throw new UserError(`token id ${ids[i]} at position ${i % T} of sequence ${Math.floor(i / T)} is outside the vocabulary (0..${this.cfg.vocab - 1})`);
    }
  }

  run(ids: Int32Array, B: number, T: number, opts: RunOptions = {}): RunResult {
    const { cfg, weights: w, kernels: k } = this;
    this.checkInput(ids, B, T);
    const sites = new Map<string, HookSite>();
    for (const name of [...(opts.capture ?? []), ...Object.keys(opts.replace ?? {})]) sites.set(name, parseHook(name, cfg));
    for (const name of Object.keys(opts.replace ?? {})) {
      if (sites.get(name)!.kind === 'pattern') throw new UserError(`hook ${name}: attention patterns can be captured, not replaced`);
    }
    const wantsOutput = !!(opts.logits || opts.loss);
    const lastOrder = wantsOutput ? Infinity : Math.max(-Infinity, ...[...sites.values()].map((s) => s.order));
    const N = B * T;
    const d = cfg.dModel;
    const ws = this.workspace(N);
    const captured: Record<string, Float32Array> = {};
    const patternHooks = new Set([...sites.values()].filter((s) => s.kind === 'pattern').map((s) => s.layer));
    const shapeOf = (s: HookSite) => (s.kind === 'pattern' ? [B, cfg.nHeads, T, T] : [B, T, d]);

    /** Capture and/or replace the tensor at a site; x holds it (N×d, or the pattern). */
    const at = (name: string, x: Float32Array) => {
      const s = sites.get(name);
      if (!s) return;
      const rep = opts.replace?.[name];
      if (rep) {
        const size = shapeOf(s).reduce((a, b) => a * b, 1);
        if (typeof rep === 'function') rep(x.subarray(0, size), shapeOf(s));
        else {
          if (rep.length !== size) throw new UserError(`replacement for ${name} has ${rep.length} values, expected ${shapeOf(s).join('×')}`);
          x.set(rep);
        }
      }
      if (opts.capture?.includes(name)) captured[name] = x.slice(0, shapeOf(s).reduce((a, b) => a * b, 1));
    };

    const x = ws.resid;
    let firstBlock = 0;
    if (opts.start) {
      const s0 = parseHook(opts.start.hook, cfg);
      if (s0.kind !== 'resid_pre' && s0.kind !== 'resid_post') throw new UserError(`a forward can start only at a residual-stream hook (resid_pre, resid_post), not ${opts.start.hook}`);
      if (opts.start.x.length !== N * d) throw new UserError(`start tensor for ${opts.start.hook} has ${opts.start.x.length} values, expected ${B}×${T}×${d}`);
      x.set(opts.start.x);
      firstBlock = s0.kind === 'resid_pre' ? s0.layer : s0.layer + 1;
      if (s0.kind === 'resid_post') at(opts.start.hook, x);
    } else {
      // embeddings
      for (let i = 0; i < N; i++) x.set(w.embed.subarray(ids[i] * d, ids[i] * d + d), i * d);
      at('hook_embed', x);
      if (w.pos) {
        const pos = ws.h;
        for (let b = 0; b < B; b++) pos.set(w.pos.subarray(0, T * d), b * T * d);
        at('hook_pos_embed', pos);
        k.add(x, pos, N * d);
      }
    }

    let blocksRun = 0;
    for (let L = firstBlock; L < cfg.nLayers; L++) {
      const start = (L + 1) * 10; // order of blocks.L.hook_resid_pre
      if (start > lastOrder) break;
      if (!(opts.start && L === firstBlock && opts.start.hook === `blocks.${L}.hook_resid_pre`)) at(`blocks.${L}.hook_resid_pre`, x);
      if (start === lastOrder) break;
      this.block(w.blocks[L], L, B, T, ws, at, patternHooks.has(L));
      blocksRun++;
    }
    const result: RunResult = { captured, blocksRun };
    if (!wantsOutput && lastOrder < (cfg.nLayers + 1) * 10) return result;

    const normed = ws.h;
    k.layerNorm(x, N, d, w.lnFinal.w, w.lnFinal.b, cfg.lnEps, normed);
    at('ln_final.hook_normalized', normed);
    if (!wantsOutput) return result;

    const V = cfg.vocab;
    if (opts.logits) {
      const logits = new Float32Array(N * V);
      k.linear(normed, N, d, this.unembedInOut(), V, 'in_out', null, logits);
      result.logits = logits;
    }
    if (opts.loss) {
      // chunks of LOSS_ROWS rows across contexts (a context's last position predicts nothing:
      // computed with a dummy target, not kept), so the unembedding GEMM sees many rows per call
      const loss = new Float32Array(B * (T - 1));
      let sum = 0;
      const W = this.unembedInOut();
      for (let row = 0; row < N; row += LOSS_ROWS) {
        const n = Math.min(LOSS_ROWS, N - row);
        const logits = result.logits ? result.logits.subarray(row * V, (row + n) * V) : ws.logits;
        if (!result.logits) k.linear(normed.subarray(row * d, (row + n) * d), n, d, W, V, 'in_out', null, logits);
        for (let i = 0; i < n; i++) ws.targets[i] = (row + i) % T < T - 1 ? ids[row + i + 1] : 0;
        k.crossEntropy(logits, n, V, ws.targets, ws.ce);
        for (let i = 0; i < n; i++) {
          const b = Math.floor((row + i) / T), t = (row + i) % T;
          if (t < T - 1) loss[b * (T - 1) + t] = ws.ce[i];
        }
      }
      for (let i = 0; i < loss.length; i++) sum += loss[i];
      result.lossPerToken = loss;
      result.loss = loss.length ? sum / loss.length : NaN;
    }
    return result;
  }

  /** One transformer block on the residual stream ws.resid, in place. */
  private block(bw: BlockWeights, L: number, B: number, T: number, ws: Workspace, at: (name: string, x: Float32Array) => void, wantPattern: boolean): void {
    const { cfg, kernels: k } = this;
    const N = B * T;
    const d = cfg.dModel;
    const x = ws.resid;
    // attention: LN₁ → fused qkv → split per family → (rotary) → causal softmax → output projection
    k.layerNorm(x, N, d, bw.ln1.w, bw.ln1.b, cfg.lnEps, ws.h);
    k.linear(ws.h, N, d, bw.qkv.W, 3 * d, bw.qkv.layout, bw.qkv.bias, ws.qkv);
    splitQkv(ws.qkv, N, cfg.nHeads, cfg.headDim, cfg.family === 'gpt2' ? 'blocks' : 'heads', ws.q, ws.k, ws.v);
    if (cfg.rotaryDims > 0) {
      k.rotary(ws.q, B, T, cfg.nHeads, cfg.headDim, cfg.rotaryDims, cfg.rotaryBase);
      k.rotary(ws.k, B, T, cfg.nHeads, cfg.headDim, cfg.rotaryDims, cfg.rotaryBase);
    }
    const pattern = wantPattern ? new Float32Array(B * cfg.nHeads * T * T) : null;
    k.attention(ws.q, ws.k, ws.v, B, T, cfg.nHeads, cfg.headDim, ws.att, pattern);
    if (pattern) at(`blocks.${L}.attn.hook_pattern`, pattern);
    k.linear(ws.att, N, d, bw.attnOut.W, d, bw.attnOut.layout, bw.attnOut.bias, ws.attnOut);
    at(`blocks.${L}.hook_attn_out`, ws.attnOut);

    if (!cfg.parallelResidual) {
      k.add(x, ws.attnOut, N * d);
      at(`blocks.${L}.hook_resid_mid`, x);
    }
    // MLP reads x_mid (sequential) or the block's input (parallel; x is untouched so far)
    k.layerNorm(x, N, d, bw.ln2.w, bw.ln2.b, cfg.lnEps, ws.h);
    k.linear(ws.h, N, d, bw.mlpIn.W, cfg.dMlp, bw.mlpIn.layout, bw.mlpIn.bias, ws.mlp);
    k.gelu(ws.mlp, N * cfg.dMlp, cfg.gelu);
    k.linear(ws.mlp, N, cfg.dMlp, bw.mlpOut.W, d, bw.mlpOut.layout, bw.mlpOut.bias, ws.mlpOut);
    at(`blocks.${L}.hook_mlp_out`, ws.mlpOut);
    if (cfg.parallelResidual) k.add(x, ws.attnOut, N * d);
    k.add(x, ws.mlpOut, N * d);
    at(`blocks.${L}.hook_resid_post`, x);
  }

  /** Buffers for N tokens, allocated once and reused (fresh memory is slow to touch on these VMs). */
  private workspace(N: number): Workspace {
    if (this.ws && this.ws.N >= N) return this.ws;
    const { dModel: d, dMlp: f, vocab: V } = this.cfg;
    const a = (n: number) => new Float32Array(n);
    this.ws = { N, resid: a(N * d), h: a(N * d), qkv: a(N * 3 * d), q: a(N * d), k: a(N * d), v: a(N * d), att: a(N * d), attnOut: a(N * d), mlp: a(N * f), mlpOut: a(N * d), logits: a(LOSS_ROWS * V), targets: new Int32Array(LOSS_ROWS), ce: new Float32Array(LOSS_ROWS) };
    return this.ws;
  }
}

interface Workspace {
  N: number;
  resid: Float32Array;
  h: Float32Array;
  qkv: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  att: Float32Array;
  attnOut: Float32Array;
  mlp: Float32Array;
  mlpOut: Float32Array;
  logits: Float32Array;
  targets: Int32Array;
  ce: Float32Array;
}

/**
 * The fused projection's output per token, into q, k, v [N, H·hd]. GPT-2 lays it out as three
 * blocks of d (Q | K | V); GPT-NeoX as H groups of (q, k, v) of head_dim each.
 */
export function splitQkv(qkv: Float32Array, N: number, H: number, hd: number, layout: 'blocks' | 'heads', q: Float32Array, k: Float32Array, v: Float32Array): void {
  const d = H * hd;
  for (let i = 0; i < N; i++) {
    const src = i * 3 * d;
    const dst = i * d;
    if (layout === 'blocks') {
      q.set(qkv.subarray(src, src + d), dst);
      k.set(qkv.subarray(src + d, src + 2 * d), dst);
      v.set(qkv.subarray(src + 2 * d, src + 3 * d), dst);
    } else {
      for (let h = 0; h < H; h++) {
        const s = src + h * 3 * hd;
        q.set(qkv.subarray(s, s + hd), dst + h * hd);
        k.set(qkv.subarray(s + hd, s + 2 * hd), dst + h * hd);
        v.set(qkv.subarray(s + 2 * hd, s + 3 * hd), dst + h * hd);
      }
    }
  }
}
