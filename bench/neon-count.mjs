#!/usr/bin/env node
// Instruction-level count of the NEON SGEMM (issue 11), here on x86-64: cross-compiles
// bench/neon/gemm-driver.cc with native/gemm.cc for arm64, runs it under qemu with the execution
// trace on (-d in_asm,exec,nochain: every translated block's instructions once, then one line per
// block executed) and counts the instructions the GEMM code executed, by kind. From the counts:
// FLOPs per instruction, and per core an upper bound on FLOPs per cycle from its documented
// resources (FP/ASIMD pipes, load pipes, decode width): cycles ≥ max(V µops / V pipes, load µops /
// load pipes, instructions / decode width). A bound, not a measurement: caches, latencies and the
// other threads are left out. Prints a markdown table (docs/performance.md, arm64).
//
// Usage: node bench/neon-count.mjs [--d 768] [--F 256] [--ntok 256] [--n 64] [--m 768] [--keep]
// Needs aarch64-linux-gnu-g++ and qemu-aarch64-static (see scripts/test-arm64.mjs).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import readline from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, '.cache', 'arm64', 'count');
const opt = { d: 768, F: 256, ntok: 256, n: 64, m: 768, keep: false };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === '--keep') opt.keep = true;
  else if (/^--(d|F|ntok|n|m)$/.test(a)) opt[a.slice(2)] = Number(process.argv[++i]);
  else {
    console.error('usage: node bench/neon-count.mjs [--d 768] [--F 256] [--ntok 256] [--n 64] [--m 768] [--keep]');
    process.exit(2);
  }
}

// Documented resources per core: FP/ASIMD pipes that execute FMLA (4 lanes of float32 each), load
// pipes, and instructions (MOPs) dispatched per cycle in a hot loop. Arm: the Neoverse N1 / V1 / V2
// Software Optimization Guides (documents 109896, 109897, 109898; N1 dispatches 4 MOPs per cycle,
// V1 and V2 8 from their MOP caches, decoding 5 and 6); Apple M1 (Firestorm): Dougall Johnson's
// measurements (dougallj.github.io/applecpu; 8-wide decode), Apple publishes no per-pipe tables.
const CORES = [
  { name: 'Neoverse N1 (Graviton2, Ampere Altra)', v: 2, l: 2, width: 4 },
  { name: 'Neoverse V1 (Graviton3)', v: 4, l: 3, width: 8 },
  { name: 'Neoverse V2 (Graviton4, Grace)', v: 4, l: 3, width: 8 },
  { name: 'Apple M1 P-core (Firestorm)', v: 4, l: 3, width: 8 },
];

const CXX = process.env.SAE_ARM64_CXX || 'aarch64-linux-gnu-g++';
const QEMU = process.env.SAE_ARM64_QEMU || 'qemu-aarch64-static';
for (const [tool, argv] of [[CXX, ['--version']], [QEMU, ['--version']]]) {
  const r = spawnSync(tool, argv, { stdio: 'ignore' });
  if (r.error || r.status !== 0) {
    console.error(`neon-count: ${tool} not found (apt-get install g++-aarch64-linux-gnu qemu-user-static)`);
    process.exit(1);
  }
}
fs.mkdirSync(out, { recursive: true });
const driver = path.join(out, 'gemm-driver');
// the addon's flags (scripts/build-native.mjs), statically linked so that qemu needs no sysroot
const cc = spawnSync(CXX, ['-O3', '-std=gnu++17', '-fno-math-errno', '-ffp-contract=fast', '-march=armv8-a', '-static', `-I${path.join(root, 'native')}`,
  path.join(root, 'native', 'gemm.cc'), path.join(root, 'bench', 'neon', 'gemm-driver.cc'), '-o', driver], { encoding: 'utf8' });
if (cc.status !== 0) {
  console.error(cc.stderr);
  process.exit(1);
}

