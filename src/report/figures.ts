/**
 * One small function per figure: plain data in, a Vega-Lite spec out (data inlined). The mark
 * names (`name` of each layer) let tests and readers find a figure's data marks in its SVG.
 */
import type { FeatureFolderData, RunData } from './data.js';
import { TOKEN_KINDS, type TokenKind } from '../eval/feature-data.js';
import { zipfAt } from '../eval/zipf-fit.js';

// Vega-Lite's TopLevelSpec is a deep union; the builders return plain JSON specs
export type VlSpec = Record<string, unknown>;

export interface Figure {
  /** file stem: OUT/<id>.svg */
  id: string;
  title: string;
  caption: string;
  spec: VlSpec;
  /** the data marks this figure draws: points, or bars in the appendix-D figure (what a test counts) */
  points: number;
}

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v5.json';
const W = 420;
const H = 300;
const runColor = { field: 'run', type: 'nominal', title: 'run' };

/** At most max indices of 0..n-1, roughly log-spaced (rank curves), always the first and last. */
export function logThin(n: number, max: number): number[] {
  if (n <= max) return Array.from({ length: n }, (_, i) => i);
  const keep = new Set<number>([0, n - 1]);
  for (let j = 0; j < max; j++) keep.add(Math.min(n - 1, Math.round(Math.exp((Math.log(n) * j) / (max - 1))) - 1));
  return [...keep].sort((a, b) => a - b);
}

/** At most max indices of 0..n-1, evenly spaced, always the first and last. */
export function evenThin(n: number, max: number): number[] {
  if (n <= max) return Array.from({ length: n }, (_, i) => i);
  const keep = new Set<number>();
  for (let j = 0; j < max; j++) keep.add(Math.round((j * (n - 1)) / (max - 1)));
  return [...keep].sort((a, b) => a - b);
}

/** Figure 3: sorted feature density against rank, log-log, with each run's Zipf fit. */
export function densityRankFigure(runs: RunData[], maxPoints = 400): Figure | null {
  const pts: { run: string; rank: number; density: number }[] = [];
  const fit: { run: string; rank: number; fit: number }[] = [];
  for (const r of runs) {
    if (!r.density) continue;
    const positive = r.density.filter((v) => v > 0);
    for (const i of logThin(positive.length, maxPoints)) pts.push({ run: r.name, rank: i + 1, density: positive[i] });
    if (r.fit) for (const i of logThin(r.fit.rankTo, 60)) fit.push({ run: r.name, rank: i + 1, fit: zipfAt(r.fit, i + 1) });
  }
  if (!pts.length) return null;
  const fits = runs
    .filter((r) => r.fit)
    .map((r) => {
      const one = (f: NonNullable<RunData['fit']>) => `α=${f.alpha.toFixed(3)}, β=${f.beta.toPrecision(3)}, R²=${f.r2 === null ? '–' : f.r2.toFixed(3)}`;
      return `${r.name}: ${one(r.fit!)}${r.fitMid ? ` (ranks ${r.fitMid.rankFrom}..${r.fitMid.rankTo}: ${one(r.fitMid)})` : ''}`;
    })
    .join('; ');
  const sources = [...new Set(runs.filter((r) => r.density).map((r) => r.densitySource))].join('; ');
  const x = { field: 'rank', type: 'quantitative', scale: { type: 'log' }, title: 'feature rank (densest first)' };
  return {
    id: 'density-rank',
    title: 'Feature density against rank (figure 3)',
    caption: `Points: each feature's firing density (${sources}), sorted, log-log (features that never fired are left out; at most ${maxPoints} log-spaced ranks per run). Dashed: the Zipf fit log density = c − α·log(rank + β). ${fits}`,
    points: pts.length,
    spec: {
      $schema: SCHEMA,
      width: W,
      height: H,
      layer: [
        {
          name: 'density',
          data: { values: pts },
          mark: { type: 'point', filled: true, size: 14 },
          encoding: { x, y: { field: 'density', type: 'quantitative', scale: { type: 'log' }, title: 'density (fraction of tokens)' }, color: runColor },
        },
        {
          name: 'zipf_fit',
          data: { values: fit },
          mark: { type: 'line', strokeDash: [6, 3], strokeWidth: 1.5 },
          encoding: { x, y: { field: 'fit', type: 'quantitative', scale: { type: 'log' } }, color: runColor },
        },
      ],
    },
  };
}

