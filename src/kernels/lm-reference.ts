import type { LmKernels } from './lm-types.js';
import { Bf16Scratch, bf16Gemm, type Precision } from './bf16.js';

/**
 * The LM ops in plain TypeScript: the oracle every faster implementation is checked against.
 * Sums run in float64 so that this side's rounding is far below float32's.
 *
 * `precision: 'bf16'` (docs/precision.md) changes `linear` only — the q/k/v, attention-output and
 * MLP projections and the unembedding: x and W rounded to bf16, products summed in float32 in
 * `bf16Gemm`'s fixed order, the bias added in float32. Attention's QKᵀ and P·V products are
 * activation × activation and stay float32 (PyTorch's autocast would round them; the rule does
 * not), as do LayerNorm, GELU, rotary, the residual adds, softmax and the losses: they run exactly
 * as under 'fp32', the default.
 */
export function createReferenceLmKernels(opts: { precision?: Precision } = {}): LmKernels {
  const precision = opts.precision ?? 'fp32';
  const bf16 = precision === 'bf16' ? new Bf16Scratch() : null;
  return {
    name: precision === 'fp32' ? 'reference' : `reference-${precision}`,
    precision,

    linear(x, n, k, W, m, layout, bias, y) {
      if (bf16) {
        bf16Gemm(x, W, y, n, m, k, layout === 'in_out' ? 'kn' : 'nk', bias, bf16);
        return;
      }
      const acc = new Float64Array(m);
      for (let i = 0; i < n; i++) {
        if (bias) for (let j = 0; j < m; j++) acc[j] = bias[j];
        else acc.fill(0);
        const xi = i * k;
        if (layout === 'in_out') {
          for (let p = 0; p < k; p++) {
            const a = x[xi + p];
            const row = p * m;
            for (let j = 0; j < m; j++) acc[j] += a * W[row + j];
          }
        } else {
          for (let j = 0; j < m; j++) {
            let s = 0;
            const row = j * k;
            for (let p = 0; p < k; p++) s += x[xi + p] * W[row + p];
            acc[j] += s;
          }
        }
        for (let j = 0; j < m; j++) y[i * m + j] = acc[j];
      }
    },

    layerNorm(x, n, d, w, b, eps, y) {
      for (let i = 0; i < n; i++) {
        const o = i * d;
        let mean = 0;
        for (let j = 0; j < d; j++) mean += x[o + j];
        mean /= d;
        let v = 0;
        for (let j = 0; j < d; j++) v += (x[o + j] - mean) ** 2;
        const inv = 1 / Math.sqrt(v / d + eps);
        for (let j = 0; j < d; j++) y[o + j] = (x[o + j] - mean) * inv * w[j] + b[j];
      }
    },

    gelu(x, n, kind) {
      if (kind === 'tanh') {
        const c = Math.sqrt(2 / Math.PI);
        for (let i = 0; i < n; i++) {
          const v = x[i];
          x[i] = 0.5 * v * (1 + Math.tanh(c * (v + 0.044715 * v * v * v)));
        }
      } else {
        for (let i = 0; i < n; i++) x[i] = 0.5 * x[i] * (1 + erf(x[i] / Math.SQRT2));
      }
    },

    add(a, b, n) {
      for (let i = 0; i < n; i++) a[i] += b[i];
    },

    rotary(x, B, T, H, hd, dims, base) {
      const half = dims / 2;
      const width = H * hd;
      for (let t = 0; t < T; t++) {
        for (let i = 0; i < half; i++) {
          const theta = t * Math.pow(base, (-2 * i) / dims);
          const c = Math.cos(theta);
          const s = Math.sin(theta);
          for (let b = 0; b < B; b++) {
            const row = (b * T + t) * width;
            for (let h = 0; h < H; h++) {
              const o = row + h * hd;
              const x1 = x[o + i];
              const x2 = x[o + half + i];
              x[o + i] = x1 * c - x2 * s;
              x[o + half + i] = x2 * c + x1 * s;
            }
          }
        }
      }
    },

    attention(q, k, v, B, T, H, hd, out, pattern) {
      const width = H * hd;
      const scale = 1 / Math.sqrt(hd);
      const p = new Float64Array(T);
      const acc = new Float64Array(hd);
      for (let b = 0; b < B; b++) {
        for (let h = 0; h < H; h++) {
          for (let t = 0; t < T; t++) {
            const qo = (b * T + t) * width + h * hd;
            let max = -Infinity;
            for (let s = 0; s <= t; s++) {
              const ko = (b * T + s) * width + h * hd;
              let dot = 0;
              for (let e = 0; e < hd; e++) dot += q[qo + e] * k[ko + e];
              p[s] = dot * scale;
              if (p[s] > max) max = p[s];
            }
            let sum = 0;
            for (let s = 0; s <= t; s++) sum += p[s] = Math.exp(p[s] - max);
            acc.fill(0);
            for (let s = 0; s <= t; s++) {
              p[s] /= sum;
              const vo = (b * T + s) * width + h * hd;
              for (let e = 0; e < hd; e++) acc[e] += p[s] * v[vo + e];
            }
            for (let e = 0; e < hd; e++) out[qo + e] = acc[e];
            if (pattern) {
              const po = ((b * H + h) * T + t) * T;
              for (let s = 0; s < T; s++) pattern[po + s] = s <= t ? p[s] : 0;
            }
          }
        }
      }
    },

    crossEntropy(logits, n, V, targets, loss) {
      for (let i = 0; i < n; i++) {
        const o = i * V;
        let max = -Infinity;
        for (let j = 0; j < V; j++) if (logits[o + j] > max) max = logits[o + j];
        let sum = 0;
        for (let j = 0; j < V; j++) sum += Math.exp(logits[o + j] - max);
        loss[i] = max + Math.log(sum) - logits[o + targets[i]];
      }
    },

    klDivergence(p, q, n, V, qBroadcast, out) {
      // in float64: log P_j = p_j − lse(p), KL = Σ P_j (log P_j − log Q_j)
      const lse = (x: Float32Array, o: number) => {
        let max = -Infinity;
        for (let j = 0; j < V; j++) if (x[o + j] > max) max = x[o + j];
        let sum = 0;
        for (let j = 0; j < V; j++) sum += Math.exp(x[o + j] - max);
        return max + Math.log(sum);
      };
      for (let i = 0; i < n; i++) {
        const op = i * V;
        const oq = qBroadcast ? 0 : i * V;
        const lp = lse(p, op);
        const lq = lse(q, oq);
        let kl = 0;
        for (let j = 0; j < V; j++) {
          const logP = p[op + j] - lp;
          kl += Math.exp(logP) * (logP - (q[oq + j] - lq));
        }
        out[i] = kl;
      }
    },
  };
}

