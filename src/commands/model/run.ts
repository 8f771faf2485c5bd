import { promises as fs } from 'node:fs';
import { Args, Flags } from '@oclif/core';
import { SaeCommand } from '../../util/command.js';
import { UserError } from '../../util/errors.js';
import { writeSafetensors, type Tensor } from '../../util/safetensors.js';
import { loadModel, modelFlags } from '../../lm/load.js';
import { parseHook } from '../../lm/hooks.js';
import { activationStats } from '../../lm/stats.js';
import { loadTokenizer } from '../../lm/tokenizer.js';
import { sharedFlags } from '../../cli/flags.js';
import { checkOutFile, MODEL_RUN_MARK } from '../../store/outputs.js';
import { lmKernelFactory, type KernelName } from '../../kernels/index.js';
import { parsePrecision } from '../../kernels/bf16.js';

/** --ids 5,17,42 → one sequence. */
function parseIdList(s: string): number[] {
  const parts = s.split(',').map((p) => p.trim());
  const ids = parts.map(Number);
  if (!parts.length || parts.some((p, i) => p === '' || !Number.isSafeInteger(ids[i]))) throw new UserError(`--ids expects comma-separated integers, got "${s}"`);
  return ids;
}

/** --ids-file: a JSON array of equal-length arrays of token ids (a batch). */
async function readIdsFile(file: string): Promise<number[][]> {
  let raw: unknown;
  try {
    raw = JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (err) {
    throw new UserError(`--ids-file ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : 'not valid JSON'}`);
  }
  if (!Array.isArray(raw) || !raw.length || !raw.every((r) => Array.isArray(r) && r.length > 0 && r.every((v) => Number.isSafeInteger(v)))) {
    throw new UserError(`--ids-file ${file}: expected a JSON array of arrays of token ids`);
  }
  const rows = raw as number[][];
  if (rows.some((r) => r.length !== rows[0].length)) throw new UserError(`--ids-file ${file}: every sequence must have the same length (${rows[0].length})`);
  return rows;
}

export default class ModelRun extends SaeCommand {
  static override description =
    'Run a host LM on text or token ids and print statistics of each captured hook and the loss; with --save, write the captured hooks, logits and per-token losses as safetensors, to check a model against another implementation before harvesting from it';

  static override examples = [
    '<%= config.bin %> model run fixtures/hf-tiny/gpt2 --text "The quick brown fox" --bos --hook blocks.1.hook_resid_pre',
    '<%= config.bin %> model run fixtures/hf-tiny/gpt2 --ids 464,627,624,275 --hook blocks.1.hook_resid_pre',
    '<%= config.bin %> model run fixtures/hf-tiny/gpt2 --ids-file batch.json --hook blocks.0.hook_mlp_out --hook ln_final.hook_normalized --save out.safetensors',
  ];

  static override args = {
    model: Args.string({ description: 'model folder, or Hub id', required: true }),
  };

  static override flags = {
    ...modelFlags,
    text: Flags.string({ description: 'text of one sequence, tokenized with the model folder’s tokenizer.json', exclusive: ['ids', 'ids-file'] }),
    bos: Flags.boolean({ description: 'prepend the model’s BOS token to --text (as harvest does)' }),
    ids: Flags.string({ description: 'comma-separated token ids of one sequence', exclusive: ['ids-file', 'text'] }),
    'ids-file': Flags.string({ description: 'JSON array of equal-length token-id arrays (a batch)', exclusive: ['ids', 'text'] }),
    hook: Flags.string({ description: 'hook to capture (repeatable), e.g. blocks.6.hook_resid_pre', multiple: true }),
    save: Flags.string({ description: 'write the captured hooks [batch, positions, d], logits and loss_per_token to this safetensors file; an existing file that is not an earlier --save needs --force' }),
    force: Flags.boolean({ description: 'let --save replace an existing file that is not an earlier model run --save' }),
    json: Flags.boolean({ description: 'print the report as JSON' }),
    kernels: sharedFlags.kernels,
    precision: sharedFlags.precision,
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(ModelRun);
    let rows: number[][] | null = null;
    if (flags.ids !== undefined) rows = [parseIdList(flags.ids)];
    else if (flags['ids-file'] !== undefined) rows = await readIdsFile(flags['ids-file']);
    else if (flags.text === undefined) throw new UserError('give the input with --text, --ids or --ids-file');
    if (flags.save) await checkOutFile(flags.save, '--save', 'model run', flags.force);
    const precision = parsePrecision(flags.precision);
    const { model, dir } = await loadModel(args.model, { revision: flags.revision, kernels: lmKernelFactory(flags.kernels as KernelName, precision) });
    if (flags.text !== undefined) {
      const tok = await loadTokenizer(dir);
      const ids = Array.from(tok.encode(flags.text));
      rows = [flags.bos ? [tok.bosId, ...ids] : ids];
      if (!rows[0].length) throw new UserError('--text encodes to no tokens');
    }
    if (!rows) throw new Error('unreachable');
    const hooks = flags.hook ?? [];
    for (const h of hooks) parseHook(h, model.cfg);
    const batch = rows;
    const B = batch.length;
    const T = batch[0].length;
    const ids = Int32Array.from(batch.flat());
    const r = model.run(ids, B, T, { capture: hooks, logits: !!flags.save, loss: T > 1 });
    const d = model.cfg.dModel;
    const report = {
      batch: B,
      positions: T,
      precision,
      loss: r.loss ?? null,
      hooks: Object.fromEntries(
        hooks.map((h) => {
          const x = r.captured[h];
          const cols = parseHook(h, model.cfg).kind === 'pattern' ? T : d;
          return [h, activationStats(x, x.length / cols, cols)];
        }),
      ),
    };
    if (flags.save) {
      const tensors: Record<string, Tensor> = {
        input_ids: { dtype: 'I64', shape: [B, T], data: BigInt64Array.from(ids, (v) => BigInt(v)) },
        logits: { dtype: 'F32', shape: [B, T, model.cfg.vocab], data: r.logits! },
      };
      if (r.lossPerToken) tensors.loss_per_token = { dtype: 'F32', shape: [B, T - 1], data: r.lossPerToken };
      for (const h of hooks) {
        const kind = parseHook(h, model.cfg).kind;
        tensors[h] = { dtype: 'F32', shape: kind === 'pattern' ? [B, model.cfg.nHeads, T, T] : [B, T, d], data: r.captured[h] };
      }
      // the writer tag is how a rerun recognises its own file (anything else needs --force)
      await checkOutFile(flags.save, '--save', 'model run', flags.force);
      await writeSafetensors(flags.save, tensors, { model: args.model, family: model.cfg.family, precision, ...MODEL_RUN_MARK });
    }
    // stdout carries the report (data); where the tensors went is a log line on stderr
    if (flags.save) this.info(`saved ${hooks.length} hook${hooks.length === 1 ? '' : 's'}, logits${r.lossPerToken ? ' and loss_per_token' : ''} to ${flags.save}`);
    if (flags.json) {
      process.stdout.write(JSON.stringify(report) + '\n');
      return;
    }
    const lines = [`${B}×${T} tokens${precision !== 'fp32' ? ` at ${precision}` : ''}${report.loss !== null ? `, loss ${report.loss.toFixed(6)} (mean next-token cross-entropy)` : ''}`];
    for (const [h, s] of Object.entries(report.hooks)) {
      lines.push(`${h}: mean ${s.mean.toFixed(5)} std ${s.std.toFixed(5)} min ${s.min.toFixed(4)} max ${s.max.toFixed(4)} mean norm ${s.meanNorm.toFixed(4)}`);
    }
    process.stdout.write(lines.join('\n') + '\n');
  }
}
