import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { writeFileAtomic, describeFsError } from '../util/atomic.js';
import { readSafetensors, writeSafetensors } from '../util/safetensors.js';
import { datasetScale, isPreprocessing, PREPROCESSINGS, type Preprocessing } from '../store/preprocess.js';
import { ShardWriter } from '../store/shard-writer.js';
import type { ShardManifest, ShardMeta } from '../store/shard-format.js';
import { DICTIONARY_FILE, SYNTH_FILE, SYNTHETIC_MODEL } from '../store/outputs.js';

/**
 * Synthetic activations with a known dictionary (SPEC §11): x = Σ a_i g_i + noise, feature i
 * firing independently with a Zipf probability scaled by a per-sample difficulty, so that feature
 * recovery can be measured against the answer key G.
 */
export type Magnitude = 'uniform' | 'exponential';

export interface SynthOptions {
  /** output directory (shards, manifest.json, dictionary.safetensors, synth.json) */
  out: string;
  d?: number;
  fTrue?: number;
  /** mean number of active features per sample (before the difficulty multiplier) */
  kTrue?: number;
  alpha?: number;
  beta?: number;
  /** σ of the log-normal per-sample multiplier of every p_i (mean 1); 0 disables */
  difficultySigma?: number;
  magnitude?: Magnitude;
  /** uniform magnitudes lie in [magnitudeMin, magnitudeMax] */
  magnitudeMin?: number;
  magnitudeMax?: number;
  /** mean of exponential magnitudes */
  magnitudeMean?: number;
  /** std of the isotropic Gaussian noise added to every coordinate */
  noise?: number;
  rows?: number;
  seed?: number;
  preprocessing?: Preprocessing;
  rowsPerShard?: number;
  /** replace an existing synthetic set in `out` */
  overwrite?: boolean;
  /** how the user asks for overwrite, named when an existing shard set is refused */
  overwriteHint?: string;
}

/** Every parameter resolved, as written to synth.json and the shard metadata. */
export interface SynthParams {
  d: number;
  fTrue: number;
  kTrue: number;
  alpha: number;
  beta: number;
  difficultySigma: number;
  magnitude: Magnitude;
  magnitudeMin: number;
  magnitudeMax: number;
  magnitudeMean: number;
  noise: number;
  rows: number;
  seed: number;
  preprocessing: Preprocessing;
  /** samples that draw no feature get one drawn ∝ p_i (see generate) */
  minActive: 1;
}

export interface SynthSummary {
  out: string;
  params: SynthParams;
  /** measured mean number of active features per row */
  meanActive: number;
  rows: number;
  shards: number;
  manifest: ShardManifest;
}

export const SYNTH_DEFAULTS = {
  d: 64,
  fTrue: 256,
  kTrue: 8,
  alpha: 1.0,
  // The paper's GPT-2 fit (SPEC §5), so that Zipf FC capacities at their defaults match the data.
  beta: 6.8,
  difficultySigma: 0.5,
  magnitude: 'uniform' as Magnitude,
  magnitudeMin: 0.5,
  magnitudeMax: 1.5,
  magnitudeMean: 1.0,
  noise: 0.01,
  rows: 65536,
  seed: 0,
  preprocessing: 'center_unit_norm' as Preprocessing,
};

export { DICTIONARY_FILE, SYNTH_FILE, SYNTHETIC_MODEL };

