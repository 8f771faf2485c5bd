/**
 * Run directories → the plain data every report figure is built from. Nothing here draws.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import { FeatureStats, type FeatureStatsState } from '../sae/density.js';
import { runCheckpoint } from '../sae/checkpoint.js';
import { openSae } from '../sae/sae.js';
import { openShards } from '../store/shard-set.js';
import { evaluateSae } from '../eval/evaluate.js';
import type { KernelFactory } from '../kernels/types.js';
import { densityFits, zipfCurve, type ZipfCurve } from '../eval/zipf-fit.js';
import { FEATURES_SCHEMA, TOKEN_KINDS, type FeatureIndex, type FeaturesManifest, type FeaturesSae, type TokenKind } from '../eval/feature-data.js';
import { FEATURES_MANIFEST } from '../store/outputs.js';

/** One logged training step (a subset of a metrics.jsonl line). */
export interface MetricPoint {
  step: number;
  total?: number;
  recon?: number;
  fvu?: number;
  l0?: number;
  deadFraction?: number;
  dyingFraction?: number;
  lr?: number;
}

export interface RunData {
  /** label in legends: the run directory's name (made unique) */
  name: string;
  dir: string;
  activations: string[];
  d: number;
  width: number;
  steps: number;
  /** training's dead fraction: no firing in the last deadWindow training tokens */
  deadFraction: number;
  deadWindow: number;
  /** L0 and FVU for the Pareto view, and where they were measured */
  l0: number | null;
  fvu: number | null;
  measuredOn: string;
  metrics: MetricPoint[];
  /** per-feature density, densest first (rank 1 first), and where it came from */
  density: number[] | null;
  densitySource: string;
  /** Zipf fit over all features with density > 0, and over ranks 100..20,000 (SPEC §9) when the run is that wide */
  fit: ZipfCurve | null;
  fitMid: ZipfCurve | null;
  /** featuresPerToken[n] = fraction of tokens with n active features (last bin: ≥ n) */
  featuresPerToken: number[] | null;
  featuresPerTokenSource: string;
  /** fraction of the LM loss recovered when the SAE is spliced in, when known */
  lossRecovered: number | null;
}

export interface LoadOptions {
  /** activation shards to evaluate each run's final weights on (features per token, L0, FVU) */
  data?: string;
  maxRows?: number;
  allowNoManifest?: boolean;
  /** the evaluation's kernels, at the precision it runs at (kernelFactory(name, precision)) */
  kernels?: KernelFactory;
}

const METRIC_KEYS = ['total', 'recon', 'fvu', 'l0', 'deadFraction', 'dyingFraction', 'lr'] as const;

async function readText(file: string): Promise<string | null> {
  return fs.readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return null;
    throw e;
  });
}

async function readJsonIfPresent(file: string, label: string): Promise<Record<string, unknown> | null> {
  const text = await readText(file);
  if (text === null) return null;
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch {
    throw new UserError(`${label}: ${file} is not a JSON object`);
  }
}

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** metrics.jsonl → points; an unparsable line (e.g. one being written) is skipped. */
export function parseMetrics(text: string): MetricPoint[] {
  const out: MetricPoint[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line) as Record<string, unknown>;
    } catch {
      continue;
    }
    const step = num(o?.step);
    if (step === null) continue;
    const p: MetricPoint = { step };
    for (const k of METRIC_KEYS) {
      const v = num(o[k]);
      if (v !== null) p[k] = v;
    }
    out.push(p);
  }
  return out;
}

/** Densities from a checkpoint's training statistics (state.json), densest first. */
async function trainingDensity(ckDir: string): Promise<number[] | null> {
  const state = await readJsonIfPresent(path.join(ckDir, 'state.json'), `checkpoint ${ckDir}`);
  if (!state?.stats) return null;
  const stats = FeatureStats.fromState(state.stats as FeatureStatsState);
  if (stats.updates === 0) return null;
  return Array.from(stats.density).sort((a, b) => b - a);
}

