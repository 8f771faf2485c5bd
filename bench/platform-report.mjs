// `node bench/train.mjs --platform-report`: the figures a user on a platform we cannot measure here
// (arm64 Linux, Apple silicon, Intel Macs) should send back (issue 11). Platform, CPU, the
// instruction set the addon chose, threads; the packed SGEMM's GFLOP/s at the encoder's shapes and,
// given the clock (--ghz, or cpufreq's maximum where Linux exposes it), its FLOPs per cycle and
// share of the core's peak; the host LM's linear layer; training-step times at the standard
// shapes. Everything runs with the native kernels; a missing addon is an error, not a fallback.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

// Arm cores by /proc/cpuinfo "CPU implementer" : "CPU part", with their float32 FMA peak per cycle
// per core from 128-bit NEON (FMA pipes × 4 lanes × 2): the Neoverse / Cortex Software Optimization
// Guides; Apple's P-cores from Dougall Johnson's measurements (4 FMA pipes).
const ARM_CORES = {
  '0x41:0xd0b': ['Cortex-A76', 16],
  '0x41:0xd0c': ['Neoverse N1', 16],
  '0x41:0xd40': ['Neoverse V1', 32],
  '0x41:0xd49': ['Neoverse N2', 16],
  '0x41:0xd4f': ['Neoverse V2', 32],
  '0x41:0xd8e': ['Neoverse N3', 16],
  '0x41:0xd84': ['Neoverse V3', 32],
};

function sh(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : '';
}

/** CPU name and, where known, its float32 FLOP/cycle/core peak. */
function cpu() {
  if (process.platform === 'darwin') {
    const name = sh('sysctl', ['-n', 'machdep.cpu.brand_string']) || os.cpus()[0]?.model || 'unknown';
    const perf = sh('sysctl', ['-n', 'hw.perflevel0.physicalcpu']);
    // every Apple-silicon P-core so far (M1–M4) has four 128-bit FMA pipes
    const peak = /^Apple M\d/.test(name) ? 32 : null;
    return { name: perf ? `${name} (${perf} performance cores)` : name, peak };
  }
  if (process.platform === 'linux') {
    let text = '';
    try {
      text = readFileSync('/proc/cpuinfo', 'utf8');
    } catch {}
    const field = (k) => text.match(new RegExp(`^${k}\\s*:\\s*(.+)$`, 'm'))?.[1]?.trim();
    const model = field('model name');
    if (model) return { name: model, peak: null };
    const key = `${field('CPU implementer')}:${field('CPU part')}`;
    const known = ARM_CORES[key];
    if (known) return { name: `${known[0]} (implementer:part ${key})`, peak: known[1] };
    return { name: `arm64 implementer:part ${key}`, peak: null };
  }
  return { name: os.cpus()[0]?.model ?? 'unknown', peak: null };
}

function clockGHz(given) {
  if (given) return { ghz: given, from: '--ghz' };
  try {
    const khz = Number(readFileSync('/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq', 'utf8'));
    if (khz > 0) return { ghz: khz / 1e6, from: 'cpufreq maximum' };
  } catch {}
  return { ghz: null, from: null };
}

