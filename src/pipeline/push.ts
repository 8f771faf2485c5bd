/**
 * `sae push RUN OWNER/REPO` (issue 19 part 6): publish a run's SAE on the Hugging Face Hub where
 * SAELens finds it, in one commit made with @huggingface/hub:
 *
 *   README.md              model card: `library_name: saelens`, hook, model, width, architecture,
 *                          L0, FVU, loss recovered, how it was trained
 *   {hook}/                the SAELens ≥ 6 export (cfg.json, sae_weights.safetensors,
 *                          sparsity.safetensors): `SAE.from_pretrained("OWNER/REPO", "{hook}")`,
 *                          as SAELens' own upload names its folders
 *   sae/                   our checkpoint as the run holds it (weights, cfg.json with the training
 *                          config, and the training state when there is one)
 *   eval.json, splice-eval.json   the `sae eval` / `sae splice-eval --json` results given
 *
 * The repo is created when missing (and the branch, for --revision). A batch selection (Mutual
 * Choice, Feature Choice, BatchTopK) has no per-token form until `sae export` calibrates its
 * thresholds, so it is pushed from that export (--exported). The token is required and checked
 * before anything is read or requested.
 */
import { openAsBlob, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { commit, createBranch, createRepo, HubApiError, repoExists, type CommitOperation } from '@huggingface/hub';
import { openSae, type Sae } from '../sae/sae.js';
import { phaseOfStep } from '../sae/config.js';
import { FeatureStats } from '../sae/density.js';
import { FORMATS, type ExportSource } from '../sae/formats/index.js';
import { checkRevision, checkToken, DEFAULT_ENDPOINT, HubClient, isRepoId, tokenFromEnv, type ExplainHubError } from '../lm/hub.js';
import { EVAL_SCHEMA } from '../eval/summary.js';
import { SPLICE_SCHEMA } from '../store/outputs.js';
import { UserError } from '../util/errors.js';
import { describeFsError } from '../util/atomic.js';

export interface PushOptions {
  /** run directory or checkpoint folder of ours */
  run: string;
  /** OWNER/REPO */
  repo: string;
  /** a JumpReLU export of the run (`sae export`, ours or --format saelens) */
  exported?: string;
  /** `sae eval` JSON (sae-eval/1) */
  evalFile?: string;
  /** `sae splice-eval --json` JSON (sae-splice/1) */
  spliceFile?: string;
  /** create the repo private (an existing repo keeps its visibility) */
  private?: boolean;
  /** branch to commit to; default main */
  branch?: string;
  /** write the folder that would be uploaded, upload nothing */
  dryRun?: boolean;
  /** default HF_TOKEN, then the file `huggingface-cli login` writes */
  token?: string;
  /** default HF_ENDPOINT, then https://huggingface.co */
  endpoint?: string;
  fetch?: typeof fetch;
  onProgress?: (msg: string) => void;
}

export interface PushResult {
  /** with dryRun, the folder that would be uploaded (else a temporary folder, removed after the upload) */
  folder: string;
  /** repo paths, sorted */
  files: string[];
  /** the commit's URL on the Hub (not for a dry run) */
  commitUrl?: string;
  /** the SAELens folder in the repo (SAELens' sae_id) */
  saeId: string;
}

const OUR_FILES = ['sae.safetensors', 'cfg.json', 'state.json', 'state.safetensors'];
const SAELENS_FILES = ['cfg.json', 'sae_weights.safetensors', 'sparsity.safetensors'];
const NAMES: Record<string, string> = { relu: 'ReLU (L1)', topk: 'TopK', batchtopk: 'BatchTopK', mutual: 'Mutual Choice', feature: 'Feature Choice', jumprelu: 'JumpReLU' };

export async function pushSae(opts: PushOptions): Promise<PushResult> {
  const { repo } = opts;
  if (!isRepoId(repo) || !repo.includes('/')) throw new UserError(`"${repo}" is not a Hub repo id OWNER/REPO`);
  const branch = opts.branch ?? 'main';
  checkRevision(branch);
  // before reading anything: without a token nothing can be uploaded
  const token = opts.dryRun ? undefined : (opts.token ?? (await tokenFromEnv()));
  if (!opts.dryRun && !token) throw new UserError('sae push needs a Hugging Face token with write access: set HF_TOKEN (or log in with huggingface-cli); nothing was uploaded');
  checkToken(token);

  const sae = await openSae(opts.run);
  if (sae.format !== 'sae') throw new UserError(`${opts.run} is a ${sae.format} folder; sae push publishes runs and checkpoints of ours (sae export converts them)`);
  const evalJson = opts.evalFile ? await readResult(opts.evalFile, '--eval', EVAL_SCHEMA) : null;
  const splice = opts.spliceFile ? await readResult(opts.spliceFile, '--splice', SPLICE_SCHEMA) : null;
  if (evalJson && (evalJson.json.d !== sae.d || evalJson.json.width !== sae.F)) {
    throw new UserError(`--eval ${opts.evalFile} measured an SAE of d ${String(evalJson.json.d)}, width ${String(evalJson.json.width)}, not this one (d ${sae.d}, width ${sae.F})`);
  }
  const act = activationOf(sae);
  const ex = opts.exported ? await openExported(opts.exported, sae) : null;
  if (!ex && !['topk', 'relu', 'jumprelu'].includes(act)) {
    throw new UserError(`${opts.run} selects per batch (${act}): SAELens runs it as a JumpReLU SAE with calibrated thresholds; run \`sae export --checkpoint ${opts.run} --data SHARDS --out DIR\` first and pass --exported DIR`);
  }

  const saeId = folderName(sae.hook);
  // the SAELens export and the card are written to a temporary folder; files that already exist
  // (our checkpoint, a SAELens --exported) are uploaded from where they are, and copied only for a dry run
  const folder = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-push-'));
  const elsewhere = new Map<string, string>();
  const take = async (from: string, to: string, names: string[]): Promise<void> => {
    for (const f of names) {
      const src = path.join(from, f);
      if (!(await fs.stat(src).catch(() => null))?.isFile()) continue;
      if (!opts.dryRun) elsewhere.set(`${to}/${f}`, src);
      else {
        await fs.mkdir(path.join(folder, to), { recursive: true });
        await fs.copyFile(src, path.join(folder, to, f));
      }
    }
  };
  try {
    if (ex?.format === 'saelens') await take(ex.dir, saeId, SAELENS_FILES);
    else {
      const writer = FORMATS.saelens?.write;
      if (!writer) throw new UserError('the SAELens writer is not available in this build');
      await writer(exportSource(ex ?? sae, sae), path.join(folder, saeId));
    }
    await take(sae.dir, 'sae', OUR_FILES);
    if (evalJson) await fs.writeFile(path.join(folder, 'eval.json'), evalJson.bytes);
    if (splice) await fs.writeFile(path.join(folder, 'splice-eval.json'), splice.bytes);
    await fs.writeFile(path.join(folder, 'README.md'), modelCard({ repo, saeId, sae, act, exported: !!ex, evalJson: evalJson?.json ?? null, splice: splice?.json ?? null }));
  } catch (err) {
    await fs.rm(folder, { recursive: true, force: true });
    throw describeFsError(err, `writing the folder to push (${folder})`);
  }
  const sources = new Map([...(await listFiles(folder)).map((f): [string, string] => [f, path.join(folder, f)]), ...elsewhere]);
  const files = [...sources.keys()].sort();
  if (opts.dryRun) return { folder, files, saeId };

  try {
    const commitUrl = await upload({ ...opts, token: token!, branch }, sources, `Upload ${NAMES[act] ?? act} SAE for ${sae.model || 'a model'} ${sae.hook} (sae push)`);
    return { folder, files, commitUrl, saeId };
  } finally {
    await fs.rm(folder, { recursive: true, force: true });
  }
}

/** createRepo when missing, the branch when missing, then one commit of every file. */
async function upload(opts: PushOptions & { token: string; branch: string }, sources: Map<string, string>, title: string): Promise<string> {
  const { repo, token, branch } = opts;
  const endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? DEFAULT_ENDPOINT).replace(/\/+$/, '');
  const hub = new HubClient(endpoint, repo, branch, opts.fetch ?? globalThis.fetch, token, 'repo');
  const common = { repo, hubUrl: endpoint, accessToken: token, fetch: hub.fetch };
  const explain: ExplainHubError = (status, code) => {
    if (status === 401) return new UserError(`the Hub at ${endpoint} refused HF_TOKEN (HTTP 401); set HF_TOKEN to a valid token with write access`);
    if (status === 403) return new UserError(`HF_TOKEN may not write to ${repo} on ${endpoint} (HTTP 403); use a token with write access to ${repo.split('/')[0]}`);
    if (code === 'RevisionNotFound') return new UserError(`branch ${branch} not found in ${repo} on ${endpoint}`);
    return null;
  };
  const ignore409 = async (fn: () => Promise<unknown>): Promise<void> => {
    try {
      await fn();
    } catch (err) {
      // made meanwhile by someone else: as good
      if (!(err instanceof HubApiError && err.statusCode === 409)) throw err;
    }
  };
  if (!(await hub.call(() => repoExists(common), undefined, explain))) {
    opts.onProgress?.(`${repo}: creating it${opts.private ? ' (private)' : ''}`);
    await hub.call(() => ignore409(() => createRepo({ ...common, ...(opts.private ? { visibility: 'private' as const } : {}) })), undefined, explain);
  }
  if (branch !== 'main') await hub.call(() => ignore409(() => createBranch({ ...common, branch })), undefined, explain);
  const operations: CommitOperation[] = [];
  for (const [f, local] of [...sources].sort(([a], [b]) => (a < b ? -1 : 1))) operations.push({ operation: 'addOrUpdate', path: f, content: await openAsBlob(local) });
  opts.onProgress?.(`${repo}: committing ${operations.length} files to ${branch}`);
  const out = await hub.call(() => commit({ ...common, operations, title, branch }), undefined, explain);
  if (!out?.commit?.url) throw new UserError(`the Hub at ${endpoint} did not say which commit it made in ${repo}`);
  return out.commit.url;
}