function histogramToFractions(h: unknown): number[] | null {
  if (!Array.isArray(h) || !h.length || !h.every((v) => typeof v === 'number' && v >= 0)) return null;
  const total = (h as number[]).reduce((a, b) => a + b, 0);
  if (!(total > 0)) return null;
  return (h as number[]).map((v) => v / total);
}

export async function loadRun(dir: string, opts: LoadOptions = {}): Promise<RunData> {
  const label = `run ${dir}`;
  const { metricsText, summary } = await readRunFiles(dir, label);
  const run = runFromSummary(dir, summary, parseMetrics(metricsText), label);
  const ckDir = await runCheckpoint(dir);
  if (ckDir) {
    run.density = await trainingDensity(ckDir);
    if (run.density) run.densitySource = `training density statistics (EMA) in ${path.basename(ckDir)}/`;
  }
  useSavedEval(run, await readJsonIfPresent(path.join(dir, 'eval.json'), label));
  if (opts.data) {
    if (!ckDir) throw new UserError(`${label}: no checkpoint to evaluate (neither final/ nor checkpoint/)`);
    await evaluateRun(run, ckDir, opts.data, opts);
  }
  if (run.density) {
    // the fits `sae eval` prints for the same densities
    const fits = densityFits(run.density);
    run.fit = zipfCurve(fits.all);
    run.fitMid = zipfCurve(fits.ranks100to20000);
  }
  run.lossRecovered = await lossRecovered(dir, metricsText, label);
  return run;
}

/** A finished run's metrics.jsonl and summary.json, or a one-line reason it is not one. */
async function readRunFiles(dir: string, label: string): Promise<{ metricsText: string; summary: Record<string, unknown> }> {
  const st = await fs.stat(dir).catch(() => null);
  if (!st) throw new UserError(`${label}: no such directory`);
  if (!st.isDirectory()) throw new UserError(`${label}: not a directory`);
  const metricsText = await readText(path.join(dir, 'metrics.jsonl'));
  const summary = await readJsonIfPresent(path.join(dir, 'summary.json'), label);
  if (metricsText === null || summary === null) {
    const missing = [metricsText === null ? 'metrics.jsonl' : null, summary === null ? 'summary.json' : null].filter(Boolean).join(' and ');
    throw new UserError(`${label} is not a finished training run: it has no ${missing}`);
  }
  return { metricsText, summary };
}

/** What summary.json says of a run, with L0 and FVU from its last logged training batch. */
function runFromSummary(dir: string, summary: Record<string, unknown>, metrics: MetricPoint[], label: string): RunData {
  const width = num(summary.width);
  const d = num(summary.d);
  if (width === null || d === null) throw new UserError(`${label}: summary.json lacks d/width`);
  const last = (summary.last ?? {}) as Record<string, unknown>;
  return {
    name: path.basename(path.resolve(dir)),
    dir,
    activations: Array.isArray(summary.activations) ? (summary.activations as unknown[]).map(String) : [],
    d,
    width,
    steps: num(summary.steps) ?? 0,
    deadFraction: num(summary.deadFraction) ?? NaN,
    deadWindow: num(summary.deadWindow) ?? NaN,
    l0: num(last.l0),
    fvu: num(last.fvu),
    measuredOn: 'the last logged training batch',
    metrics,
    density: null,
    densitySource: '',
    fit: null,
    fitMid: null,
    featuresPerToken: null,
    featuresPerTokenSource: '',
    lossRecovered: null,
  };
}

/** A saved `sae eval` output next to the run: features per token, and L0/FVU measured on its rows. */
function useSavedEval(run: RunData, saved: Record<string, unknown> | null): void {
  if (!saved) return;
  const f = histogramToFractions(saved.l0Histogram);
  if (f) {
    run.featuresPerToken = f;
    run.featuresPerTokenSource = `eval.json (${num(saved.rows) ?? '?'} rows)`;
  }
  if (num(saved.l0) !== null && num(saved.fvu) !== null) {
    run.l0 = num(saved.l0);
    run.fvu = num(saved.fvu);
    run.measuredOn = `eval.json (${num(saved.rows) ?? '?'} rows)`;
  }
}