/** Figure 7: the distribution of the number of active features per token. */
export function featuresPerTokenFigure(runs: RunData[]): Figure | null {
  const pts: { run: string; features: number; fraction: number }[] = [];
  for (const r of runs) r.featuresPerToken?.forEach((f, n) => pts.push({ run: r.name, features: n, fraction: f }));
  if (!pts.length) return null;
  const sources = runs.filter((r) => r.featuresPerToken).map((r) => `${r.name}: ${r.featuresPerTokenSource}`).join('; ');
  return {
    id: 'features-per-token',
    title: 'Features per token (figure 7)',
    caption: `Fraction of tokens with n active features (a token with 128 or more is counted at 128). Measured on ${sources}.`,
    points: pts.length,
    spec: {
      $schema: SCHEMA,
      width: W,
      height: H,
      data: { values: pts },
      layer: [
        { name: 'per_token_line', mark: { type: 'line', strokeWidth: 1.5 }, encoding: { x: { field: 'features', type: 'quantitative', title: 'active features per token' }, y: { field: 'fraction', type: 'quantitative', title: 'fraction of tokens' }, color: runColor } },
        { name: 'per_token', mark: { type: 'point', filled: true, size: 24 }, encoding: { x: { field: 'features', type: 'quantitative' }, y: { field: 'fraction', type: 'quantitative' }, color: runColor } },
      ],
    },
  };
}

const CURVES: { key: 'total' | 'fvu' | 'l0' | 'deadFraction'; title: string; log?: boolean }[] = [
  { key: 'total', title: 'total loss', log: true },
  { key: 'fvu', title: 'FVU (training batch)', log: true },
  { key: 'l0', title: 'L0' },
  { key: 'deadFraction', title: 'dead fraction' },
];

/** Training curves from metrics.jsonl: loss, FVU, L0 and dead fraction against step. */
export function trainingCurvesFigure(runs: RunData[], maxPoints = 300): Figure | null {
  const rows: Record<string, number | string>[] = [];
  for (const r of runs) for (const i of evenThin(r.metrics.length, maxPoints)) rows.push({ run: r.name, ...r.metrics[i] });
  if (!rows.length) return null;
  let points = 0;
  const panels = CURVES.map((c) => {
    const values = rows.filter((p) => typeof p[c.key] === 'number' && (!c.log || (p[c.key] as number) > 0));
    points += values.length;
    const y = { field: c.key, type: 'quantitative', title: c.title, scale: c.log ? { type: 'log' } : { zero: false }, axis: { format: '~g' } };
    return {
      width: 300,
      height: 180,
      data: { values },
      layer: [
        { name: `curve_${c.key}_line`, mark: { type: 'line', strokeWidth: 1.5 }, encoding: { x: { field: 'step', type: 'quantitative' }, y, color: runColor } },
        { name: `curve_${c.key}`, mark: { type: 'point', filled: true, size: 10 }, encoding: { x: { field: 'step', type: 'quantitative' }, y, color: runColor } },
      ],
    };
  });
  return {
    id: 'training-curves',
    title: 'Training curves',
    caption: 'From metrics.jsonl, one point per logged step (at most 300 per run, evenly spaced): total loss, FVU of the training batch, L0, and the dead fraction (no firing within the run’s dead window of training tokens).',
    points,
    spec: { $schema: SCHEMA, columns: 2, concat: panels },
  };
}

function scatter(id: string, title: string, caption: string, values: Record<string, unknown>[], yField: string, yTitle: string, xField = 'l0', xTitle = 'L0', xScale: Record<string, unknown> = { zero: false }): Figure {
  const x = { field: xField, type: 'quantitative', title: xTitle, scale: xScale, axis: { format: '~g', ...(xField === 'width' ? { values: [...new Set(values.map((v) => v.width as number))].sort((a, b) => a - b) } : {}) } };
  const y = { field: yField, type: 'quantitative', title: yTitle, scale: { zero: false }, axis: { format: '~g' } };
  return {
    id,
    title,
    caption,
    points: values.length,
    spec: {
      $schema: SCHEMA,
      width: W,
      height: H,
      data: { values },
      layer: [
        { name: id.replace(/-/g, '_'), mark: { type: 'point', filled: true, size: 70 }, encoding: { x, y, color: runColor, shape: { field: 'activation', type: 'nominal' } } },
        { name: `${id.replace(/-/g, '_')}_labels`, mark: { type: 'text', dx: 6, align: 'left', baseline: 'middle', fontSize: 10 }, encoding: { x, y, text: { field: 'run' } } },
      ],
    },
  };
}

const activationOf = (r: RunData) => r.activations.join('→') || 'unknown';

/** Figure 4 (FVU side): L0 against FVU across runs. */
export function l0FvuFigure(runs: RunData[]): Figure | null {
  const v = runs.filter((r) => r.l0 !== null && r.fvu !== null).map((r) => ({ run: r.name, activation: activationOf(r), l0: r.l0, fvu: r.fvu, measuredOn: r.measuredOn }));
  if (!v.length) return null;
  const on = [...new Set(v.map((p) => p.measuredOn))].join('; ');
  return scatter('l0-fvu', 'L0 against FVU (figure 4)', `One point per run. Measured on ${on}.`, v, 'fvu', 'FVU (fraction of variance unexplained)');
}