/** How the SAE selects at inference: its batch selection, or a per-token rule. */
function activationOf(sae: Sae): string {
  if (sae.threshold) return 'jumprelu';
  if (!sae.trainConfig) return sae.cfg.architecture;
  return phaseOfStep(sae.trainConfig, sae.cfg.sae_train!.step).activation;
}

/** A JumpReLU export of this run (ours or SAELens'); one line for anything else. */
async function openExported(dir: string, run: Sae): Promise<Sae> {
  const ex = await openSae(dir);
  if (!ex.threshold || (ex.format !== 'sae' && ex.format !== 'saelens')) throw new UserError(`--exported ${dir} is not a JumpReLU export (made by sae export, --format sae or saelens)`);
  if (ex.d !== run.d || ex.F !== run.F || (ex.hook && ex.hook !== run.hook)) {
    throw new UserError(`--exported ${dir} is an SAE of d ${ex.d}, width ${ex.F} on ${ex.hook || 'no hook'}, not the export of ${run.dir} (d ${run.d}, width ${run.F} on ${run.hook})`);
  }
  // an export keeps the decoder: ours bit for bit, SAELens' up to the float32 rounding of its folds
  const tol = ex.format === 'sae' ? 0 : 1e-5;
  const a = ex.params.Wdec;
  const b = run.params.Wdec;
  for (let i = 0; i < a.length; i++) {
    if (Math.abs(a[i] - b[i]) > tol * Math.max(1, Math.abs(b[i]))) throw new UserError(`--exported ${dir} is not an export of ${run.dir}: its decoder differs`);
  }
  return ex;
}

