import { promises as fs, existsSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SaeParams, Selection } from '../src/kernels/types.js';
import type { Sae } from '../src/sae/sae.js';
import { CodeStream } from '../src/eval/encode.js';
import { FeaturePass, HIST_BINS, histEdges, sampleKey } from '../src/eval/feature-pass.js';
import { allocCodes } from '../src/kernels/selection.js';
import type { FeatureIndex, FeaturePage, FeaturesManifest } from '../src/eval/feature-data.js';
import { features, kindOfText } from '../src/pipeline/features.js';
import { HookedTransformer } from '../src/lm/model.js';
import { loadTokenizer } from '../src/lm/tokenizer.js';
import { openSafetensors } from '../src/util/safetensors.js';
import { readDataScript } from '../src/report/browser/page.js';
import { Rng } from '../src/util/rng.js';

const BIN = path.resolve('bin/run.js');
const FIXTURES = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny');
const BROWN = path.join(FIXTURES, 'gpt2-brown');
const HOOK = 'blocks.2.hook_resid_pre';

let root: string;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-features-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

/** A hand-made SAE over raw rows: encoder = decoder = the dictionary G [F×d], no biases, TopK k. */
function dictionarySae(G: Float32Array, F: number, d: number, k: number, B: number, over: Partial<Sae> = {}): Sae {
  const params: SaeParams = { d, F, WencT: G, bEnc: new Float32Array(F), Wdec: G, bDec: new Float32Array(d) };
  const sel: Selection = { kind: 'topk', k };
  return {
    dir: 'test', format: 'sae', cfg: {} as Sae['cfg'], params, d, F, hook: HOOK, model: 'test', preprocessing: 'none', trainConfig: null, trainedPrecision: 'fp32',
    batchSize: B, selection: () => () => sel, checkData: () => undefined, ...over,
  } as Sae;
}

function unitRows(rng: Rng, n: number, d: number): Float32Array {
  const G = new Float32Array(n * d);
  for (let j = 0; j < n; j++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += (G[j * d + i] = rng.normal()) ** 2;
    for (let i = 0; i < d; i++) G[j * d + i] /= Math.sqrt(ss);
  }
  return G;
}