export function resolveSynthParams(o: Omit<SynthOptions, 'out'>): SynthParams {
  const p: SynthParams = {
    d: o.d ?? SYNTH_DEFAULTS.d,
    fTrue: o.fTrue ?? SYNTH_DEFAULTS.fTrue,
    kTrue: o.kTrue ?? SYNTH_DEFAULTS.kTrue,
    alpha: o.alpha ?? SYNTH_DEFAULTS.alpha,
    beta: o.beta ?? SYNTH_DEFAULTS.beta,
    difficultySigma: o.difficultySigma ?? SYNTH_DEFAULTS.difficultySigma,
    magnitude: o.magnitude ?? SYNTH_DEFAULTS.magnitude,
    magnitudeMin: o.magnitudeMin ?? SYNTH_DEFAULTS.magnitudeMin,
    magnitudeMax: o.magnitudeMax ?? SYNTH_DEFAULTS.magnitudeMax,
    magnitudeMean: o.magnitudeMean ?? SYNTH_DEFAULTS.magnitudeMean,
    noise: o.noise ?? SYNTH_DEFAULTS.noise,
    rows: o.rows ?? SYNTH_DEFAULTS.rows,
    seed: o.seed ?? SYNTH_DEFAULTS.seed,
    preprocessing: o.preprocessing ?? SYNTH_DEFAULTS.preprocessing,
    minActive: 1,
  };
  // Messages start with the option's CLI flag name (without dashes) so that `sae synth` can
  // point at the flag.
  const bad = (why: string): never => {
    throw new UserError(why);
  };
  const posInt = (name: string, v: number, min = 1) => {
    if (!Number.isSafeInteger(v) || v < min) bad(`${name} must be an integer ≥ ${min}, got ${v}`);
  };
  const finite = (name: string, v: number, ok: boolean, need: string) => {
    if (!Number.isFinite(v) || !ok) bad(`${name} must be ${need}, got ${v}`);
  };
  // d ≥ 2: features are made zero-mean across coordinates, which leaves nothing in d = 1.
  posInt('d', p.d, 2);
  posInt('features', p.fTrue);
  posInt('rows', p.rows);
  finite('k', p.kTrue, p.kTrue > 0 && p.kTrue <= p.fTrue, `in (0, features=${p.fTrue}]`);
  finite('alpha', p.alpha, p.alpha >= 0, '≥ 0');
  finite('beta', p.beta, p.beta > -1, '> -1 (so that rank + beta > 0)');
  finite('difficulty-sigma', p.difficultySigma, p.difficultySigma >= 0, '≥ 0');
  finite('noise', p.noise, p.noise >= 0, '≥ 0');
  if (p.magnitude !== 'uniform' && p.magnitude !== 'exponential') bad(`magnitude must be uniform or exponential, got ${p.magnitude}`);
  finite('magnitude-min', p.magnitudeMin, p.magnitudeMin >= 0, '≥ 0');
  finite('magnitude-max', p.magnitudeMax, p.magnitudeMax > 0 && p.magnitudeMax >= p.magnitudeMin, `> 0 and ≥ magnitude-min (${p.magnitudeMin})`);
  finite('magnitude-mean', p.magnitudeMean, p.magnitudeMean > 0, '> 0');
  if (!Number.isSafeInteger(p.seed) || p.seed < 0 || p.seed > 0xffffffff) bad(`seed must be an integer in [0, 2^32), got ${p.seed}`);
  if (!isPreprocessing(p.preprocessing)) bad(`preprocessing must be one of ${PREPROCESSINGS.join(', ')}, got ${p.preprocessing}`);
  return p;
}

/**
 * F_true random unit vectors in R^d, each made zero-mean across its d coordinates before
 * normalising: center_unit_norm subtracts each sample's coordinate mean, which leaves zero-mean
 * directions unchanged, so the preprocessed data still contain exactly these features.
 */
export function makeDictionary(fTrue: number, d: number, seed: number): Float32Array {
  const rng = Rng.derive(seed, 'synth/dictionary');
  const G = new Float32Array(fTrue * d);
  const v = new Float64Array(d);
  for (let i = 0; i < fTrue; i++) {
    let ss = 0;
    while (!(ss > 1e-12)) {
      let mean = 0;
      for (let j = 0; j < d; j++) {
        v[j] = rng.normal();
        mean += v[j];
      }
      mean /= d;
      ss = 0;
      for (let j = 0; j < d; j++) {
        v[j] -= mean;
        ss += v[j] * v[j];
      }
    }
    const inv = 1 / Math.sqrt(ss);
    for (let j = 0; j < d; j++) G[i * d + j] = v[j] * inv;
  }
  return G;
}

/**
 * Base firing probabilities p_i = min(1, c/(i+β)^α) for ranks i = 1..F, with c chosen (by
 * bisection, since clipping makes the sum non-linear in c) so that Σ p_i = k.
 */
export function firingProbabilities(fTrue: number, kTrue: number, alpha: number, beta: number): Float64Array {
  const w = new Float64Array(fTrue);
  for (let i = 0; i < fTrue; i++) w[i] = 1 / Math.pow(i + 1 + beta, alpha);
  const total = (c: number) => {
    let s = 0;
    for (let i = 0; i < fTrue; i++) s += Math.min(1, c * w[i]);
    return s;
  };
  let lo = 0;
  let hi = 1;
  while (total(hi) < kTrue && hi < 1e300) hi *= 2;
  for (let it = 0; it < 200 && hi - lo > 1e-15 * hi; it++) {
    const mid = (lo + hi) / 2;
    if (total(mid) < kTrue) lo = mid;
    else hi = mid;
  }
  const p = new Float64Array(fTrue);
  for (let i = 0; i < fTrue; i++) p[i] = Math.min(1, hi * w[i]);
  return p;
}

