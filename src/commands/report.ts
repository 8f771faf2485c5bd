import { Args, Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { UserError } from '../util/errors.js';
import { sharedFlags } from '../cli/flags.js';
import { kernelFactory, type KernelName } from '../kernels/index.js';
import { promises as fs } from 'node:fs';
import { describeFsError } from '../util/atomic.js';

/** Refuse an --out that cannot be a folder, without creating it; returns whether it already exists. */
async function checkOutDir(dir: string): Promise<boolean> {
  const st = await fs.stat(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    if (e.code === 'ENOTDIR') throw new UserError(`--out ${dir}: a parent of it is a file, not a directory`);
    throw describeFsError(e, `--out ${dir}`);
  });
  if (st && !st.isDirectory()) throw new UserError(`--out ${dir} is an existing file, not a directory; choose another --out`);
  return st !== null;
}
import { loadRuns } from '../report/data.js';
import { writeReport } from '../report/render.js';

export default class Report extends SaeCommand {
  static override description =
    'Write a self-contained HTML report (offline, no scripts) and one SVG per figure for one or several training runs (SPEC §9): feature density against rank with its Zipf fit, features per token, training curves, L0 against FVU / loss recovered, dead features against width';

  static override examples = [
    '<%= config.bin %> report runs/mc --out report/',
    '<%= config.bin %> report runs/mc-* runs/fc --out report/ --data synth/ --max-rows 16384',
  ];

  static override strict = false;

  static override args = {
    runs: Args.string({ description: 'run directories (each with metrics.jsonl and summary.json, as `sae train --out` writes them)' }),
  };

  static override flags = {
    out: Flags.string({ description: 'output folder: report.html and <figure>.svg', required: true }),
    data: Flags.string({ description: 'activation shards to evaluate each run on: features per token, and L0/FVU measured there instead of on the last training batch' }),
    'max-rows': Flags.integer({ description: 'with --data: evaluate at most this many rows per run', default: 16384 }),
    json: Flags.boolean({ description: 'print the list of files written as JSON on stdout (without it: the path of report.html)' }),
    'allow-no-manifest': sharedFlags['allow-no-manifest'],
    kernels: sharedFlags.kernels,
  };

  async run(): Promise<void> {
    const { argv, flags } = await this.parse(Report);
    const dirs = argv as string[];
    if (!dirs.length) throw new UserError('give at least one run directory (e.g. sae report runs/mc --out report/)');
    if (flags['max-rows'] < 1) throw new UserError('--max-rows must be ≥ 1');
    // a file in the way fails before any evaluation, but the folder is only created once the runs
    // have loaded: a failed report leaves no empty output folder behind
    const existed = await checkOutDir(flags.out);
    try {
      const runs = await loadRuns(dirs, {
        data: flags.data,
        maxRows: flags['max-rows'],
        allowNoManifest: flags['allow-no-manifest'],
        kernels: kernelFactory(flags.kernels as KernelName),
      });
      const res = await writeReport(runs, flags.out);
      for (const n of res.notes) this.info(`note: ${n}`);
      const html = res.files[res.files.length - 1];
      this.info(`report: ${res.figures.length} figures for ${runs.length} run${runs.length === 1 ? '' : 's'} in ${html}`);
      // stdout carries data or paths (as harvest/train/export print theirs): the report's path, or the JSON list
      process.stdout.write(flags.json ? JSON.stringify({ files: res.files, figures: res.figures, notes: res.notes }) + '\n' : html + '\n');
    } catch (err) {
      // everything in a folder this run created is ours (and incomplete)
      if (!existed) await fs.rm(flags.out, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
  }
}
