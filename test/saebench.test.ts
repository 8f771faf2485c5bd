import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Ajv } from 'ajv';
import { batchStats, densityMetrics, FeatureStats, maxCosineSims, reconstructionMetrics, type SaebenchCore } from '../src/eval/saebench.js';
import { createReferenceLmKernels } from '../src/kernels/lm-reference.js';
import type { SparseCodes } from '../src/kernels/types.js';

// SAEBench's core eval (issue 19 part 7): `sae eval --saebench` writes SAEBench's output schema,
// its numbers agree with splice-eval's where both measure the same thing, and each metric follows
// SAEBench 8042bb3's sae_bench/evals/core/main.py on hand-made arrays.

const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const MODEL = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny', 'gpt2-brown');
// our own statement of SAEBench 0.6.0's core output structure (SAEBench ships no licence, so its
// schema file is not copied into this repository)
const SCHEMA = path.resolve(__dirname, 'schemas', 'saebench-core.schema.json');
const TOKENS = ['--ctx', '64', '--max-tokens', '3000'];
let dir: string;

function sae(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', cwd: dir, env: { ...process.env, FORCE_COLOR: '0' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
function ok(r: ReturnType<typeof sae>): string {
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}
const readJson = async (f: string) => JSON.parse(await fs.readFile(path.join(dir, f), 'utf8'));

/** per preprocessing: the SAEBench file and splice-eval's JSON on the same tokens */
const runs: Record<string, { core: SaebenchCore; splice: any }> = {};

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-saebench-'));
  for (const pre of ['center_unit_norm', 'none']) {
    ok(sae('harvest', '--model', MODEL, '--hook', 'blocks.2.hook_resid_pre', '--out', `acts-${pre}`, '--max-tokens', '8000', '--preprocessing', pre));
    ok(sae('train', '--data', `acts-${pre}`, '--out', `run-${pre}`, '--activation', 'mutual', '--k', '8', '--batch-size', '256', '--steps', '80'));
    ok(sae('eval', '--checkpoint', `run-${pre}`, '--data', `acts-${pre}`, '--model', MODEL, '--saebench', `core-${pre}.json`, '--batch-prompts', '8', ...TOKENS));
    const splice = JSON.parse(ok(sae('splice-eval', '--checkpoint', `run-${pre}`, '--model', MODEL, '--batch', '8', ...TOKENS, '--json')));
    runs[pre] = { core: await readJson(`core-${pre}.json`), splice };
  }
}, 120_000);

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('sae eval --saebench', () => {
  it('writes a file that validates against the core output schema, every part filled', async () => {
    const ajv = new Ajv({ strict: true, allErrors: true });
    const validate = ajv.compile(JSON.parse(await fs.readFile(SCHEMA, 'utf8')));
    const { core } = runs.center_unit_norm;
    expect(validate(core), JSON.stringify(validate.errors)).toBe(true);
    expect(core.eval_type_id).toBe('core');
    expect(core.sae_bench_commit_hash).toMatch(/^8042bb3/);
    expect(core.eval_result_details).toHaveLength(1536);
    expect(validate({ ...core, eval_result_metrics: { ...core.eval_result_metrics, sparsity: { l0: 1 } } })).toBe(false);
  });

  it('reports splice-eval’s CE and KL and their scores', () => {
    const { core, splice } = runs.center_unit_norm;
    const perf = core.eval_result_metrics.model_performance_preservation;
    const beh = core.eval_result_metrics.model_behavior_preservation;
    expect(perf.ce_loss_without_sae).toBe(splice.cleanLoss);
    expect(perf.ce_loss_with_sae).toBe(splice.spliced[0].loss);
    expect(perf.ce_loss_with_ablation).toBe(splice.zeroLoss);
    expect(perf.ce_loss_score).toBeCloseTo(splice.spliced[0].lossRecovered / 100, 12);
    expect(beh.kl_div_with_sae).toBe(splice.spliced[0].kl);
    expect(beh.kl_div_with_ablation).toBe(splice.zeroKl);
    expect(beh.kl_div_score).toBeCloseTo(splice.spliced[0].klScore, 12);
    expect(core.eval_result_metrics.token_stats.total_tokens_eval_reconstruction).toBe(splice.tokens);
  });

  it('measures L0 on the spliced tokens: splice-eval’s L0, and the sum of the feature densities', () => {
    const { core, splice } = runs.center_unit_norm;
    const l0 = core.eval_result_metrics.sparsity.l0;
    expect(l0).toBe(splice.spliced[0].l0);
    expect(l0).toBeCloseTo(8, 0);
    const densities = core.eval_result_details.map((f) => f.feature_density);
    expect(densities.reduce((a, b) => a + b, 0)).toBeCloseTo(l0, 6);
    expect(core.eval_result_metrics.misc_metrics.frac_alive).toBeCloseTo(densities.filter((v) => v > 0).length / densities.length, 12);
  });

  it('computes reconstruction metrics in raw units: 1 − FVU where raw and preprocessed agree', () => {
    // preprocessing none: raw rows are the SAE's rows, so the conventional explained variance is 1 − splice-eval's FVU
    const none = runs.none;
    const u = none.core.eval_result_unstructured as { explained_variance_conventional: number; sae_space: { fvu: number } };
    expect(u.sae_space.fvu).toBeCloseTo(none.splice.spliced[0].fvu, 12);
    expect(u.explained_variance_conventional).toBeCloseTo(1 - none.splice.spliced[0].fvu, 6);
    // center_unit_norm: the SAE's rows have unit norm, the raw activations do not
    const cun = runs.center_unit_norm;
    expect((cun.core.eval_result_unstructured as { sae_space: { fvu: number } }).sae_space.fvu).toBeCloseTo(cun.splice.spliced[0].fvu, 12);
    expect(cun.core.eval_result_metrics.shrinkage.l2_norm_in).toBeGreaterThan(5);
  });

  it('refuses --saebench without --model in one line, writing nothing', async () => {
    const r = sae('eval', '--checkpoint', 'run-none', '--data', 'acts-none', '--saebench', 'nomodel.json');
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/--saebench needs --model/);
    expect(r.stdout).toBe('');
    await expect(fs.stat(path.join(dir, 'nomodel.json'))).rejects.toThrow();
  });

  it('replaces a file that is not an earlier SAEBench output only with --force', async () => {
    await fs.writeFile(path.join(dir, 'mine.json'), '{"not": "saebench"}\n');
    const args = ['eval', '--checkpoint', 'run-none', '--data', 'acts-none', '--model', MODEL, '--saebench', 'mine.json', ...TOKENS];
    const r = sae(...args);
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/not an earlier SAEBench core eval output; add --force/);
    expect(await fs.readFile(path.join(dir, 'mine.json'), 'utf8')).toBe('{"not": "saebench"}\n');
    ok(sae(...args, '--force'));
    expect((await readJson('mine.json')).eval_type_id).toBe('core');
  });
});