/** Figure 4 (loss side): L0 against loss recovered, for runs that carry it. */
export function l0LossRecoveredFigure(runs: RunData[]): Figure | null {
  const v = runs.filter((r) => r.l0 !== null && r.lossRecovered !== null).map((r) => ({ run: r.name, activation: activationOf(r), l0: r.l0, lossRecovered: r.lossRecovered }));
  if (!v.length) return null;
  return scatter('l0-loss-recovered', 'L0 against loss recovered (figure 4)', 'One point per run with a loss-recovered measurement (splice.json or metrics.jsonl).', v, 'lossRecovered', 'loss recovered');
}

/** Figure 5: dead features against width. */
export function deadWidthFigure(runs: RunData[]): Figure | null {
  const v = runs.filter((r) => Number.isFinite(r.deadFraction)).map((r) => ({ run: r.name, activation: activationOf(r), width: r.width, deadPercent: 100 * r.deadFraction, deadWindow: r.deadWindow }));
  if (!v.length) return null;
  const windows = [...new Set(v.map((p) => p.deadWindow))].join(', ');
  return scatter('dead-width', 'Dead features against width (figure 5)', `Dead: no firing within the last ${windows} training tokens (the run’s dead window), at the end of training.`, v, 'deadPercent', 'dead features (%)', 'width', 'SAE width (features)', { type: 'log', base: 2 });
}

/** The appendix-D figure's token kinds, in legend and stacking order, with their colours. */
export const KIND_NAMES: Record<TokenKind, string> = {
  bos: 'BOS (position 0)',
  eos: 'other special token',
  word: 'first token of a word',
  continuation: 'rest of a word',
  punctuation: 'punctuation, whitespace',
};
const KIND_COLORS: Record<TokenKind, string> = { bos: '#d62728', eos: '#9467bd', word: '#1f77b4', continuation: '#aec7e8', punctuation: '#ff7f0e' };
/** tokens with this many active features or more are counted here (the bars stay legible) */
export const KIND_CAP = 256;

const mean = (h: number[]) => {
  let t = 0;
  let s = 0;
  h.forEach((c, n) => ((t += c), (s += c * n)));
  return t > 0 ? s / t : null;
};

/**
 * Appendix D (figure 7 by token kind): per SAE of each `sae features` folder, the fraction of its
 * tokens with n active features, stacked by the kind of token. One panel per SAE, one bar per
 * (SAE, kind, n) with tokens; the stacks are computed here (y0..y1), so each bar is one rect.
 */