/** What the SAELens writer takes: `sae` (the run, or its JumpReLU export of ours), with the run's training density. */
function exportSource(sae: Sae, run: Sae): ExportSource {
  const act = activationOf(sae);
  const k = act === 'topk' ? (sae.trainConfig?.k ?? sae.cfg.activation_fn_kwargs?.k) : undefined;
  const density = trainingDensity(run);
  return {
    params: sae.params,
    architecture: act === 'topk' ? 'topk' : act === 'relu' ? 'relu' : 'jumprelu',
    ...(k !== undefined ? { k } : {}),
    ...(sae.threshold ? { threshold: sae.threshold } : {}),
    preprocessing: sae.preprocessing,
    ...(sae.scale !== undefined ? { scale: sae.scale } : {}),
    hook: sae.hook,
    model: sae.model,
    ...(density ? { density } : {}),
    trainedPrecision: run.trainedPrecision,
  };
}

/** Per-feature density over training (the state's firing counts), when the checkpoint has a training state. */
function trainingDensity(sae: Sae): Float32Array | undefined {
  if (!sae.state) return undefined;
  const tokens = sae.state.snapshot.tokens;
  const stats = FeatureStats.fromState(sae.state.snapshot.stats);
  return tokens > 0 ? Float32Array.from(stats.cumulativeCounts, (c) => Math.min(1, c / tokens)) : undefined;
}

