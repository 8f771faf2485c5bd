import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkOutFile,
  checkReportOutputs,
  DEMO_MARKER,
  FEATURE_COLUMNS,
  folderWriters,
  marksOf,
  MODEL_RUN_MARK,
  ownsFile,
  ownsFolder,
  refuseOtherWriter,
  REPORT_HTML_TAG,
  SPLICE_SCHEMA,
  tagSvg,
} from '../src/store/outputs.js';
import { ShardWriter } from '../src/store/shard-writer.js';
import { MANIFEST, type ShardMeta } from '../src/store/shard-format.js';
import { writeSafetensors } from '../src/util/safetensors.js';

// Issue 17: the one table of who wrote which output, read as its specification. A command
// replaces only what it recognisably wrote; another command's output needs that command's --force.
let root: string;
let n = 0;
const fresh = async (files: Record<string, string> = {}, dirs: string[] = []): Promise<string> => {
  const d = path.join(root, `d${n++}`);
  await fs.mkdir(d, { recursive: true });
  for (const sub of dirs) await fs.mkdir(path.join(d, sub), { recursive: true });
  for (const [name, text] of Object.entries(files)) await fs.writeFile(path.join(d, name), text);
  return d;
};

const meta: ShardMeta = {
  model: 'gpt2',
  revision: 'main',
  hook: 'blocks.6.hook_resid_pre',
  d: 4,
  ctx: 8,
  dtype: 'float32',
  preprocessing: 'none',
  tokenizer: 'gpt2',
  dataset: 'test',
  extras: {},
};
const manifest = (m: ShardMeta) => JSON.stringify({ rows: 0, shards: [], meta: m });
const writers = async (dir: string) => (await folderWriters(dir)).map((w) => `${w.writer} ${w.evidence}`);

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-outputs-'));
});
afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('folders of activation shards: who wrote them', () => {
  it('an empty folder has no writer', async () => {
    expect(await writers(await fresh())).toEqual([]);
  });

  it('harvest.json marks a harvest', async () => {
    expect(await writers(await fresh({ 'harvest.json': '{}' }))).toEqual(['harvest harvest.json']);
  });

  it('shuffle-work/ marks a shuffle', async () => {
    expect(await writers(await fresh({}, ['shuffle-work']))).toEqual(['shuffle shuffle-work/']);
  });

  it('synth.json and dictionary.safetensors mark sae synth', async () => {
    expect(await writers(await fresh({ 'synth.json': '{}', 'dictionary.safetensors': '' }))).toEqual(['synth synth.json', 'synth dictionary.safetensors']);
  });

  it("shards whose metadata carries shuffle.seed are a shuffle's", async () => {
    const d = await fresh({ [MANIFEST]: manifest({ ...meta, extras: { 'shuffle.seed': '0' } }) });
    expect(await writers(d)).toEqual([`shuffle ${MANIFEST}`]);
  });

  it('shards of the synthetic model are sae synth’s, unless shuffled', async () => {
    expect(await writers(await fresh({ [MANIFEST]: manifest({ ...meta, model: 'synthetic' }) }))).toEqual([`synth ${MANIFEST}`]);
    expect(await writers(await fresh({ [MANIFEST]: manifest({ ...meta, model: 'synthetic', extras: { 'shuffle.seed': '1' } }) }))).toEqual([`shuffle ${MANIFEST}`]);
  });

  it("any other shards are a harvest's", async () => {
    expect(await writers(await fresh({ [MANIFEST]: manifest(meta) }))).toEqual([`harvest ${MANIFEST}`]);
  });

  it('without a manifest, the first shard’s own metadata says whose', async () => {
    const d = await fresh();
    const w = await ShardWriter.create(d, { ...meta, model: 'synthetic' }, { rowsPerShard: 2 });
    await w.append(new Float32Array(4 * 4), 4, new Int32Array(4), new Int32Array(4), new Int32Array(4));
    await w.close();
    await fs.rm(path.join(d, MANIFEST));
    expect(await writers(d)).toEqual(['synth shard-00000.parquet']);
  });

  it('a manifest or shard that cannot be read is of unknown origin', async () => {
    expect(await writers(await fresh({ [MANIFEST]: 'not json' }))).toEqual([`other ${MANIFEST}`]);
    expect(await writers(await fresh({ 'shard-00000.parquet': 'not parquet' }))).toEqual(['other shard-00000.parquet']);
  });

  it('marks come first, then what the shards say', async () => {
    const d = await fresh({ 'harvest.json': '{}', [MANIFEST]: manifest({ ...meta, model: 'synthetic' }) });
    expect(await writers(d)).toEqual(['harvest harvest.json', `synth ${MANIFEST}`]);
  });

  it('a harvest clears what shuffle and synth keep beside their shards', () => {
    expect(marksOf('shuffle', 'synth')).toEqual(['shuffle-work', 'synth.json', 'dictionary.safetensors']);
  });
});