/** Rows are generated and handed to the shard writer in chunks of this many. */
const CHUNK = 4096;
/** Features are visited in blocks; within a block, candidate firings are found by geometric skips. */
const BLOCK = 16;

/**
 * Generates rows in order from two independent streams (which features fire and how strongly;
 * noise), so that the same seed gives the same rows whatever the chunking, and changing only the
 * noise level keeps the same firing pattern.
 */
export class SynthGenerator {
  private readonly rng: Rng;
  private readonly noiseRng: Rng;
  private readonly cdf: Float64Array;
  private spare = 0;
  private hasSpare = false;
  /** indices of the features active in the last drawn sample (first `count` entries) */
  readonly active: Int32Array;

  constructor(
    private readonly P: SynthParams,
    private readonly G: Float32Array,
    private readonly p: Float64Array,
  ) {
    this.rng = Rng.derive(P.seed, 'synth/rows');
    this.noiseRng = Rng.derive(P.seed, 'synth/noise');
    this.cdf = new Float64Array(P.fTrue);
    let s = 0;
    for (let i = 0; i < P.fTrue; i++) this.cdf[i] = s += p[i];
    this.active = new Int32Array(P.fTrue);
  }

  private gauss(): number {
    // Box–Muller with both outputs used: noise is most of the draws.
    if (this.hasSpare) {
      this.hasSpare = false;
      return this.spare;
    }
    let u = this.noiseRng.next();
    while (u <= 0) u = this.noiseRng.next();
    const v = this.noiseRng.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    this.hasSpare = true;
    return r * Math.cos(2 * Math.PI * v);
  }

  private magnitude(): number {
    const P = this.P;
    if (P.magnitude === 'uniform') return P.magnitudeMin + (P.magnitudeMax - P.magnitudeMin) * this.rng.next();
    return -P.magnitudeMean * Math.log(1 - this.rng.next());
  }

  /** Indices of the features firing in one sample, into this.active; returns their count. */
  draw(): number {
    const { P, p, rng } = this;
    const F = P.fTrue;
    let mult = 1;
    if (P.difficultySigma > 0) {
      // log-normal with mean 1, so the mean active count stays near k
      mult = Math.exp(P.difficultySigma * rng.normal() - (P.difficultySigma * P.difficultySigma) / 2);
    }
    let n = 0;
    for (let b = 0; b < F; b += BLOCK) {
      const end = Math.min(F, b + BLOCK);
      // p is non-increasing in rank, so the block's first entry bounds the rest.
      const q = Math.min(1, p[b] * mult);
      if (q <= 0) break;
      if (q > 0.25) {
        for (let i = b; i < end; i++) if (rng.next() < Math.min(1, p[i] * mult)) this.active[n++] = i;
        continue;
      }
      // Thinning: candidates arrive as a Bernoulli(q) process (geometric gaps); candidate i is
      // kept with probability p_i·mult/q, which makes each feature fire with exactly p_i·mult.
      const logq = Math.log1p(-q);
      let i = b - 1;
      for (;;) {
        let u = rng.next();
        while (u <= 0) u = rng.next();
        i += 1 + Math.floor(Math.log(u) / logq);
        if (i >= end) break;
        if (rng.next() * q < Math.min(1, p[i] * mult)) this.active[n++] = i;
      }
    }
    if (n === 0) {
      // A sample with nothing but noise would become pure noise scaled to unit norm under
      // center_unit_norm; give it one feature drawn ∝ p_i instead.
      const t = rng.next() * this.cdf[F - 1];
      let lo = 0;
      let hi = F - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.cdf[mid] > t) hi = mid;
        else lo = mid + 1;
      }
      this.active[n++] = lo;
    }
    return n;
  }

  /** Fill x (n×d) with the next n raw samples; active counts go to counts. */
  fill(x: Float32Array, n: number, counts: Int32Array): void {
    const d = this.P.d;
    const G = this.G;
    const noise = this.P.noise;
    for (let r = 0; r < n; r++) {
      const o = r * d;
      if (noise > 0) for (let j = 0; j < d; j++) x[o + j] = noise * this.gauss();
      else x.fill(0, o, o + d);
      const k = this.draw();
      counts[r] = k;
      for (let t = 0; t < k; t++) {
        const i = this.active[t];
        const a = this.magnitude();
        const g = i * d;
        for (let j = 0; j < d; j++) x[o + j] += a * G[g + j];
      }
    }
  }
}