// x [3×2] and x̂: ‖x‖ = 5, 2, 3; ‖x̂‖ = √18, 1, 5; ⟨x, x̂⟩ = 21, 2, 15; ‖x − x̂‖² = 1, 1, 4;
// batch mean (2, 2), ‖x − mean‖² = 5, 4, 5
const X = Float32Array.from([3, 4, 0, 2, 3, 0]);
const XHAT = Float32Array.from([3, 3, 0, 1, 5, 0]);
const one = () => reconstructionMetrics([batchStats(X, XHAT, 3, 2)]);

describe('SAEBench core metrics on hand-made arrays', () => {
  it('cossim: the mean over tokens of x̂·x / (‖x‖‖x̂‖)', () => {
    expect(one().cossim).toBeCloseTo((21 / (5 * Math.sqrt(18)) + 1 + 1) / 3, 12);
  });

  it('l2_ratio: the mean over tokens of ‖x̂‖/‖x‖, and the mean norms in and out', () => {
    const m = one();
    expect(m.l2_ratio).toBeCloseTo((Math.sqrt(18) / 5 + 1 / 2 + 5 / 3) / 3, 12);
    expect(m.l2_norm_in).toBeCloseTo(10 / 3, 12);
    expect(m.l2_norm_out).toBeCloseTo((Math.sqrt(18) + 1 + 5) / 3, 12);
  });

  it('relative_reconstruction_bias: E‖x̂‖² / E⟨x, x̂⟩ per batch, averaged over batches', () => {
    expect(one().relative_reconstruction_bias).toBeCloseTo(44 / 38, 12);
    const two = reconstructionMetrics([batchStats(X.subarray(0, 4), XHAT.subarray(0, 4), 2, 2), batchStats(X.subarray(4), XHAT.subarray(4), 1, 2)]);
    expect(two.relative_reconstruction_bias).toBeCloseTo((19 / 23 + 25 / 15) / 2, 12);
    // SAEBench's mse: each token's ‖x − x̂‖² over its batch's token count, then the mean
    expect(two.mse).toBeCloseTo((1 / 2 + 1 / 2 + 4 / 1) / 3, 12);
  });

  it('explained_variance_legacy: the mean over tokens of 1 − ‖x − x̂‖²/‖x − batch mean‖²', () => {
    expect(one().explained_variance_legacy).toBeCloseTo((1 - 1 / 5 + (1 - 1 / 4) + (1 - 4 / 5)) / 3, 12);
  });

  it('explained_variance: SAEBench 8042bb3’s 1 − E‖x − x̂‖² / (E‖x‖² − (E‖x‖²/d)²), beside the conventional 1 − FVU', () => {
    const m = one();
    const meanSq = (25 + 4 + 9) / 3;
    expect(m.explained_variance).toBeCloseTo(1 - 2 / (meanSq - (meanSq / 2) ** 2), 12);
    expect(m.explained_variance_conventional).toBeCloseTo(1 - 6 / 14, 12);
    expect(m.mse_per_token).toBeCloseTo(2, 12);
  });

  it('frequency metrics of the densities (calculate_misc_metrics)', () => {
    const m = densityMetrics([0, 0.005, 0.02, 0.5]);
    expect(m.frac_alive).toBe(0.75);
    expect(m.freq_over_1_percent).toBe(0.5);
    expect(m.freq_over_10_percent).toBe(0.25);
    expect(m.normalized_freq_over_1_percent).toBeCloseTo(0.52 / 0.525, 12);
    expect(m.normalized_freq_over_10_percent).toBeCloseTo(0.5 / 0.525, 12);
  });

  it('per feature: density over tokens, and tokens per context fired in (consistent_activation_heuristic)', () => {
    // rows 0, 1 in context 0, row 2 in context 1; feature 0 fires on all three, feature 1 on row 1
    const codes: SparseCodes = { B: 3, nnz: 4, rowPtr: Int32Array.from([0, 1, 3, 4]), index: Int32Array.from([0, 0, 1, 0]), value: Float32Array.from([1, 2, 3, 4]) };
    const s = new FeatureStats(3);
    s.add(codes, [0, 0, 1]);
    expect(Array.from(s.density())).toEqual([1, 1 / 3, 0]);
    expect(s.fired[0] / s.contextsFired[0]).toBe(1.5);
    expect(s.l0Sum / s.tokens).toBeCloseTo(4 / 3, 12);
    expect(s.l1Sum / s.tokens).toBeCloseTo(10 / 3, 12);
  });

  it('max cosine with any other feature (calculate_max_cosine_sim), by loops and by a GEMM kernel', () => {
    const rows = Float32Array.from([1, 0, 2, 0, 0, 3, 1, 1]);
    const want = [1, 1, Math.SQRT1_2, Math.SQRT1_2];
    const k = createReferenceLmKernels();
    for (const got of [maxCosineSims(rows, 4, 2), maxCosineSims(rows, 4, 2, (...a) => k.linear(...a))]) {
      want.forEach((w, j) => expect(got[j]).toBeCloseTo(w, 6));
    }
  });
});