describe('the feature pass', () => {
  // tokens 0..F−1 are planted: token t carries feature t with coefficient c ∈ [1, 2); tokens F.. carry noise
  const F = 12;
  const d = 48;
  const V = 40;
  const ctx = 16;
  const contexts = 30;
  const rng = new Rng(7);
  const G = unitRows(rng, F, d);
  const ids = new Int32Array(contexts * ctx);
  const coef = new Float32Array(contexts * ctx);
  const x = new Float32Array(contexts * ctx * d);
  for (let r = 0; r < ids.length; r++) {
    const t = Math.floor(rng.next() * V);
    ids[r] = t;
    if (t < F) {
      coef[r] = 1 + rng.next();
      for (let i = 0; i < d; i++) x[r * d + i] = coef[r] * G[t * d + i];
    } else for (let i = 0; i < d; i++) x[r * d + i] = 0.02 * rng.normal();
  }
  const origin = (a: number, b: number) => ({
    tokenId: ids.subarray(a, b),
    context: Int32Array.from({ length: b - a }, (_, i) => Math.floor((a + i) / ctx)),
    position: Int32Array.from({ length: b - a }, (_, i) => (a + i) % ctx),
  });
  /** the TopK-1 code of row r, computed here: the feature of largest positive affinity */
  const top1 = (r: number): [number, number] => {
    let best = -1;
    let z = 0;
    for (let j = 0; j < F; j++) {
      let s = 0;
      for (let i = 0; i < d; i++) s += G[j * d + i] * x[r * d + i];
      if (s > z) [best, z] = [j, s];
    }
    return [best, z];
  };
  const opts = { F, top: 5, samples: 8, bands: 4, before: 3, after: 2, texts: 2, seed: 1, kindOfId: () => 'word' as const, specialIds: new Set<number>() };

  /** Feed the rows in blocks of `block` (not aligned with contexts) through a TopK-1 SAE of batch B. */
  function run(B: number, block: number): FeaturePass {
    const pass = new FeaturePass(opts);
    const stream = new CodeStream(dictionarySae(G, F, d, 1, B), { mode: 'batch', preprocessed: true });
    for (let a = 0; a < ids.length; a += block) {
      const b = Math.min(ids.length, a + block);
      stream.push(x.subarray(a * d, b * d), b - a, origin(a, b), (blk) => pass.add(blk));
    }
    stream.flush((blk) => pass.add(blk));
    pass.end();
    return pass;
  }

  /** feature j's largest activation in each context (top-1 codes computed here), largest first, one per context */
  const bestPerContext = (j: number): number[] => {
    const best = new Map<number, number>();
    for (let r = 0; r < ids.length; r++) {
      const [f, z] = top1(r);
      const c = Math.floor(r / ctx);
      if (f === j && (!best.has(c) || z > top1(best.get(c)!)[1])) best.set(c, r);
    }
    return [...best.values()].sort((a, b) => top1(b)[1] - top1(a)[1] || a - b);
  };

  it("finds exactly the planted tokens as a feature's top contexts, in order of activation, one example per context", () => {
    const pass = run(24, 40);
    for (let j = 0; j < F; j++) {
      const want = bestPerContext(j).slice(0, 5);
      const top = pass.topExamples(j);
      expect(top.map((e) => [e.context, e.position]), `feature ${j}`).toEqual(want.map((r) => [Math.floor(r / ctx), r % ctx]));
      expect(new Set(top.map((e) => e.context)).size).toBe(top.length);
      // the planted tokens outrank every noise firing
      for (const e of top.slice(0, Math.min(5, new Set([...ids.keys()].filter((r) => ids[r] === j).map((r) => Math.floor(r / ctx))).size))) expect(e.ids[e.at]).toBe(j);
    }
  });

  it('copies each example window from its own context, with the feature’s activation on every token', () => {
    const pass = run(24, 40);
    for (let j = 0; j < F; j++) {
      for (const e of pass.topExamples(j)) {
        const r0 = e.context * ctx;
        const from = Math.max(0, e.position - 3);
        const to = Math.min(ctx, e.position + 3);
        expect(e.ids).toEqual(Array.from(ids.subarray(r0 + from, r0 + to)));
        expect(e.at).toBe(e.position - from);
        e.ids.forEach((_, w) => {
          const [best, z] = top1(r0 + from + w);
          if (best === j) expect(e.acts[w]).toBeCloseTo(z, 3);
          else expect(e.acts[w]).toBe(0);
        });
      }
    }
  });

  it('does not depend on how rows arrive: blocks and batch sizes give the same evidence', () => {
    const a = run(24, 40);
    const b = run(7, 5);
    for (let j = 0; j < F; j++) {
      expect(b.topExamples(j)).toEqual(a.topExamples(j));
      expect(b.quantileBands(j)).toEqual(a.quantileBands(j));
      expect(b.histogram(j)).toEqual(a.histogram(j));
    }
    expect(Array.from(b.count)).toEqual(Array.from(a.count));
  });

  it('counts densities, features per token and the texts of the first contexts', () => {
    const pass = run(24, 40);
    expect(pass.tokens).toBe(ids.length);
    const codes = Array.from(ids.keys(), top1);
    for (let j = 0; j < F; j++) expect(pass.count[j], `feature ${j}`).toBe(codes.filter(([f]) => f === j).length);
    const withOne = codes.filter(([f]) => f >= 0).length;
    expect(pass.perToken[1]).toBe(withOne);
    expect(pass.perToken[0] ?? 0).toBe(ids.length - withOne);
    expect(pass.texts.map((t) => t.context)).toEqual([0, 1]);
    expect(pass.texts[0].ids).toEqual(Array.from(ids.subarray(0, ctx)));
  });

  it("samples a feature's firings uniformly: the ones of smallest hash key, in bands by activation", () => {
    const pass = run(24, 40);
    for (let j = 0; j < F; j++) {
      const firings = [...ids.keys()].filter((r) => top1(r)[0] === j);
      const want = firings.sort((a, b) => sampleKey(1, j, a) - sampleKey(1, j, b)).slice(0, 8).map((r) => `${Math.floor(r / ctx)}:${r % ctx}`).sort();
      const bands = pass.quantileBands(j);
      const got = bands.flatMap((b) => b.examples.map((e) => `${e.context}:${e.position}`)).sort();
      expect(got, `feature ${j}`).toEqual(want);
      for (let i = 1; i < bands.length; i++) expect(bands[i].from).toBeGreaterThanOrEqual(bands[i - 1].to);
      for (const b of bands) for (const e of b.examples) expect(e.value >= b.from && e.value <= b.to).toBe(true);
    }
  });

  it('counts every activation in its histogram, the out-of-range ones in the end bins', () => {
    const p = new FeaturePass({ ...opts, F: 1 });
    const values = [2 ** -30, 0.001, 0.5, 0.5, 3, 2 ** 20];
    const codes = allocCodes(values.length, values.length);
    values.forEach((v, r) => {
      codes.rowPtr[r + 1] = r + 1;
      codes.index[r] = 0;
      codes.value[r] = v;
    });
    codes.nnz = values.length;
    const n = values.length;
    p.add({ n, first: 0, codes, tokenId: new Int32Array(n), context: Int32Array.from({ length: n }, (_, i) => i), position: new Int32Array(n) });
    p.end();
    const h = p.histogram(0);
    expect(h.counts.reduce((a, b) => a + b, 0)).toBe(n);
    // edges at 4 significant digits: from the first bin's lower edge to the last bin's upper one
    expect(h.edges[0] / histEdges()[0]).toBeCloseTo(1, 3);
    expect(h.edges[h.edges.length - 1] / histEdges()[HIST_BINS]).toBeCloseTo(1, 3);
    expect(h.counts[0]).toBe(1);
    expect(h.counts[h.counts.length - 1]).toBe(1);
  });

  it('tells the first token of a word after BOS or EOS, also when BOS is not a row (--skip-bos)', () => {
    const kinds = (rows: [number, number, number][]) => {
      const p = new FeaturePass({ ...opts, F: 1, kindOfId: () => 'continuation', specialIds: new Set([99]) });
      const n = rows.length;
      p.add({ n, first: 0, codes: allocCodes(n, 1), tokenId: Int32Array.from(rows, (r) => r[0]), context: Int32Array.from(rows, (r) => r[1]), position: Int32Array.from(rows, (r) => r[2]) });
      p.end();
      return Object.fromEntries(Object.entries(p.perTokenByKind).map(([k, v]) => [k, v[0] ?? 0]));
    };
    // [token, context, position]: BOS, a word, its rest, EOS, the next document's word, its rest
    expect(kinds([[99, 0, 0], [5, 0, 1], [6, 0, 2], [99, 0, 3], [7, 0, 4], [8, 0, 5]])).toMatchObject({ bos: 1, eos: 1, word: 2, continuation: 2 });
    // BOS left out: the context's first row still follows it
    expect(kinds([[5, 0, 1], [6, 0, 2], [5, 1, 1], [6, 1, 2]])).toMatchObject({ bos: 0, word: 2, continuation: 2 });
  });

  it('tells token kinds apart by their text', () => {
    expect(kindOfText(' the')).toBe('word');
    expect(kindOfText('ing')).toBe('continuation');
    expect(kindOfText(',')).toBe('punctuation');
    expect(kindOfText(' .')).toBe('punctuation');
    expect(kindOfText('\n')).toBe('punctuation');
    expect(kindOfText('\uFFFD')).toBe('continuation');
  });
});