/** A hook name as a repo folder (SAELens' sae_id). */
function folderName(hook: string): string {
  const name = hook.replace(/[^\w.-]+/g, '_').replace(/^[.]+/, '');
  return name && name !== 'sae' ? name : 'saelens';
}

async function readResult(file: string, flag: string, schema: string): Promise<{ bytes: Buffer; json: Record<string, unknown> }> {
  const bytes = await fs.readFile(file).catch((e) => {
    throw describeFsError(e, `reading ${flag} ${file}`);
  });
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new UserError(`${flag} ${file} is not JSON (pass the output of sae ${flag === '--eval' ? 'eval' : 'splice-eval --json'})`);
  }
  if (typeof json !== 'object' || json === null || (json as { schema?: unknown }).schema !== schema) {
    throw new UserError(`${flag} ${file} is not a ${schema} result (pass the output of sae ${flag === '--eval' ? 'eval' : 'splice-eval --json'})`);
  }
  return { bytes, json: json as Record<string, unknown> };
}

async function listFiles(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(path.join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await listFiles(dir, rel)));
    else if (e.isFile()) out.push(rel);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// the model card

type Obj = Record<string, unknown>;
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const fmt = (v: number | null, digits: number): string => (v === null ? '—' : v.toFixed(digits));

export function modelCard(o: { repo: string; saeId: string; sae: Sae; act: string; exported: boolean; evalJson: Obj | null; splice: Obj | null }): string {
  const { sae, act } = o;
  const tc = sae.trainConfig;
  const k = tc?.k ?? sae.cfg.activation_fn_kwargs?.k;
  // pushed through its JumpReLU export: a batch selection always, any other when --exported says so
  const viaExport = o.exported || !['topk', 'relu', 'jumprelu'].includes(act);
  const arch = `${NAMES[act] ?? act}${act !== 'relu' && act !== 'jumprelu' && k !== undefined ? `, k = ${k}` : ''}` + (viaExport ? ', exported as JumpReLU with thresholds calibrated by `sae export` (appendix B: threshold inference)' : '');
  const slArch = viaExport || act === 'jumprelu' ? 'jumprelu' : act === 'topk' ? 'topk' : 'standard';
  const ev = o.evalJson;
  const spliced = Array.isArray(o.splice?.spliced) ? (o.splice!.spliced as Obj[]) : [];
  const rows: [string, string][] = [
    ['model', sae.model ? `\`${sae.model}\`` : '—'],
    ['hook', `\`${sae.hook}\``],
    ['d_in', String(sae.d)],
    ['width (d_sae)', String(sae.F)],
    ['architecture', `${arch} (SAELens \`${slArch}\`)`],
    ['preprocessing', `\`${sae.preprocessing}\`${sae.preprocessing === 'center_unit_norm' ? ' (SAELens `layer_norm`)' : ''}`],
    ['L0', ev ? `${fmt(num(ev.l0), 2)} (eval.json, ${String(ev.rows)} tokens)` : '— (not measured: pass --eval)'],
    ['FVU', ev ? `${fmt(num(ev.fvu), 4)} (explained variance ${fmt(num(ev.explainedVariance), 4)})` : '—'],
    ...(spliced.length
      ? spliced.map((s): [string, string] => [`loss recovered${spliced.length > 1 ? ` (${String(s.label)})` : ''}`, `${fmt(num(s.lossRecovered), 2)} % (splice-eval.json, ${String(o.splice!.tokens)} tokens; KL ${fmt(num(s.kl), 4)})`])
      : ([['loss recovered', '— (not measured: pass --splice)']] as [string, string][])),
  ];
  const tags = ['sparse-autoencoder', 'saelens', 'mechanistic-interpretability', act];
  const train = sae.cfg.sae_train;
  const trained = train
    ? [
        `Trained with \`sae train\` for ${train.step} steps${sae.state ? ` (${sae.state.snapshot.tokens} tokens)` : ''} of batch size ${tc?.batchSize ?? '?'} at ${sae.trainedPrecision}` +
          `${train.shards ? ` on activation shards \`${train.shards}\`` : ''}. Its training config, as cfg.json \`sae_train\` records it:`,
        '',
        '```json',
        JSON.stringify(train.config, null, 2),
        '```',
      ]
    : ['No training config was recorded with these weights.'];
  return [
    '---',
    'library_name: saelens',
    'tags:',
    ...tags.map((t) => `- ${t}`),
    '---',
    '',
    `# ${NAMES[act] ?? act} SAE for ${sae.model || 'a language model'}, ${sae.hook}`,
    '',
    `A sparse autoencoder with ${sae.F} features on \`${sae.hook}\` of ${sae.model ? `\`${sae.model}\`` : 'its model'}, trained and published with \`sae\`.`,
    '',
    '| | |',
    '| --- | --- |',
    ...rows.map(([a, b]) => `| ${a} | ${b} |`),
    '',
    '## Use',
    '',
    'With SAELens ≥ 6:',
    '',
    '```python',
    'from sae_lens import SAE',
    '',
    `sae = SAE.from_pretrained("${o.repo}", "${o.saeId}")`,
    '```',
    '',
    'With `sae`:',
    '',
    '```sh',
    `sae eval --checkpoint hf:${o.repo}/${o.saeId} --data SHARDS`,
    '```',
    '',
    '## Files',
    '',
    `- \`${o.saeId}/\`: the SAE in SAELens' format (\`cfg.json\`, \`sae_weights.safetensors\`, \`sparsity.safetensors\`: log10 feature density)`,
    `- \`sae/\`: the checkpoint as \`sae\` wrote it (\`sae.safetensors\`, \`cfg.json\` with the training config${sae.state ? ', the training state' : ''})`,
    ...(ev ? ['- `eval.json`: the `sae eval` result (L0, FVU, feature densities)'] : []),
    ...(o.splice ? ['- `splice-eval.json`: `sae splice-eval`, the model run with the reconstruction spliced in at the hook'] : []),
    '',
    '## Training',
    '',
    ...trained,
    '',
  ].join('\n');
}