describe('refusing another command’s shards, whatever --force says', () => {
  it('a folder with only the command’s own output passes', async () => {
    await expect(refuseOtherWriter(await fresh({ 'harvest.json': '{}', [MANIFEST]: manifest(meta) }), 'harvest')).resolves.toBeUndefined();
  });

  it('names what is there and the command whose --force may replace it', async () => {
    const d = await fresh({ 'harvest.json': '{}' });
    await expect(refuseOtherWriter(d, 'synth')).rejects.toThrow(`--out ${d} holds a harvest (harvest.json), which only sae harvest --force may replace; choose another --out`);
  });

  it('says so of a shuffle’s scratch, under the caller’s flag', async () => {
    const d = await fresh({}, ['shuffle-work']);
    await expect(refuseOtherWriter(d, 'harvest', '--hook folder')).rejects.toThrow(`--hook folder ${d} holds a shuffle's output (shuffle-work/), which only sae shuffle --force may replace; choose another --hook folder`);
  });

  it('shards of unknown origin are replaced by no command', async () => {
    const d = await fresh({ [MANIFEST]: '{' });
    await expect(refuseOtherWriter(d, 'synth')).rejects.toThrow(`--out ${d} holds activation shards of unknown origin (${MANIFEST}), which sae does not replace; choose another --out`);
  });
});

describe('folders of their own: train, export, demo', () => {
  it("a run's checkpoint/ and final/ are its when they hold cfg.json", async () => {
    const d = await fresh({ 'checkpoint/cfg.json': '{}' }, ['checkpoint', 'final']);
    expect(await ownsFile('train', path.join(d, 'checkpoint'))).toBe(true);
    expect(await ownsFile('train', path.join(d, 'final'))).toBe(false);
  });

  it("a run's metrics.jsonl is its when every line is JSON, summary.json when it is JSON", async () => {
    const d = await fresh({ 'metrics.jsonl': '{"step":1}\n\n{"step":2}\n', 'summary.json': 'notes' });
    expect(await ownsFile('train', path.join(d, 'metrics.jsonl'))).toBe(true);
    expect(await ownsFile('train', path.join(d, 'summary.json'))).toBe(false);
  });

  it('a run owns no other name, and no file where it writes a folder', async () => {
    const d = await fresh({ 'notes.json': '{}', final: '{}' });
    expect(await ownsFile('train', path.join(d, 'notes.json'))).toBe(false);
    expect(await ownsFile('train', path.join(d, 'final'))).toBe(false);
  });

  it('an exported checkpoint has cfg.json and sae.safetensors but no training state', () => {
    expect(ownsFolder('export', ['cfg.json', 'sae.safetensors'])).toBe(true);
    expect(ownsFolder('export', ['cfg.json', 'sae.safetensors', 'state.json'])).toBe(false);
    expect(ownsFolder('export', ['cfg.json'])).toBe(false);
  });

  it("the demo's folder carries its marker", () => {
    expect(ownsFolder('demo', [DEMO_MARKER, 'runs'])).toBe(true);
    expect(ownsFolder('demo', ['runs'])).toBe(false);
  });
});