/** Evaluate the run's checkpoint on --data: features per token, L0/FVU and feature densities there. */
async function evaluateRun(run: RunData, ckDir: string, data: string, opts: LoadOptions): Promise<void> {
  const sae = await openSae(ckDir);
  const set = await openShards(data, { allowNoManifest: opts.allowNoManifest });
  // as `sae eval`: the same d is not enough, the shards must be the SAE's own hook, model and preprocessing
  sae.checkData(set.meta);
  const res = await evaluateSae(sae.params, set, sae.selection(), { batchSize: sae.batchSize, maxRows: opts.maxRows, kernels: opts.kernels });
  run.featuresPerToken = histogramToFractions(res.l0Histogram);
  run.featuresPerTokenSource = `${res.rows} rows of ${data}`;
  run.l0 = res.l0;
  run.fvu = res.fvu;
  run.measuredOn = `${res.rows} rows of ${data}${res.precision !== 'fp32' ? ` at ${res.precision}` : ''}`;
  // measured on --data, as `sae eval --data` measures them: the two then print the same Zipf fit
  run.density = Array.from(res.density).sort((a, b) => b - a);
  run.densitySource = `firing frequency on ${res.rows} rows of ${data}`;
}

/** Loss recovered: splice.json from the splice evaluation, else the last metrics line that has it. */
async function lossRecovered(dir: string, metricsText: string, label: string): Promise<number | null> {
  const splice = await readJsonIfPresent(path.join(dir, 'splice.json'), label);
  // `sae splice-eval --out RUN/splice.json` (schema sae-splice/1: the batch selection is spliced[0])
  const spliced = Array.isArray(splice?.spliced) ? (splice.spliced as Array<Record<string, unknown>>) : [];
  const saved = num(splice?.lossRecovered) ?? num(spliced[0]?.lossRecovered);
  if (saved !== null) return saved;
  for (const line of metricsText.split('\n').reverse()) {
    if (!line.includes('lossRecovered')) continue;
    try {
      const v = num((JSON.parse(line) as Record<string, unknown>).lossRecovered);
      if (v !== null) return v;
    } catch {
      /* a partial line */
    }
  }
  return null;
}

/** Load several runs; names made unique (a/final and b/final both named "final" → "final", "final#2"). */
export async function loadRuns(dirs: string[], opts: LoadOptions = {}): Promise<RunData[]> {
  if (!dirs.length) throw new UserError('give at least one run directory');
  const runs: RunData[] = [];
  const seen = new Map<string, number>();
  const given = new Set<string>();
  for (const dir of dirs) {
    // a run named twice (runs/mc runs/mc/ ./runs/mc, or a shell glob overlapping a name) is one run
    const key = path.resolve(dir);
    if (given.has(key)) continue;
    given.add(key);
    const r = await loadRun(dir, opts);
    const n = (seen.get(r.name) ?? 0) + 1;
    seen.set(r.name, n);
    if (n > 1) r.name = `${r.name}#${n}`;
    runs.push(r);
  }
  return runs;
}

/** One SAE of a features folder: what the appendix-D figure and the browser section show of it. */
export interface FeatureFolderSae {
  label: string;
  activation: string;
  F: number;
  tokens: number;
  /** perToken.byKind of its index.json: byKind[kind][n] = tokens of that kind with n active features */
  byKind: Record<TokenKind, number[]>;
}

/** A folder written by `sae features`: its manifest, and each SAE's per-token counts. */
export interface FeatureFolderData {
  /** label in the report: the folder's name (made unique) */
  name: string;
  dir: string;
  manifest: FeaturesManifest;
  saes: FeatureFolderSae[];
}