/** The JSON argument of a data script. */
async function dataOf<T>(file: string): Promise<T> {
  const args = readDataScript(await fs.readFile(file, 'utf8'));
  return args[args.length - 1] as T;
}

describe('sae features on the fixture model', () => {
  let out: string;
  let sae: Sae;
  let G: Float32Array;
  const F = 40;
  const d = 192;

  beforeAll(async () => {
    const model = await HookedTransformer.load(BROWN);
    const tokenizer = await loadTokenizer(BROWN);
    G = unitRows(new Rng(3), F, d);
    // centred, unit-norm rows (SPEC §3): the dictionary reads directions of the residual stream
    sae = dictionarySae(G, F, d, 4, 64, { preprocessing: 'center_unit_norm', model: BROWN });
    const docs = ['The cat sat on the mat.', 'A dog ran across the field, and the cat watched.', 'Numbers: 1, 2, 3.'];
    out = path.join(root, 'brown');
    await features({
      out, model, modelName: BROWN, tokenizer, saes: [{ label: 'dict', sae, mode: 'batch' }],
      corpus: { describe: () => 'three documents', async *documents() { for (const [i, text] of docs.entries()) yield { text, position: i }; } },
      maxTokens: 10_000, ctx: 16, batch: 4, skipBos: false, top: 4, samples: 4, bands: 2, before: 4, after: 2, texts: 3, logits: 5, seed: 0,
    });
  }, 60_000);

  it("lists each feature's logit effects as W_dec · diag(ln_f scale) · W_U, computed here from the weights", async () => {
    const st = await openSafetensors(path.join(BROWN, 'model.safetensors'));
    const wte = new Float32Array((await st.read('transformer.wte.weight').catch(() => st.read('wte.weight'))).bytes.slice().buffer);
    const gamma = new Float32Array((await st.read('transformer.ln_f.weight').catch(() => st.read('ln_f.weight'))).bytes.slice().buffer);
    await st.close();
    const V = wte.length / d;
    for (const j of [0, 17, 39]) {
      const e = new Float64Array(V);
      for (let t = 0; t < V; t++) {
        let s = 0;
        for (let i = 0; i < d; i++) s += G[j * d + i] * gamma[i] * wte[t * d + i];
        e[t] = s;
      }
      const order = [...e.keys()].sort((a, b) => e[b] - e[a] || a - b);
      const page = await dataOf<FeaturePage>(path.join(out, 'data', 'dict', 'f', `${j}.js`));
      expect(page.logits.promoted.map(([t]) => t)).toEqual(order.slice(0, 5));
      expect(page.logits.suppressed.map(([t]) => t)).toEqual(order.slice(-5).reverse());
      page.logits.promoted.forEach(([t, v]) => expect(v).toBeCloseTo(e[t], 3));
    }
  });

  it('writes a manifest, an index per SAE and a page per feature', async () => {
    const m = JSON.parse(await fs.readFile(path.join(out, 'features.json'), 'utf8')) as FeaturesManifest;
    expect(m).toMatchObject({ schema: 'sae-features/1', hook: HOOK, saes: [{ label: 'dict', F, mode: 'batch' }] });
    const idx = JSON.parse(await fs.readFile(path.join(out, 'dict', 'index.json'), 'utf8')) as FeatureIndex;
    expect(idx.density).toHaveLength(F);
    expect(idx.perToken.all.reduce((s, c) => s + c, 0)).toBe(m.tokens);
    // every token got exactly k = 4 features from TopK, BOS included
    expect(idx.perToken.all[4]).toBe(m.tokens);
    expect(idx.perToken.byKind.bos[4]).toBe(m.contexts);
    const files = await fs.readdir(path.join(out, 'data', 'dict', 'f'));
    expect(files).toHaveLength(F);
    expect(existsSync(path.join(out, 'index.html'))).toBe(true);
  });
});

