/**
 * Backend wrappers for the contract tests: one that copies at every crossing (so nothing works
 * that relies on sharing memory with the CPU backend, as a device backend cannot), and one that
 * logs what crosses. Shared by test/backend.test.ts and the GPU tests in test/cuda.test.ts.
 */
import type { SaeParams, Selection } from '../../src/kernels/types.js';
import type { StepRequest, TrainingBackend, TrainingBackendFactory } from '../../src/sae/backend.js';
import type { FeatureStatsState } from '../../src/sae/density.js';

const copyParams = (p: SaeParams): SaeParams => ({ d: p.d, F: p.F, WencT: p.WencT.slice(), bEnc: p.bEnc.slice(), Wdec: p.Wdec.slice(), bDec: p.bDec.slice() });

function copySelection(s: Selection): Selection {
  if (s.kind === 'feature') return { kind: 'feature', capacity: s.capacity.slice() };
  if (s.kind === 'jumprelu') return { kind: 'jumprelu', threshold: s.threshold.slice() };
  return { ...s };
}

/**
 * Behaves as a device would: inputs are copied in, every read hands out a fresh copy, and the
 * initial weights handed over at creation are overwritten with garbage once taken.
 */
export function isolating(inner: TrainingBackendFactory): TrainingBackendFactory {
  return (init) => {
    const b = inner({ ...init, params: init.params ? copyParams(init.params) : undefined });
    if (init.params) for (const t of [init.params.WencT, init.params.bEnc, init.params.Wdec, init.params.bDec]) t.fill(NaN);
    const wrapped: TrainingBackend = {
      name: `isolated ${b.name}`,
      device: b.device,
      d: b.d,
      F: b.F,
      step(req: StepRequest) {
        const r = b.step({ ...req, x: req.x.slice(), selection: copySelection(req.selection), nfmSample: req.nfmSample.slice(), optimizer: { ...req.optimizer }, auxK: req.auxK && { ...req.auxK }, auxZipf: req.auxZipf && { ...req.auxZipf } });
        return { ...r, terms: { ...r.terms } };
      },
      readDensity: () => b.readDensity().slice(),
      setDying(mask) {
        b.setDying(mask.slice());
      },
      readParams: () => copyParams(b.readParams()),
      writeParams(p) {
        b.writeParams(copyParams(p));
      },
      readOptimizer() {
        const { m, v } = b.readOptimizer();
        return { m: m.map((a) => a.slice()), v: v.map((a) => a.slice()) };
      },
      writeOptimizer(m, v) {
        b.writeOptimizer(
          m.map((a) => a.slice()),
          v.map((a) => a.slice()),
        );
      },
      readStats: () => JSON.parse(JSON.stringify(b.readStats())) as FeatureStatsState,
      writeStats(s) {
        b.writeStats(JSON.parse(JSON.stringify(s)) as FeatureStatsState);
      },
      dispose: () => b.dispose(),
    };
    return wrapped;
  };
}

export interface Crossing {
  method: string;
  /** lengths of the typed arrays passed in or handed out */
  arrays: number[];
}

function typedLengths(v: unknown, out: number[] = [], depth = 0): number[] {
  if (ArrayBuffer.isView(v)) out.push((v as unknown as { length: number }).length);
  else if (v && typeof v === 'object' && depth < 4) for (const x of Object.values(v)) typedLengths(x, out, depth + 1);
  return out;
}

/** Logs every call into `log`, with the sizes of the arrays that crossed either way. */
export function logging(inner: TrainingBackendFactory, log: Crossing[]): TrainingBackendFactory {
  return (init) => {
    const b = inner(init);
    const methods = ['step', 'readDensity', 'setDying', 'readParams', 'writeParams', 'readOptimizer', 'writeOptimizer', 'readStats', 'writeStats', 'dispose'] as const;
    const wrapped = { name: b.name, device: b.device, d: b.d, F: b.F } as TrainingBackend;
    for (const m of methods) {
      (wrapped as unknown as Record<string, unknown>)[m] = (...args: unknown[]) => {
        const r = (b[m] as (...a: unknown[]) => unknown).apply(b, args);
        log.push({ method: m, arrays: [...typedLengths(args), ...typedLengths(r)] });
        return r;
      };
    }
    return wrapped;
  };
}