const isCounts = (v: unknown): v is number[] => Array.isArray(v) && v.every((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0);

/** A `sae features` folder (src/eval/feature-data.ts), or a one-line reason it is not one. */
export async function loadFeatureFolder(dir: string): Promise<FeatureFolderData> {
  const label = `--features ${dir}`;
  const st = await fs.stat(dir).catch(() => null);
  if (!st) throw new UserError(`${label}: no such directory`);
  if (!st.isDirectory()) throw new UserError(`${label} is not a sae features folder: it is a file, not a directory`);
  const m = await readJsonIfPresent(path.join(dir, FEATURES_MANIFEST), label);
  if (m === null) throw new UserError(`${label} is not a sae features folder: it has no ${FEATURES_MANIFEST}`);
  if (m.schema !== FEATURES_SCHEMA) throw new UserError(`${label} is not a sae features folder: ${FEATURES_MANIFEST} has schema ${JSON.stringify(m.schema ?? null)}, not ${FEATURES_SCHEMA}`);
  if (!Array.isArray(m.saes) || !m.saes.length) throw new UserError(`${label}: ${FEATURES_MANIFEST} lists no SAEs`);
  if ((await readText(path.join(dir, 'index.html'))) === null) throw new UserError(`${label}: it has no index.html (the feature browser); rerun sae features`);
  const manifest = m as unknown as FeaturesManifest;
  const saes: FeatureFolderSae[] = [];
  for (const s of manifest.saes as unknown[]) {
    const sae = (s ?? {}) as Partial<FeaturesSae>;
    // a label is a subfolder's name: nothing that could lead out of the folder
    if (typeof sae.label !== 'string' || !/^[^/\\]+$/.test(sae.label) || sae.label === '.' || sae.label === '..') {
      throw new UserError(`${label}: ${FEATURES_MANIFEST} lists an SAE without a usable label (${JSON.stringify(sae.label ?? null)})`);
    }
    const rel = `${sae.label}/index.json`;
    const idx = await readJsonIfPresent(path.join(dir, sae.label, 'index.json'), label);
    if (idx === null) throw new UserError(`${label}: ${rel} is missing (an incomplete sae features folder)`);
    const per = idx.perToken as Partial<FeatureIndex['perToken']> | undefined;
    const kinds = (per?.byKind ?? null) as Record<string, unknown> | null;
    if (!per || !isCounts(per.all) || typeof kinds !== 'object' || kinds === null || !TOKEN_KINDS.every((k) => kinds[k] === undefined || isCounts(kinds[k]))) {
      throw new UserError(`${label}: ${rel} has no valid perToken counts (all and byKind)`);
    }
    saes.push({
      label: sae.label,
      activation: typeof sae.activation === 'string' ? sae.activation : 'unknown',
      F: num(sae.F) ?? num(idx.F) ?? 0,
      tokens: num(idx.tokens) ?? num(manifest.tokens) ?? 0,
      byKind: Object.fromEntries(TOKEN_KINDS.map((k) => [k, (kinds[k] as number[] | undefined) ?? []])) as Record<TokenKind, number[]>,
    });
  }
  return { name: path.basename(path.resolve(dir)), dir, manifest, saes };
}

/** Several features folders; one named twice is one, names made unique as run names are. */
export async function loadFeatureFolders(dirs: string[]): Promise<FeatureFolderData[]> {
  const out: FeatureFolderData[] = [];
  const seen = new Map<string, number>();
  const given = new Set<string>();
  for (const dir of dirs) {
    const key = path.resolve(dir);
    if (given.has(key)) continue;
    given.add(key);
    const f = await loadFeatureFolder(dir);
    const n = (seen.get(f.name) ?? 0) + 1;
    seen.set(f.name, n);
    if (n > 1) f.name = `${f.name}#${n}`;
    out.push(f);
  }
  return out;
}
