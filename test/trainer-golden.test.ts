import { createHash } from 'node:crypto';
import { existsSync, promises as fs, readFileSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createReferenceKernels } from '../src/kernels/reference.js';
import { nativeAddonPath, nativeAvailable, nativeInfo, nativeKernelsFor } from '../src/kernels/native.js';
import { writeSynth } from '../src/pipeline/synth.js';
import { train } from '../src/pipeline/train/train.js';
import { recordTrace, type Trace } from './helpers/trainer-trace.js';

// Bit-identity across the training-backend refactor (issue 12 part 1). The expected values in
// test/golden/trainer-trace.json were recorded on main's Trainer, before the trainer handed its
// state to a TrainingBackend, with `SAE_RECORD_GOLDEN=1 npx vitest run test/trainer-golden.test.ts`.
// Re-record only for a change that is meant to change the numbers, and say so in its commit.
//
// The reference kernels are plain TypeScript, so their trace is the same on every machine. The
// native kernels' last bits depend on the compiler that built the addon and on the instruction set,
// so their traces are keyed by a fingerprint of the addon file and the ISA: they are checked where
// that build is present (the machine the refactor was proven on) and skipped, with that reason,
// elsewhere; test/backend.test.ts checks native backends against the kernels directly everywhere.

const GOLDEN = path.join(import.meta.dirname, 'golden', 'trainer-trace.json');
const recording = process.env.SAE_RECORD_GOLDEN === '1';

interface Golden {
  note: string;
  reference: Trace;
  /** addon fingerprint → trace */
  native: Record<string, { isa: string; trace: Trace }>;
  /** sae train end to end: output file hashes per run */
  train: Trace;
}

function load(): Golden {
  if (existsSync(GOLDEN)) return JSON.parse(readFileSync(GOLDEN, 'utf8')) as Golden;
  return { note: 'recorded on main before the training-backend refactor; see test/trainer-golden.test.ts', reference: {}, native: {}, train: {} };
}

const golden = load();
const pending: Partial<Golden> = {};
afterAll(() => {
  if (!recording) return;
  const merged = { ...load(), ...pending, native: { ...load().native, ...pending.native } };
  writeFileSync(GOLDEN, JSON.stringify(merged, null, 1) + '\n');
});

function fingerprint(isa: string): string {
  const h = createHash('sha256').update(readFileSync(nativeAddonPath())).digest('hex').slice(0, 16);
  return `${h}-${isa}`;
}

describe('Trainer numbers are those recorded before the training-backend refactor', () => {
  it('reference kernels: every step report, weights after every step, state at the end, resume and init-from', () => {
    const trace = recordTrace(createReferenceKernels);
    if (recording) pending.reference = trace;
    else expect(trace).toEqual(golden.reference);
    // the resumed runs continue the uninterrupted one exactly
    const full = (trace['mc-fc'] as { steps: Trace[] }).steps;
    for (const cut of [3, 6]) expect((trace[`mc-fc-resumed-at-${cut}`] as { steps: Trace[] }).steps).toEqual(full.slice(cut));
  });

  const isas = nativeAvailable() ? nativeInfo()!.isas : [];
  for (const isa of isas) {
    const fp = nativeAvailable() ? fingerprint(isa) : '';
    const have = recording || fp in golden.native;
    it.skipIf(!have)(`native kernels (${isa})${have ? '' : ` — skipped: no trace recorded for this addon build (${fp}); the golden holds ${Object.keys(golden.native).join(', ') || 'none'}`}`, () => {
      const trace = recordTrace(nativeKernelsFor(isa));
      if (recording) (pending.native ??= {})[fp] = { isa, trace };
      else expect(trace).toEqual(golden.native[fp].trace);
      const full = (trace['mc-fc'] as { steps: Trace[] }).steps;
      for (const cut of [3, 6]) expect((trace[`mc-fc-resumed-at-${cut}`] as { steps: Trace[] }).steps).toEqual(full.slice(cut));
    });
  }
});

describe('sae train writes the files it wrote before the training-backend refactor', () => {
  let root: string;
  let data: string;
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-golden-'));
    data = path.join(root, 'synth');
    await writeSynth({ out: data, d: 16, fTrue: 32, kTrue: 3, rows: 3000, seed: 4 });
  });
  afterAll(async () => {
    await fs.rm(root, { recursive: true, force: true });
  });

  const sha = async (f: string) => createHash('sha256').update(await fs.readFile(f)).digest('hex').slice(0, 24);
  /** The run's files, less what depends on the clock (throughput and seconds). */
  async function files(out: string): Promise<Trace> {
    const clockless = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([k]) => k !== 'tokensPerSec' && k !== 'seconds' && k !== 'out' && k !== 'final'));
    const metrics = (await fs.readFile(path.join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.stringify(clockless(JSON.parse(l))));
    const r: Trace = { metrics: createHash('sha256').update(metrics.join('\n')).digest('hex').slice(0, 24) };
    for (const dir of ['checkpoint', 'final']) {
      for (const f of ['sae.safetensors', 'state.safetensors', 'state.json']) {
        const p = path.join(out, dir, f);
        if (existsSync(p)) r[`${dir}/${f}`] = await sha(p);
      }
    }
    const summary = JSON.parse(await fs.readFile(path.join(out, 'summary.json'), 'utf8')) as Record<string, unknown>;
    r.summary = JSON.stringify(clockless(summary));
    return r;
  }

  const runs: Record<string, Record<string, unknown>> = {
    'mutual-aux-nfm': { activation: 'mutual', width: 48, k: 3, batchSize: 64, steps: 24, rankInterval: 4, nfmCoef: 0.01, nfmSample: 8, auxK: 8, logEvery: 3, checkpointEvery: 10, deadWindow: 128 },
    'mc-fc': { activation: 'mutual', width: 48, k: 3, batchSize: 64, steps: 12, phases: [{ activation: 'feature', steps: 10 }], rankInterval: 3, auxK: 8, logEvery: 2, checkpointEvery: 100, deadWindow: 64 },
  };

  it('uninterrupted runs and a run interrupted in each phase then resumed', async () => {
    const got: Trace = {};
    for (const [name, config] of Object.entries(runs)) {
      const out = path.join(root, name);
      await train({ data, out, config });
      got[name] = await files(out);
    }
    for (const cut of [7, 15]) {
      const out = path.join(root, `mc-fc-cut-${cut}`);
      await train({ data, out, config: runs['mc-fc'], stopAfterSteps: cut });
      await train({ data, out, config: {}, resume: out });
      got[`mc-fc-cut-${cut}`] = await files(out);
      // the resumed run's final weights and state are the uninterrupted run's
      for (const f of ['final/sae.safetensors', 'final/state.safetensors', 'final/state.json']) expect((got[`mc-fc-cut-${cut}`] as Trace)[f]).toBe((got['mc-fc'] as Trace)[f]);
    }
    if (recording) pending.train = got;
    else expect(got).toEqual(golden.train);
  });
});