describe('files: model run --save, splice-eval --out, eval --features-out, report', () => {
  it('a --save is a safetensors file with the model run mark in its metadata', async () => {
    const d = await fresh();
    const t = { x: { dtype: 'F32' as const, shape: [1], data: new Float32Array(1) } };
    await writeSafetensors(path.join(d, 'ours.safetensors'), t, { model: 'gpt2', ...MODEL_RUN_MARK });
    await writeSafetensors(path.join(d, 'theirs.safetensors'), t, { model: 'gpt2' });
    expect(await ownsFile('model run', path.join(d, 'ours.safetensors'))).toBe(true);
    expect(await ownsFile('model run', path.join(d, 'theirs.safetensors'))).toBe(false);
  });

  it('a splice-eval --out is JSON whose schema is sae-splice/1', async () => {
    const d = await fresh({ 'a.json': JSON.stringify({ schema: SPLICE_SCHEMA }), 'b.json': JSON.stringify({ schema: 'other' }) });
    expect(await ownsFile('splice-eval', path.join(d, 'a.json'))).toBe(true);
    expect(await ownsFile('splice-eval', path.join(d, 'b.json'))).toBe(false);
  });

  it('a feature table is a CSV whose header is exactly its columns', async () => {
    const d = await fresh({ 'a.csv': FEATURE_COLUMNS.join(',') + '\r\n0,1\n', 'b.csv': 'feature,rank\n' });
    expect(await ownsFile('eval', path.join(d, 'a.csv'))).toBe(true);
    expect(await ownsFile('eval', path.join(d, 'b.csv'))).toBe(false);
  });

  it("report.html carries the generator tag in its head, each SVG on its root element", async () => {
    const d = await fresh({
      'report.html': `<html><head>${REPORT_HTML_TAG}</head></html>`,
      'late.html': `<html><head></head><body>${REPORT_HTML_TAG}</body></html>`,
      'a.svg': tagSvg('<svg width="1"></svg>'),
      'b.svg': '<svg width="1"><g data-generator="sae report"/></svg>',
    });
    expect(await ownsFile('report', path.join(d, 'report.html'))).toBe(true);
    expect(await ownsFile('report', path.join(d, 'late.html'))).toBe(false);
    expect(await ownsFile('report', path.join(d, 'a.svg'))).toBe(true);
    expect(await ownsFile('report', path.join(d, 'b.svg'))).toBe(false);
  });
});

describe('checking an output file before writing it', () => {
  it('an absent file in an existing folder may be written', async () => {
    await expect(checkOutFile(path.join(await fresh(), 'x.json'), '--out', 'splice-eval', false)).resolves.toBeUndefined();
  });

  it('an earlier output of the same command is replaced without --force', async () => {
    const d = await fresh({ 'x.json': JSON.stringify({ schema: SPLICE_SCHEMA }) });
    await expect(checkOutFile(path.join(d, 'x.json'), '--out', 'splice-eval', false)).resolves.toBeUndefined();
  });

  it("anything else needs --force", async () => {
    const f = path.join(await fresh({ 'x.json': '{"precious":true}' }), 'x.json');
    await expect(checkOutFile(f, '--out', 'splice-eval', false)).rejects.toThrow(`--out ${f} exists and is not an earlier output of this command; add --force to replace it`);
    await expect(checkOutFile(f, '--out', 'splice-eval', true)).resolves.toBeUndefined();
  });

  it('a folder in its place, or a missing folder around it, is refused even with --force', async () => {
    const d = await fresh({}, ['x.json']);
    await expect(checkOutFile(path.join(d, 'x.json'), '--save', 'model run', true)).rejects.toThrow('is a folder; give a file name');
    await expect(checkOutFile(path.join(d, 'no', 'x.json'), '--save', 'model run', true)).rejects.toThrow('its folder does not exist');
  });

  it("a report's files that it did not write need --force, named in one line", async () => {
    const d = await fresh({ 'report.html': '<html></html>', 'a.svg': '<svg></svg>', 'b.svg': tagSvg('<svg></svg>') });
    await expect(checkReportOutputs(d, ['a.svg', 'b.svg', 'report.html', 'c.svg'], false)).rejects.toThrow(
      `--out ${d}: a.svg, report.html exist there and were not written by sae report; choose another --out, or add --force to replace them`,
    );
    await expect(checkReportOutputs(d, ['a.svg', 'report.html'], true)).resolves.toBeUndefined();
  });

  it("a folder where the report writes a file is refused even with --force", async () => {
    const d = await fresh({}, ['report.html']);
    await expect(checkReportOutputs(d, ['report.html'], true)).rejects.toThrow('report.html is a directory, where the report writes a file');
  });
});