export async function platformReport(o, { dist, runChild, median, d }) {
  const imp = (p) => import(pathToFileURL(path.join(dist, p)).href);
  if (!existsSync(path.join(dist, 'kernels', 'native.js'))) throw new Error('dist/ is missing; run `npm run build` first');
  const { nativeAvailable, nativeLoadError, nativeInfo } = await imp('kernels/native.js');
  if (!nativeAvailable()) throw new Error(`native kernels unavailable (${nativeLoadError()}); this platform runs the reference kernels`);
  const info = nativeInfo();
  const c = cpu();
  const peak = o.peak ?? c.peak;
  const clock = clockGHz(o.ghz);
  const started = new Date();

  // the host LM's linear layer at GPT-2's MLP shape (512 tokens × 768 → 3072), in this process
  const { createNativeLmKernels } = await imp('kernels/lm-native.js');
  const lm = createNativeLmKernels();
  const [n, K, m] = [512, 768, 3072];
  const rnd = (len) => Float32Array.from({ length: len }, (_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5);
  const x = rnd(n * K), W = rnd(K * m), y = new Float32Array(n * m);
  const lt = [];
  for (let r = 0; r < 7; r++) {
    const t0 = performance.now();
    lm.linear(x, n, K, W, m, 'in_out', null, y);
    if (r >= 2) lt.push(performance.now() - t0);
  }
  const lmGflops = (2 * n * K * m) / (median(lt) * 1e6);

  // training steps and the encoder GEMM (the floor) at the standard shapes, each in its own process
  const rows = [];
  for (const [F, B] of [[6144, 1536], [24576, 1536]]) {
    for (const act of ['topk', 'mutual', 'feature']) {
      const r = runChild({ F, B, act, steps: 3, warmup: 1, kernels: 'native' });
      rows.push(r);
      console.error(`bench: ${act} F=${F} B=${B}: ${median(r.stepMs).toFixed(1)} ms/step`);
    }
  }
  const gemm = [6144, 24576].map((F) => {
    const floor = Math.min(...rows.filter((r) => r.F === F).map((r) => r.floorMs));
    return { F, B: 1536, ms: floor, gflops: (2 * 1536 * d * F) / (floor * 1e6) };
  });
  const perCycle = (gf) => (clock.ghz ? gf / (clock.ghz * info.threads) : null);
  const share = (gf) => (perCycle(gf) !== null && peak ? `${((100 * perCycle(gf)) / peak).toFixed(0)} % of ${peak}` : 'n/a');
  const report = {
    date: started.toISOString(),
    platform: `${process.platform}/${process.arch}`,
    os: `${os.type()} ${os.release()}`,
    cpu: c.name,
    cpus: os.cpus().length,
    node: process.version,
    isa: info.isa,
    isas: info.isas,
    threads: info.threads,
    clockGHz: clock.ghz,
    clockFrom: clock.from,
    peakFlopPerCycle: peak,
    gemm: gemm.map((g) => ({ ...g, flopPerCycle: perCycle(g.gflops) })),
    lmLinear: { n, K, m, gflops: lmGflops, flopPerCycle: perCycle(lmGflops) },
    steps: rows.map((r) => ({ act: r.act, F: r.F, B: r.B, medianMs: median(r.stepMs), stepMs: r.stepMs, encodeMs: r.parts.encode, sparseMs: r.parts.sparse, optimizerMs: r.parts.optimizer })),
  };
  if (o.json) {
    console.log(JSON.stringify(report, null, 2));
    return;
  }
  const f1 = (v) => (v === null || v === undefined ? 'n/a' : v.toFixed(1));
  console.log('# sae platform report\n');
  console.log('Please send this block back (an issue or a pull request to docs/performance.md).\n');
  console.log('```');
  console.log(`date       ${report.date}`);
  console.log(`platform   ${report.platform}, ${report.os}, node ${report.node}`);
  console.log(`cpu        ${report.cpu}, ${report.cpus} CPUs`);
  console.log(`kernels    ${info.isa} (available: ${info.isas.join(', ')}), ${info.threads} threads (SAE_THREADS)`);
  console.log(`clock      ${clock.ghz ? `${clock.ghz.toFixed(2)} GHz (${clock.from})` : 'unknown: rerun with --ghz <sustained all-core clock>'}`);
  console.log(`peak       ${peak ? `${peak} float32 FLOP/cycle/core` : 'unknown for this CPU: rerun with --peak <FLOP/cycle/core>'}`);
  for (const g of report.gemm) {
    console.log(`gemm       d=${d} F=${g.F} B=${g.B}: ${g.ms.toFixed(1)} ms, ${g.gflops.toFixed(1)} GFLOP/s, ${f1(g.flopPerCycle)} FLOP/cycle/thread (${share(g.gflops)})`);
  }
  console.log(`lm linear  ${n}×${K}×${m}: ${lmGflops.toFixed(1)} GFLOP/s, ${f1(perCycle(lmGflops))} FLOP/cycle/thread (${share(lmGflops)})`);
  for (const s of report.steps) {
    console.log(`step       ${s.act.padEnd(7)} F=${s.F} B=${s.B}: ${s.medianMs.toFixed(1)} ms (encode ${s.encodeMs.toFixed(1)}, sparse ${s.sparseMs.toFixed(1)}, optimizer ${s.optimizerMs.toFixed(1)})`);
  }
  console.log('```');
  console.log('\ngemm = one encoder GEMM (x − b_dec)·W_enc + b_enc with the packed SGEMM, z′ dropped as it is made (the floor of a');
  console.log('training step); step = the median of 3 Trainer steps after 1 warm-up step, d = 768, k = 32; FLOP/cycle/thread =');
  console.log('GFLOP/s ÷ (clock × threads). `--json` prints the same as JSON.');
}
