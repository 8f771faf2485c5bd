/**
 * Per-feature firing statistics (SPEC §6): running density for ranks, Zipf capacities and the dying
 * set; last firing for the dead set; lifetime counts for reports. O(nnz + F) per update.
 */
import type { SparseCodes } from '../kernels/types.js';
import { UserError } from '../util/errors.js';

export interface FeatureStatsOptions {
  /** γ in d ← γ·d + (1−γ)·f, per update; default 0.99 */
  emaDecay?: number;
}

/** Plain-JSON snapshot; typed arrays as base64 of their float64 bytes so that resume is bit-exact. */
export interface FeatureStatsState {
  version: 1;
  F: number;
  emaDecay: number;
  updates: number;
  tokensSeen: number;
  ema: string;
  lastFired: string;
  counts: string;
}

export class FeatureStats {
  readonly F: number;
  readonly emaDecay: number;
  /**
   * Bias-corrected EMA of the fraction of a batch's tokens on which each feature fired: the raw EMA
   * starts at 0, so it is divided by 1 − γ^t (as Adam does) to read as a density from the first
   * update on. The correction scales every feature alike, so ranks and the dying set
   * (scale-free, Definition 3.1) are unaffected; it matters for reported densities. 0 before any update.
   */
  readonly density: Float64Array;
  /** Token counter value (1-based position in the stream) of each feature's latest firing; 0 = never. */
  readonly lastFired: Float64Array;
  /** Total firings per feature since the start of training. */
  readonly cumulativeCounts: Float64Array;
  private readonly ema: Float64Array;
  private readonly batchCounts: Float64Array;
  private updatesDone = 0;
  private tokens = 0;

  constructor(F: number, opts: FeatureStatsOptions = {}) {
    if (!Number.isSafeInteger(F) || F < 1) throw new RangeError(`FeatureStats: F must be a positive integer, got ${F}`);
    const decay = opts.emaDecay ?? 0.99;
    if (!(decay >= 0 && decay < 1)) throw new UserError(`density EMA decay must be in [0, 1), got ${decay}`);
    this.F = F;
    this.emaDecay = decay;
    this.density = new Float64Array(F);
    this.lastFired = new Float64Array(F);
    this.cumulativeCounts = new Float64Array(F);
    this.ema = new Float64Array(F);
    this.batchCounts = new Float64Array(F);
  }

  get tokensSeen(): number {
    return this.tokens;
  }

  get updates(): number {
    return this.updatesDone;
  }

  /** Record one batch of B tokens. An entry fires its feature when its value is > 0. */
  update(codes: SparseCodes, B: number): void {
    if (!Number.isSafeInteger(B) || B < 1 || codes.B !== B) {
      throw new RangeError(`FeatureStats.update: batch of ${B} tokens but codes hold ${codes.B}`);
    }
    const counts = this.batchCounts;
    counts.fill(0);
    for (let b = 0; b < B; b++) {
      const position = this.tokens + b + 1;
      for (let e = codes.rowPtr[b]; e < codes.rowPtr[b + 1]; e++) {
        if (!(codes.value[e] > 0)) continue;
        const j = codes.index[e];
        counts[j]++;
        this.lastFired[j] = position;
      }
    }
    this.tokens += B;
    this.updatesDone++;
    const g = this.emaDecay;
    for (let j = 0; j < this.F; j++) {
      this.cumulativeCounts[j] += counts[j];
      this.ema[j] = g * this.ema[j] + (1 - g) * (counts[j] / B);
    }
    this.refreshDensity();
  }

  /**
   * Dead (SPEC §6): has not fired in the last deadWindow tokens, i.e. tokensSeen − lastFired ≥
   * deadWindow. With lastFired = 0 for a feature that never fired, it turns dead only once deadWindow
   * tokens have been seen. Writes 1/0 per feature into out; returns the number dead.
   */
  deadMask(deadWindow: number, out: Uint8Array): number {
    checkWindow(deadWindow);
    if (out.length < this.F) throw new RangeError(`FeatureStats.deadMask: mask of ${out.length} for F=${this.F}`);
    let n = 0;
    for (let j = 0; j < this.F; j++) {
      const dead = this.tokens - this.lastFired[j] >= deadWindow;
      out[j] = dead ? 1 : 0;
      if (dead) n++;
    }
    return n;
  }

  deadFraction(deadWindow: number): number {
    checkWindow(deadWindow);
    let n = 0;
    for (let j = 0; j < this.F; j++) if (this.tokens - this.lastFired[j] >= deadWindow) n++;
    return n / this.F;
  }

  /** Number of features that have fired at least once. */
  firedEver(): number {
    let n = 0;
    for (let j = 0; j < this.F; j++) if (this.cumulativeCounts[j] > 0) n++;
    return n;
  }

  toState(): FeatureStatsState {
    return {
      version: 1,
      F: this.F,
      emaDecay: this.emaDecay,
      updates: this.updatesDone,
      tokensSeen: this.tokens,
      ema: toBase64(this.ema),
      lastFired: toBase64(this.lastFired),
      counts: toBase64(this.cumulativeCounts),
    };
  }

  static fromState(state: FeatureStatsState): FeatureStats {
    if (state?.version !== 1) throw new UserError(`feature stats: unsupported state version ${String(state?.version)}`);
    const { F, emaDecay, updates, tokensSeen } = state;
    const whole = (n: number, min: number): boolean => Number.isSafeInteger(n) && n >= min;
    if (!whole(F, 1) || !whole(updates, 0) || !whole(tokensSeen, 0)) {
      throw new UserError('feature stats: corrupt state (bad width, update count or token count)');
    }
    const s = new FeatureStats(F, { emaDecay });
    s.ema.set(fromBase64(state.ema, F, 'ema'));
    s.lastFired.set(fromBase64(state.lastFired, F, 'lastFired'));
    s.cumulativeCounts.set(fromBase64(state.counts, F, 'counts'));
    s.updatesDone = updates;
    s.tokens = tokensSeen;
    s.refreshDensity();
    return s;
  }

  private refreshDensity(): void {
    if (this.updatesDone === 0) {
      this.density.fill(0);
      return;
    }
    const correction = 1 - Math.pow(this.emaDecay, this.updatesDone);
    for (let j = 0; j < this.F; j++) this.density[j] = this.ema[j] / correction;
  }
}

function checkWindow(deadWindow: number): void {
  if (!(deadWindow >= 1)) throw new UserError(`dead window must be ≥ 1 token, got ${deadWindow}`);
}

// Native byte order: every platform Node runs on in practice is little-endian.
function toBase64(a: Float64Array): string {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
}

function fromBase64(s: string, F: number, name: string): Float64Array {
  const bytes = typeof s === 'string' ? Buffer.from(s, 'base64') : Buffer.alloc(0);
  if (bytes.length !== F * 8) throw new UserError(`feature stats: corrupt state (${name} holds ${bytes.length} bytes, expected ${F * 8})`);
  const out = new Float64Array(F);
  new Uint8Array(out.buffer).set(bytes);
  return out;
}
