import { Args, Flags } from '@oclif/core';
import { SaeCommand } from '../util/command.js';
import { UserError } from '../util/errors.js';
import { sharedFlags } from '../cli/flags.js';
import { kernelFactory, type KernelName } from '../kernels/index.js';
import { parsePrecision } from '../kernels/bf16.js';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { describeFsError } from '../util/atomic.js';
import { isLockEntry, lockOutDir } from '../util/lock.js';
import { loadFeatureFolders, loadRuns, type RunData } from '../report/data.js';
import { writeReport } from '../report/render.js';
import { FIGURE_IDS } from '../report/figures.js';
import { checkReportOutputs } from '../store/outputs.js';

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

/** Create --out; true when this call made it (and so may remove it again after a failure). */
async function makeOutDir(dir: string): Promise<boolean> {
  const first = await fs.mkdir(dir, { recursive: true }).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOTDIR' || e.code === 'EEXIST') throw new UserError(`--out ${dir}: it or a parent of it is a file, not a directory`);
    throw describeFsError(e, `creating ${dir}`);
  });
  return first !== undefined;
}

/** Remove what a failed run put in the folder it created, but not the lock: that goes with release(). */
async function clearCreated(dir: string): Promise<void> {
  const names = await fs.readdir(dir).catch(() => [] as string[]);
  for (const n of names) if (!isLockEntry(n)) await fs.rm(path.join(dir, n), { recursive: true, force: true }).catch(() => undefined);
}

/** every file a report may write: checked before any evaluation, so that a refusal comes first */
const REPORT_FILES = [...FIGURE_IDS.map((id) => `${id}.svg`), 'report.html'];

export default class Report extends SaeCommand {
  static override description =
    'Write a self-contained HTML report (offline, no scripts) and one SVG per figure for one or several training runs (SPEC §9): feature density against rank with its Zipf fit, features per token, training curves, L0 against FVU / loss recovered, dead features against width; with --features, a link to each feature browser and features per token by token kind (appendix D)';

  static override examples = [
    '<%= config.bin %> report runs/mc --out report/',
    '<%= config.bin %> report runs/mc-* runs/fc --out report/ --data synth/ --max-rows 16384',
    '<%= config.bin %> report runs/mc runs/topk --features features/ --out report/',
    '<%= config.bin %> report --features features-mc --features features-topk --out report/',
  ];

  static override strict = false;

  static override args = {
    runs: Args.string({ description: 'run directories (each with metrics.jsonl and summary.json, as `sae train --out` writes them); none when --features is given' }),
  };

  static override flags = {
    out: Flags.string({ description: 'output folder: report.html and <figure>.svg', required: true }),
    data: Flags.string({ description: 'activation shards to evaluate each run on: features per token, and L0/FVU measured there instead of on the last training batch' }),
    features: Flags.string({
      description: 'a folder written by `sae features` (repeatable): the report links to its feature browser (relatively: keep the two folders side by side when moving them) and draws features per token by token kind (BOS, first token of a word, punctuation ...; appendix D) for each of its SAEs',
      multiple: true,
      // `--features F runs/mc`: runs/mc stays a run directory
      multipleNonGreedy: true,
    }),
    'max-rows': Flags.integer({ description: 'with --data: evaluate at most this many rows per run', default: 16384 }),
    json: Flags.boolean({ description: 'print the list of files written as JSON on stdout (without it: the path of report.html)' }),
    force: Flags.boolean({ description: 'replace report.html and <figure>.svg files in --out that an earlier `sae report` did not write (its own are replaced without it)' }),
    'allow-no-manifest': sharedFlags['allow-no-manifest'],
    kernels: sharedFlags.kernels,
    // with --data: the arithmetic of that evaluation
    precision: sharedFlags.precision,
  };

  async run(): Promise<void> {
    const { argv, flags } = await this.parse(Report);
    const dirs = argv as string[];
    const featureDirs = flags.features ?? [];
    if (!dirs.length && !featureDirs.length) throw new UserError('give at least one run directory or --features folder (e.g. sae report runs/mc --out report/)');
    if (flags['max-rows'] < 1) throw new UserError('--max-rows must be ≥ 1');
    if (!dirs.length && flags.data) throw new UserError('--data evaluates run directories; give at least one');
    // a file in the way, or a report.html/SVG of the user's, fails before any evaluation; but the
    // folder is only created once the runs have loaded: a failed report leaves no empty folder
    if (await checkOutDir(flags.out)) await checkReportOutputs(flags.out, REPORT_FILES, flags.force);
    // the features folders are read first: cheap, and a wrong one fails before any evaluation
    const folders = await loadFeatureFolders(featureDirs);
    const runs: RunData[] = dirs.length
      ? await loadRuns(dirs, {
          data: flags.data,
          maxRows: flags['max-rows'],
          allowNoManifest: flags['allow-no-manifest'],
          kernels: kernelFactory(flags.kernels as KernelName, parsePrecision(flags.precision)),
        })
      : [];
    const created = await makeOutDir(flags.out);
    let lock;
    try {
      lock = await lockOutDir(flags.out, 'sae report');
    } catch (err) {
      // someone else holds it and may be writing into it: remove it only if it is still empty
      if (created) await fs.rmdir(flags.out).catch(() => undefined);
      throw err;
    }
    try {
      const res = await writeReport(runs, flags.out, { force: flags.force, features: folders });
      for (const n of res.notes) this.info(`note: ${n}`);
      const html = res.files[res.files.length - 1];
      const what = [runs.length ? `${runs.length} run${runs.length === 1 ? '' : 's'}` : '', folders.length ? `${folders.length} features folder${folders.length === 1 ? '' : 's'}` : ''].filter(Boolean).join(' and ');
      this.info(`report: ${res.figures.length} figure${res.figures.length === 1 ? '' : 's'} for ${what} in ${html}`);
      // stdout carries data or paths (as harvest/train/export print theirs): the report's path, or the JSON list
      process.stdout.write(flags.json ? JSON.stringify({ files: res.files, figures: res.figures, notes: res.notes }) + '\n' : html + '\n');
    } catch (err) {
      // everything in a folder this run created is ours (and incomplete); the lock stays until the
      // folder is emptied, so no other writer starts in it meanwhile
      if (created) await clearCreated(flags.out);
      await lock.release();
      if (created) await fs.rmdir(flags.out).catch(() => undefined);
      throw err;
    } finally {
      await lock.release();
    }
  }
}