describe('sae features from the command line', () => {
  let dir: string;
  const sae = (...args: string[]) => spawnSync(process.execPath, [BIN, ...args], { cwd: dir, encoding: 'utf8', timeout: 120_000 });

  beforeAll(async () => {
    dir = path.join(root, 'cli');
    await fs.mkdir(dir);
    for (const args of [
      ['harvest', '--model', BROWN, '--hook', HOOK, '--out', 'acts', '--max-tokens', '6000'],
      ['train', '--data', 'acts', '--out', 'mc', '--activation', 'mutual', '--k', '8', '--width', '256', '--batch-size', '256', '--steps', '60'],
      ['train', '--data', 'acts', '--out', 'topk', '--activation', 'topk', '--k', '8', '--width', '256', '--batch-size', '256', '--steps', '60'],
    ]) {
      const r = sae(...args);
      expect(r.status, r.stderr).toBe(0);
    }
  }, 180_000);

  it('writes the browser of two SAEs side by side and prints its path', async () => {
    const r = sae('features', '--checkpoint', 'mc', '--checkpoint', 'topk', '--model', BROWN, '--out', 'f', '--max-tokens', '3000', '--quiet');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(path.join('f', 'index.html'));
    const m = JSON.parse(await fs.readFile(path.join(dir, 'f', 'features.json'), 'utf8')) as FeaturesManifest;
    expect(m.saes.map((s) => [s.label, s.activation])).toEqual([['mc', 'mutual'], ['topk', 'topk']]);
    expect(m.saes[1].l0).toBeCloseTo(8, 5);
    const texts = await dataOf<{ labels: string[]; texts: { features: Record<string, unknown[]> }[] }>(path.join(dir, 'f', 'data', 'texts.js'));
    expect(texts.labels).toEqual(['mc', 'topk']);
    expect(texts.texts[0].features.mc.length).toBe(texts.texts[0].features.topk.length);
  }, 120_000);

  it('prints the address of one feature’s page with --open', () => {
    const r = sae('features', '--checkpoint', 'mc', '--model', BROWN, '--out', 'f-open', '--max-tokens', '500', '--quiet', '--open', '7');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toMatch(/^file:\/\/.*\/f-open\/index\.html#feature=mc\/7$/);
  }, 60_000);

  it.each([
    ['a feature id out of range', ['--checkpoint', 'mc', '--model', BROWN, '--out', 'x', '--open', '256'], /--open 256: feature ids of mc run from 0 to 255/],
    ['a --model that is not the SAE’s', ['--checkpoint', 'mc', '--model', path.join(FIXTURES, 'gpt2'), '--out', 'x'], /was trained on .*gpt2-brown but --model is/],
    ['--mode threshold on a checkpoint with no export', ['--checkpoint', 'mc', '--model', BROWN, '--out', 'x', '--mode', 'threshold'], /no JumpReLU thresholds: --mode threshold needs an exported SAE/],
    ['an empty corpus', ['--checkpoint', 'mc', '--model', BROWN, '--out', 'x', 'empty.txt'], /empty\.txt.*(no|empty)|the corpus has no text/i],
  ])('refuses %s in one line', async (_what, args, message) => {
    await fs.writeFile(path.join(dir, 'empty.txt'), '');
    const r = sae('features', ...args);
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(message);
    expect(existsSync(path.join(dir, 'x'))).toBe(false);
  }, 60_000);

  it('leaves nothing half-written when killed, and keeps the earlier folder', async () => {
    const before = await fs.readFile(path.join(dir, 'f', 'features.json'), 'utf8');
    const child = spawn(process.execPath, [BIN, 'features', '--checkpoint', 'mc', '--model', BROWN, '--out', 'f', '--max-tokens', '1000000'], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
    // wait until the pass is under way (its hidden folder exists), then kill it outright
    while (!(await fs.readdir(dir)).some((e) => e.startsWith('.f.tmp-'))) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 1000));
    child.kill('SIGKILL');
    await new Promise((r) => child.on('exit', r));
    expect(await fs.readFile(path.join(dir, 'f', 'features.json'), 'utf8')).toBe(before);
    const entries = await fs.readdir(path.join(dir, 'f'));
    expect(entries.sort()).toEqual(['data', 'features.json', 'index.html', 'mc', 'topk']);
    // a rerun clears what the killed one left beside it
    const r = sae('features', '--checkpoint', 'mc', '--model', BROWN, '--out', 'f', '--max-tokens', '300', '--quiet');
    expect(r.status, r.stderr).toBe(0);
    expect((await fs.readdir(dir)).filter((e) => e.startsWith('.f.tmp-'))).toEqual([]);
  }, 120_000);

  it('puts back the earlier folder a pass killed mid-swap had set aside, and replaces it', async () => {
    const gone = Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString());
    await fs.rename(path.join(dir, 'f'), path.join(dir, `f.old-${gone}-1`));
    const r = sae('features', '--checkpoint', 'mc', '--model', BROWN, '--out', 'f', '--max-tokens', '300', '--quiet');
    expect(r.status, r.stderr).toBe(0);
    expect((await fs.readdir(dir)).filter((e) => e.startsWith('f.old-') || e.startsWith('.f.tmp-'))).toEqual([]);
    expect(JSON.parse(await fs.readFile(path.join(dir, 'f', 'features.json'), 'utf8')).tokens).toBe(300);
  }, 60_000);
});
