import type { StepReport } from '../../sae/trainer.js';
import { fmtTokens } from '../../util/progress.js';

/** Widest a periodic log line may get: it sits above the progress bar in a 100-column terminal. */
export const LOG_LINE_MAX = 100;

/** Up to four significant digits in at most 7 characters (non-negative x below 1e100). */
function num(x: number): string {
  if (x === 0 || !Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  return a >= 1e-2 && a < 1e4 ? String(+x.toPrecision(4)) : x.toExponential(1);
}

/** A fraction as a percentage in at most 4 characters ("100" is the only 3-digit value). */
function pct(f: number): string {
  const p = 100 * f;
  return p >= 99.95 ? '100%' : `${p.toFixed(1)}%`;
}

/**
 * The line `sae train` prints every --log-every steps. It must not wrap under a live progress bar,
 * so every field has a bounded width: with steps below 10^7 and token counts below 10^10 the line
 * fits in LOG_LINE_MAX columns. What does not fit (each loss term, the learning rate, the
 * gradient norm) is in metrics.jsonl. The dead fraction keeps its window (SPEC §9).
 */
export function formatStepLog(r: StepReport & { deadWindow: number; tokensPerSec: number }): string {
  return (
    `step ${r.step} ${r.activation} loss ${num(r.total)} fvu ${num(r.fvu)} L0 ${num(r.l0)}` +
    ` dead ${pct(r.deadFraction)}/${fmtTokens(r.deadWindow)} dying ${pct(r.dyingFraction)} ${fmtTokens(Math.round(r.tokensPerSec))} tok/s`
  );
}