/** erf to float64 accuracy (W. J. Cody's rational approximations, as in most libm implementations). */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 0.5) {
    const t = x * x;
    const num = (((0.1857777061846031526730 * t + 3.161123743870565596947) * t + 113.8641541510501556495) * t + 377.4852376853020208137) * t + 3209.377589138469472562;
    const den = (((t + 23.60129095234412093499) * t + 244.0246379344441733056) * t + 1282.616526077372275645) * t + 2844.236833439170622273;
    return (x * num) / den;
  }
  return x < 0 ? -(1 - erfcPositive(ax)) : 1 - erfcPositive(ax);
}

function erfcPositive(x: number): number {
  if (x < 4) {
    const num = (((((((-1.36864857382716707e-7 * x + 0.564195517478973971) * x + 7.21175825088309366) * x + 43.1622272220567353) * x + 152.989285046940404) * x + 339.320816734343687) * x + 451.918953711872942) * x + 300.459261020161601);
    const den = (((((((x + 12.7827273196294235) * x + 77.0001529352294730) * x + 277.585444743988643) * x + 638.980264465631167) * x + 931.354094850609888) * x + 790.950925327898027) * x + 300.459260956983293);
    return Math.exp(-x * x) * (num / den);
  }
  const z = 1 / (x * x);
  const num = ((((0.0223192459734184686 * z + 0.278661308609647779) * z + 0.226956593539686930) * z + 0.0494730910623250734) * z + 0.00299610707703542174);
  const den = ((((z + 1.98733201817135256) * z + 1.05167510706793207) * z + 0.191308926107829841) * z + 0.0106209230528467918);
  const r = (z * num) / den;
  return (Math.exp(-x * x) / x) * (0.5641895835477563 - r) ;
}