export function featuresPerTokenKindFigure(folders: FeatureFolderData[]): Figure | null {
  const panels: Record<string, unknown>[] = [];
  const means: string[] = [];
  let points = 0;
  let capped = false;
  const many = folders.length > 1;
  // the kinds any SAE has tokens of: the legend's entries, in TOKEN_KINDS order
  const order = TOKEN_KINDS.filter((k) => folders.some((f) => f.saes.some((s) => s.byKind[k].some((c) => c > 0))));
  for (const f of folders) {
    for (const s of f.saes) {
      const total = TOKEN_KINDS.reduce((a, k) => a + s.byKind[k].reduce((x, y) => x + y, 0), 0);
      if (!(total > 0)) continue;
      const title = `${many ? `${f.name}/` : ''}${s.label} (${s.activation}, ${s.F} features)`;
      const top = new Map<number, number>();
      const values: Record<string, unknown>[] = [];
      for (const k of TOKEN_KINDS) {
        const h: number[] = [];
        s.byKind[k].forEach((c, n) => {
          if (n >= KIND_CAP && c > 0) capped = true;
          const m = Math.min(n, KIND_CAP);
          h[m] = (h[m] ?? 0) + c;
        });
        h.forEach((c, n) => {
          if (!(c > 0)) return;
          const y0 = top.get(n) ?? 0;
          const y1 = y0 + c / total;
          top.set(n, y1);
          const label = `${KIND_NAMES[k]}: ${c} tokens (${Number((c / total).toPrecision(3))} of all) with ${n}${n === KIND_CAP ? ' or more' : ''} active features`;
          values.push({ sae: title, kind: KIND_NAMES[k], features: n, x0: n - 0.45, x1: n + 0.45, tokens: c, fraction: c / total, y0, y1, label });
        });
      }
      const bos = mean(s.byKind.bos);
      const rest = mean(TOKEN_KINDS.filter((k) => k !== 'bos').reduce<number[]>((acc, k) => (s.byKind[k].forEach((c, n) => (acc[n] = (acc[n] ?? 0) + c)), acc), []));
      means.push(`${title.replace(/ \(.*/, '')}: ${bos === null ? '–' : bos.toFixed(1)} on BOS, ${rest === null ? '–' : rest.toFixed(1)} on the other tokens`);
      points += values.length;
      panels.push({
        title,
        width: 320,
        height: 180,
        data: { values },
        layer: [
          {
            name: `per_token_kind_${panels.length}`,
            mark: { type: 'bar' },
            encoding: {
              x: { field: 'x0', type: 'quantitative', title: 'active features per token', scale: { nice: false }, axis: { format: 'd', tickMinStep: 1 } },
              x2: { field: 'x1' },
              y: { field: 'y0', type: 'quantitative', title: 'fraction of tokens', axis: { format: '~g' } },
              y2: { field: 'y1' },
              color: { field: 'kind', type: 'nominal', title: 'token kind', scale: { domain: order.map((k) => KIND_NAMES[k]), range: order.map((k) => KIND_COLORS[k]) }, legend: { labelLimit: 0 } },
              // each bar's aria-label (and hover text where a viewer shows it): what it counts
              description: { field: 'label' },
            },
          },
        ],
      });
    }
  }
  if (!panels.length) return null;
  const where = folders
    .filter((f) => f.saes.length)
    .map((f) => `${f.dir}: ${f.manifest.model} at ${f.manifest.hook}, ${f.manifest.tokens} tokens (${f.manifest.contexts} contexts of ${f.manifest.ctx}) of ${f.manifest.corpus}, ${f.manifest.precision}`)
    .join('; ');
  return {
    id: 'features-per-token-kind',
    title: 'Features per token by token kind (appendix D)',
    caption:
      `For each SAE, the fraction of its tokens that got n active features, the bars stacked by the kind of token: BOS (position 0), another special token, the first token of a word (leading whitespace and text), the rest of a word, punctuation and whitespace${capped ? `; a token with ${KIND_CAP} or more features is counted at ${KIND_CAP}` : ''}. ` +
      `Measured by sae features in ${where}. Mean active features: ${means.join('; ')}. ` +
      'TopK gives a token at most k (nearly all exactly k: one bar); Mutual Choice and Feature Choice let the count vary per token. The paper (appendix D) finds Mutual Choice bimodal with a long upper tail: a lower peak apart from the main mass, which it traces to the <BOS> token (compare the BOS bars with the rest), and a few tokens that draw many features.',
    points,
    spec: {
      $schema: SCHEMA,
      columns: 2,
      concat: panels,
      resolve: { scale: { x: 'shared', y: 'shared', color: 'shared' } },
    },
  };
}

/** Every figure a report can hold, by id (its file is <id>.svg). */
export const FIGURE_IDS = ['density-rank', 'features-per-token', 'features-per-token-kind', 'training-curves', 'l0-fvu', 'l0-loss-recovered', 'dead-width'] as const;

/**
 * Every figure the runs and `sae features` folders have data for, and a note for each one left
 * out; without runs (a report of features folders alone) the run figures leave no notes.
 */
export function buildFigures(runs: RunData[], folders: FeatureFolderData[] = []): { figures: Figure[]; notes: string[] } {
  const figures: Figure[] = [];
  const notes: string[] = [];
  const add = (f: Figure | null, missing: string) => (f ? figures.push(f) : notes.push(missing));
  if (!runs.length) {
    add(featuresPerTokenKindFigure(folders), 'Features per token by token kind: the --features folders hold no per-token counts.');
    return { figures, notes };
  }
  add(densityRankFigure(runs), 'Feature density against rank: no run has density statistics (no checkpoint with state.json), and no --data was given to measure them.');
  add(featuresPerTokenFigure(runs), 'Features per token: needs a measurement of active features per token; give --data (activation shards) or put the output of `sae eval` in the run directory as eval.json.');
  add(
    featuresPerTokenKindFigure(folders),
    folders.length ? 'Features per token by token kind: the --features folders hold no per-token counts.' : 'Features per token by token kind (appendix D): give --features with a folder written by `sae features`.',
  );
  add(trainingCurvesFigure(runs), 'Training curves: metrics.jsonl holds no logged steps.');
  add(l0FvuFigure(runs), 'L0 against FVU: no run has both L0 and FVU.');
  add(l0LossRecoveredFigure(runs), 'L0 against loss recovered: no run carries a loss-recovered measurement yet (a splice.json in the run directory, or lossRecovered in metrics.jsonl).');
  add(deadWidthFigure(runs), 'Dead features against width: no run reports its dead fraction.');
  return { figures, notes };
}