function synthMeta(P: SynthParams, scale?: number): ShardMeta {
  const extras: Record<string, string> = {};
  for (const [k, v] of Object.entries(P)) if (k !== 'd' && k !== 'preprocessing') extras[k] = String(v);
  return {
    model: SYNTHETIC_MODEL,
    revision: '',
    hook: 'synthetic',
    d: P.d,
    ctx: 0,
    dtype: 'float32',
    preprocessing: P.preprocessing,
    ...(scale !== undefined ? { scale } : {}),
    tokenizer: 'none',
    dataset: `synth seed=${P.seed} rows=${P.rows} features=${P.fTrue} k=${P.kTrue}`,
    extras,
  };
}

export async function writeSynth(opts: SynthOptions): Promise<SynthSummary> {
  const P = resolveSynthParams(opts);
  const out = opts.out;
  const G = makeDictionary(P.fTrue, P.d, P.seed);
  const p = firingProbabilities(P.fTrue, P.kTrue, P.alpha, P.beta);
  const gen = new SynthGenerator(P, G, p);
  const chunkRows = Math.min(CHUNK, P.rows);
  const x = new Float32Array(chunkRows * P.d);
  const counts = new Int32Array(P.rows);
  // dataset_scale needs its constant before the first row is written: estimate it on the first
  // chunk, which is then written as is.
  let n = chunkRows;
  gen.fill(x, n, counts);
  const scale = P.preprocessing === 'dataset_scale' ? datasetScale(x, n, P.d) : undefined;
  const writer = await ShardWriter.create(out, synthMeta(P, scale), {
    rowsPerShard: opts.rowsPerShard,
    preprocess: true,
    overwrite: opts.overwrite,
    overwriteHint: opts.overwriteHint,
  });
  try {
    let done = 0;
    for (;;) {
      await writer.append(x.subarray(0, n * P.d), n);
      done += n;
      if (done === P.rows) break;
      n = Math.min(chunkRows, P.rows - done);
      gen.fill(x, n, counts.subarray(done, done + n));
    }
    let totalActive = 0;
    for (let r = 0; r < P.rows; r++) totalActive += counts[r];
    const meanActive = totalActive / P.rows;
    await writeSafetensors(
      path.join(out, DICTIONARY_FILE),
      {
        G: { dtype: 'F32', shape: [P.fTrue, P.d], data: G },
        p: { dtype: 'F64', shape: [P.fTrue], data: p },
        active_count: { dtype: 'I32', shape: [P.rows], data: counts },
      },
      { format: 'sae-synth/1' },
    );
    await writeFileAtomic(path.join(out, SYNTH_FILE), JSON.stringify({ format: 'sae-synth/1', params: P, meanActive }, null, 2) + '\n');
    // The manifest goes last: only now is the directory complete.
    const manifest = await writer.close();
    return { out, params: P, meanActive, rows: manifest.rows, shards: manifest.shards.length, manifest };
  } catch (err) {
    await writer.abort();
    throw err;
  }
}

export interface SynthDictionary {
  /** F_true×d, unit rows */
  G: Float32Array;
  fTrue: number;
  d: number;
  /** base firing probability of each feature (rank order) when recorded */
  p?: Float64Array;
  /** number of active features of each row in generation order, when recorded */
  activeCount?: Int32Array;
  params?: SynthParams;
}

/** Load the answer key written beside synthetic shards. */
export async function loadDictionary(dir: string): Promise<SynthDictionary> {
  const file = path.join(dir, DICTIONARY_FILE);
  const { tensors } = await readSafetensors(file);
  const g = tensors.G;
  if (!g || g.dtype !== 'F32' || g.shape.length !== 2) throw new UserError(`${file}: no F32 tensor G [features, d]`);
  const [fTrue, d] = g.shape;
  const dict: SynthDictionary = { G: g.data as Float32Array, fTrue, d };
  if (tensors.p?.dtype === 'F64' && tensors.p.shape[0] === fTrue) dict.p = tensors.p.data as Float64Array;
  if (tensors.active_count?.dtype === 'I32') dict.activeCount = tensors.active_count.data as Int32Array;
  let text: string | null = null;
  try {
    text = await fs.readFile(path.join(dir, SYNTH_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw describeFsError(err, `reading ${path.join(dir, SYNTH_FILE)}`);
  }
  if (text !== null) {
    try {
      dict.params = (JSON.parse(text) as { params: SynthParams }).params;
    } catch {
      throw new UserError(`${path.join(dir, SYNTH_FILE)}: malformed JSON`);
    }
  }
  return dict;
}