/** Dynamic instruction counts of the GEMM code (functions of namespace isaneon) for one run. */
async function trace(args) {
  const log = path.join(out, `${args[0]}.log`);
  const r = spawnSync(QEMU, ['-d', 'in_asm,exec,nochain', '-D', log, driver, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${driver} ${args.join(' ')} failed: ${r.stderr}`);
  const blocks = new Map(); // guest address of a translated block → { gemm, insns: [mnemonic, operands][] }
  const runs = new Map();
  let cur = null;
  const rl = readline.createInterface({ input: fs.createReadStream(log), crlfDelay: Infinity });
  for await (const line of rl) {
    if (line.startsWith('Trace ')) {
      const pc = line.match(/\[[0-9a-f]+\/([0-9a-f]+)\//)?.[1];
      if (pc) runs.set(pc, (runs.get(pc) ?? 0) + 1);
      cur = null;
    } else if (line.startsWith('IN:')) {
      cur = { gemm: /isaneon/.test(line), insns: [], start: null };
    } else if (cur && /^0x[0-9a-f]+:/.test(line)) {
      const m = line.match(/^0x([0-9a-f]+):\s+[0-9a-f]{8}\s+(\S+)\s*(.*)$/);
      if (!m) continue;
      if (cur.start === null) {
        cur.start = m[1].padStart(16, '0');
        if (!blocks.has(cur.start)) blocks.set(cur.start, cur);
      }
      cur.insns.push([m[2], m[3]]);
    } else if (line.trim() === '') cur = null;
  }
  if (!opt.keep) fs.rmSync(log, { force: true });
  const c = { all: 0, fmla: 0, v: 0, ld: 0, st: 0, other: 0 };
  for (const [pc, n] of runs) {
    const b = blocks.get(pc);
    if (!b || !b.gemm) continue;
    for (const [mn, ops] of b.insns) {
      c.all += n;
      const vec = /\b[vqsd]\d+\b|\bv\d+\./.test(ops);
      if (/^ld/.test(mn)) {
        // a load pair of q registers is two load µops; LD1R and lane loads also take an FP/ASIMD slot
        c.ld += n * (mn === 'ldp' && /\bq\d+/.test(ops) ? 2 : 1);
        if (/^ld\dr$|^ld\d$/.test(mn) && /\[\d\]|ld1r/.test(`${mn} ${ops}`)) c.v += n;
      } else if (/^st/.test(mn)) c.st += n;
      else if (mn === 'fmla' && /\.4s/.test(ops)) {
        c.fmla += n;
        c.v += n;
      } else if (vec && !/^prfm/.test(mn)) c.v += n;
      else c.other += n;
    }
  }
  return c;
}

function report(title, c, usefulFlop, loop) {
  const flop = 8 * c.fmla;
  console.log(`\n### ${title}\n`);
  console.log(`Executed in the GEMM code: ${c.all.toLocaleString('en-US')} instructions, ${c.fmla.toLocaleString('en-US')} FMLA (4 lanes: ${flop.toLocaleString('en-US')} FLOP, ${(usefulFlop / flop * 100).toFixed(1)} % of them on real rows and columns), ${(c.v - c.fmla).toLocaleString('en-US')} other FP/ASIMD, ${c.ld.toLocaleString('en-US')} load µops, ${c.st.toLocaleString('en-US')} stores, ${c.other.toLocaleString('en-US')} integer and branch; ${(flop / c.all).toFixed(2)} FLOP per instruction (${loop}).\n`);
  console.log('| core | FMLA/cycle peak | cycles ≥ FP/ASIMD µops / pipes | load µops / pipes | instructions / dispatch width | FLOP/cycle (bound) | % of peak |');
  console.log('|---|---|---|---|---|---|---|');
  for (const k of CORES) {
    const cv = c.v / k.v, cl = c.ld / k.l, cw = c.all / k.width;
    const cycles = Math.max(cv, cl, cw);
    const per = flop / cycles;
    console.log(`| ${k.name} | ${k.v} (${8 * k.v} FLOP) | ${(cv / 1e6).toFixed(2)} M cycles | ${(cl / 1e6).toFixed(2)} M | ${(cw / 1e6).toFixed(2)} M | ${per.toFixed(1)} | ${(per / (8 * k.v) * 100).toFixed(0)} % |`);
  }
}

const scan = await trace(['scan', String(opt.d), String(opt.F), String(opt.ntok)]);
report(`Encoder scan: one thread, d = ${opt.d}, ${opt.F} features × ${opt.ntok} tokens (packing of W_enc included)`, scan, 2 * opt.d * opt.F * opt.ntok,
  'its k-loop alone: 16 FMLA in 22 instructions, 5.82');
const lin = await trace(['linear', String(opt.n), String(opt.d), String(opt.m)]);
report(`LM linear (generic kernel): ${opt.n} tokens, K = ${opt.d}, ${opt.m} outputs (packing of W included)`, lin, 2 * opt.n * opt.d * opt.m,
  'its k-loop alone: 16 FMLA in 26 instructions, one of them an LD1R that also takes an FP/ASIMD slot, 4.92');
