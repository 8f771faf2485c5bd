import { execFile, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { promisify } from 'node:util';
import { FakeHub } from './fake-hub.js';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HookedTransformer } from '../src/lm/model.js';
import { parseLmConfig } from '../src/lm/config.js';
import { UserError } from '../src/util/errors.js';
import { readSafetensors } from '../src/util/safetensors.js';
import type { RawTensor } from '../src/lm/tensors.js';
import { copyModelFiles, readRaw, toBf16Bytes, writeRawSafetensors } from './helpers/model-folders.js';

const FIX = path.resolve(__dirname, '..', 'fixtures', 'hf-tiny');
const GPT2 = path.join(FIX, 'gpt2');
const NEOX = path.join(FIX, 'gpt-neox');
const bin = path.resolve(__dirname, '..', 'bin', 'run.js');
const ids = Int32Array.from([464, 627, 624, 275, 305, 675, 277, 78, 15, 325, 171, 156, 369, 365, 17, 739]);
let root: string;
let gpt2Raw: Record<string, RawTensor>;
let neoxRaw: Record<string, RawTensor>;
let gpt2Logits: Float32Array;
let neoxLogits: Float32Array;

async function folder(name: string, from: string, tensors: Record<string, RawTensor>, patchConfig?: (c: Record<string, unknown>) => void): Promise<string> {
  const dir = path.join(root, name);
  await copyModelFiles(from, dir);
  await writeRawSafetensors(path.join(dir, 'model.safetensors'), tensors);
  if (patchConfig) {
    const c = JSON.parse(await fs.readFile(path.join(dir, 'config.json'), 'utf8'));
    patchConfig(c);
    await fs.writeFile(path.join(dir, 'config.json'), JSON.stringify(c));
  }
  return dir;
}

const logitsOf = async (dir: string) => (await HookedTransformer.load(dir)).run(ids, 2, 8, { logits: true }).logits!;

async function loadError(dir: string): Promise<string> {
  try {
    await HookedTransformer.load(dir);
  } catch (e) {
    expect(e).toBeInstanceOf(UserError);
    expect((e as Error).message).not.toContain('\n');
    return (e as Error).message;
  }
  throw new Error('expected the load to fail');
}

function f32(t: RawTensor): Float32Array {
  return new Float32Array(t.bytes.buffer.slice(t.bytes.byteOffset, t.bytes.byteOffset + t.bytes.byteLength));
}

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-lm-'));
  gpt2Raw = await readRaw(path.join(GPT2, 'model.safetensors'));
  neoxRaw = await readRaw(path.join(NEOX, 'model.safetensors'));
  gpt2Logits = await logitsOf(GPT2);
  neoxLogits = await logitsOf(NEOX);
});

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe('checkpoint layouts a real model folder can have', () => {
  it('reads GPT-2 keys with the transformer. prefix', async () => {
    const prefixed = Object.fromEntries(Object.entries(gpt2Raw).map(([n, t]) => [`transformer.${n}`, t]));
    expect(await logitsOf(await folder('prefixed', GPT2, prefixed))).toEqual(gpt2Logits);
  });

  it('reads GPT-NeoX keys without the gpt_neox. prefix', async () => {
    const bare = Object.fromEntries(Object.entries(neoxRaw).map(([n, t]) => [n.replace(/^gpt_neox\./, ''), t]));
    expect(await logitsOf(await folder('bare', NEOX, bare))).toEqual(neoxLogits);
  });

  it('reads a sharded model.safetensors.index.json', async () => {
    const dir = path.join(root, 'sharded');
    await copyModelFiles(GPT2, dir);
    const names = Object.keys(gpt2Raw).sort();
    const half = Math.floor(names.length / 2);
    const shards = [names.slice(0, half), names.slice(half)];
    const weightMap: Record<string, string> = {};
    for (let s = 0; s < 2; s++) {
      const file = `model-0000${s + 1}-of-00002.safetensors`;
      await writeRawSafetensors(path.join(dir, file), Object.fromEntries(shards[s].map((n) => [n, gpt2Raw[n]])));
      for (const n of shards[s]) weightMap[n] = file;
    }
    await fs.writeFile(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    expect(await logitsOf(dir)).toEqual(gpt2Logits);
  });

  for (const [name, from] of [['gpt2', GPT2], ['gpt-neox', NEOX]] as const) {
    it(`reads a ${name} folder with only pytorch_model.bin through the restricted reader`, async () => {
      const dir = path.join(root, `bin-${name}`);
      await copyModelFiles(from, dir);
      await fs.copyFile(path.join(FIX, '..', 'torch-bin', name, 'pytorch_model.bin'), path.join(dir, 'pytorch_model.bin'));
      expect(await logitsOf(dir)).toEqual(name === 'gpt2' ? gpt2Logits : neoxLogits);
    });
  }

  it('widens BF16 weights exactly', async () => {
    const bf = Object.fromEntries(Object.entries(gpt2Raw).map(([n, t]) => [n, { dtype: 'BF16' as const, shape: t.shape, bytes: toBf16Bytes(f32(t)) }]));
    const m = await HookedTransformer.load(await folder('bf16', GPT2, bf));
    const wte = f32(gpt2Raw['wte.weight']);
    const rounded = new Float32Array(wte.length);
    const u = new Uint32Array(rounded.buffer);
    const h = new Uint16Array(toBf16Bytes(wte).buffer);
    for (let i = 0; i < h.length; i++) u[i] = h[i] << 16;
    expect(m.weights.embed).toEqual(rounded);
    // bfloat16 keeps 8 bits of mantissa: the forward moves, but stays close
    const l = m.run(ids, 2, 8, { logits: true }).logits!;
    let worst = 0;
    for (let i = 0; i < l.length; i++) worst = Math.max(worst, Math.abs(l[i] - gpt2Logits[i]));
    expect(worst).toBeGreaterThan(0);
    expect(worst).toBeLessThan(0.5);
  });

  it('skips the buffers checkpoints carry: BOOL and F32 causal masks, masked_bias, inv_freq', async () => {
    const withBuffers = { ...neoxRaw };
    for (let L = 0; L < 3; L++) {
      withBuffers[`gpt_neox.layers.${L}.attention.bias`] = { dtype: 'BOOL', shape: [1, 1, 64, 64], bytes: new Uint8Array(64 * 64).fill(1) };
      withBuffers[`gpt_neox.layers.${L}.attention.masked_bias`] = { dtype: 'F32', shape: [], bytes: new Uint8Array(new Float32Array([-1e9]).buffer) };
      withBuffers[`gpt_neox.layers.${L}.attention.rotary_emb.inv_freq`] = { dtype: 'F32', shape: [2], bytes: new Uint8Array(new Float32Array([1, 0.01]).buffer) };
    }
    expect(await logitsOf(await folder('buffers', NEOX, withBuffers))).toEqual(neoxLogits);
    // the GPT-2 fixture carries F32 masks h.N.attn.bias [1, 1, 64, 64] already
    expect(gpt2Raw['h.0.attn.bias'].shape).toEqual([1, 1, 64, 64]);
  });

  it('reads rotary settings from rope_parameters, as newer GPT-NeoX configs write them', async () => {
    const dir = await folder('rope-params', NEOX, neoxRaw, (c) => {
      delete c.rotary_pct;
      delete c.rotary_emb_base;
      c.rope_parameters = { rope_type: 'default', rope_theta: 10000, partial_rotary_factor: 0.25 };
    });
    expect(await logitsOf(dir)).toEqual(neoxLogits);
  });

  it('fills fields an older GPT-2 config leaves out with Hugging Face’s defaults', () => {
    const c = parseLmConfig({ model_type: 'gpt2', n_embd: 64, n_head: 4, n_layer: 3, n_positions: 64, vocab_size: 769 });
    expect(c).toMatchObject({ dMlp: 256, gelu: 'tanh', tiedUnembed: true, lnEps: 1e-5, bosTokenId: 50256 });
  });
});

describe('a checkpoint that does not fit its config is refused', () => {
  it('a weight with the wrong shape, naming it and both shapes', async () => {
    const t = gpt2Raw['h.1.mlp.c_fc.weight'];
    const bad = { ...gpt2Raw, 'h.1.mlp.c_fc.weight': { ...t, shape: [256, 64] } };
    expect(await loadError(await folder('shape', GPT2, bad))).toMatch(/h\.1\.mlp\.c_fc\.weight has shape \[256,64\], the config implies \[64,256\]/);
  });

  it('a missing weight', async () => {
    const { ['ln_f.bias']: _, ...rest } = gpt2Raw;
    expect(await loadError(await folder('missing', GPT2, rest))).toMatch(/missing tensor ln_f\.bias/);
  });

  it('an unexpected weight (a layer the config does not have)', async () => {
    const extra = { ...gpt2Raw, 'h.3.ln_1.weight': gpt2Raw['h.0.ln_1.weight'] };
    expect(await loadError(await folder('extra', GPT2, extra))).toMatch(/unexpected tensor h\.3\.ln_1\.weight/);
  });

  it('GPT-2 weights under a GPT-NeoX config', async () => {
    expect(await loadError(await folder('mixed', NEOX, gpt2Raw))).toMatch(/unexpected tensor .* for a gpt_neox model/);
  });
});

describe('bad model folders get one line', () => {
  it('no config.json', async () => {
    const dir = path.join(root, 'empty');
    await fs.mkdir(dir);
    expect(await loadError(dir)).toMatch(/no config\.json/);
  });

  it('no weights', async () => {
    const dir = path.join(root, 'noweights');
    await copyModelFiles(GPT2, dir);
    expect(await loadError(dir)).toMatch(/no weights \(model\.safetensors/);
  });

  it('an unsupported model_type, listing the supported ones', async () => {
    expect(await loadError(await folder('llama', GPT2, gpt2Raw, (c) => (c.model_type = 'llama')))).toMatch(/model_type "llama" is not supported \(supported: gpt2, gpt_neox\)/);
  });

  it('a truncated safetensors file', async () => {
    const dir = await folder('trunc', GPT2, gpt2Raw);
    const f = path.join(dir, 'model.safetensors');
    const buf = await fs.readFile(f);
    await fs.writeFile(f, buf.subarray(0, buf.length - 1000));
    expect(await loadError(dir)).toMatch(/beyond the end of the file.*truncated or corrupt/);
  });

  it('a header length beyond the file', async () => {
    const dir = await folder('hdr', GPT2, gpt2Raw);
    const f = path.join(dir, 'model.safetensors');
    const buf = await fs.readFile(f);
    buf.writeBigUInt64LE(BigInt(buf.length), 0);
    await fs.writeFile(f, buf);
    expect(await loadError(dir)).toMatch(/header length .* runs past the end of the file/);
  });

  it('an unknown dtype', async () => {
    const dir = path.join(root, 'dtype');
    await copyModelFiles(GPT2, dir);
    await writeRawSafetensors(path.join(dir, 'model.safetensors'), gpt2Raw, (h) => ((h['ln_f.bias'] as { dtype: string }).dtype = 'F8_E4M3'));
    expect(await loadError(dir)).toMatch(/ln_f\.bias has unknown dtype "F8_E4M3"/);
  });

  it('offsets out of range', async () => {
    const dir = path.join(root, 'offsets');
    await copyModelFiles(GPT2, dir);
    await writeRawSafetensors(path.join(dir, 'model.safetensors'), gpt2Raw, (h) => ((h['ln_f.bias'] as { data_offsets: number[] }).data_offsets = [0, 4]));
    expect(await loadError(dir)).toMatch(/ln_f\.bias has 4 bytes for F32 \[64\]/);
  });

  it('a pickle checkpoint that tries to run code is refused, naming the global', async () => {
    const dir = path.join(root, 'pickle');
    await copyModelFiles(GPT2, dir);
    await fs.copyFile(path.join(FIX, '..', 'torch-bin', 'malicious', 'pytorch_model.bin'), path.join(dir, 'pytorch_model.bin'));
    expect(await loadError(dir)).toMatch(/pytorch_model\.bin.*refusing to load global posix\.system/);
  });
});

describe('bad inputs to a loaded model get one line', () => {
  let m: HookedTransformer;
  beforeAll(async () => {
    m = await HookedTransformer.load(NEOX);
  });
  const err = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      expect(e).toBeInstanceOf(UserError);
      return (e as Error).message;
    }
    throw new Error('expected an error');
  };

  it('a hook layer out of range', () => expect(err(() => m.run(ids, 2, 8, { capture: ['blocks.3.hook_resid_pre'] }))).toMatch(/layer 3 is out of range \(the model has 3 blocks/));
  it('an unknown hook name', () => expect(err(() => m.run(ids, 2, 8, { capture: ['blocks.0.hook_resid'] }))).toMatch(/unknown hook "blocks\.0\.hook_resid"/));
  it('resid_mid of a parallel-residual model', () => expect(err(() => m.run(ids, 2, 8, { capture: ['blocks.0.hook_resid_mid'] }))).toMatch(/parallel-residual model has no resid_mid/));
  it('a token id beyond the vocabulary', () => expect(err(() => m.run(Int32Array.from([1, 832]), 1, 2, { loss: true }))).toMatch(/token id 832 .* outside the vocabulary \(0\.\.831\)/));
  it('a context longer than the positions', () => expect(err(() => m.run(new Int32Array(65), 1, 65, { loss: true }))).toMatch(/65 tokens is longer than the model's 64 positions/));
  it('a replacement of the wrong size', () => expect(err(() => m.run(ids, 2, 8, { replace: { 'blocks.1.hook_resid_pre': new Float32Array(3) }, loss: true }))).toMatch(/replacement for blocks\.1\.hook_resid_pre has 3 values, expected 2×8×64/));
});

describe('sae model info | run', () => {
  const sae = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });

  it('info lists the architecture and every hook', () => {
    const r = sae('model', 'info', NEOX, '--json');
    expect(r.status).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info).toMatchObject({ family: 'gpt_neox', layers: 3, dModel: 64, vocab: 832, positions: 64, residual: 'parallel' });
    expect(info.hooks).toContain('blocks.2.hook_resid_post');
    expect(info.hooks).not.toContain('blocks.0.hook_resid_mid');
  });

  it('run --save writes hooks, logits and losses that match the reference', async () => {
    const ref = (await readSafetensors(path.join(GPT2, 'reference.safetensors'))).tensors;
    const rows = [0, 1].map((b) => Array.from((ref.input_ids.data as BigInt64Array).subarray(b * 16, b * 16 + 16), Number));
    const idsFile = path.join(root, 'ids.json');
    await fs.writeFile(idsFile, JSON.stringify(rows));
    const out = path.join(root, 'run.safetensors');
    const r = sae('model', 'run', GPT2, '--ids-file', idsFile, '--hook', 'blocks.1.hook_resid_pre', '--hook', 'ln_final.hook_normalized', '--save', out, '--json');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).loss).toBeCloseTo((ref.loss.data as Float32Array)[0], 4);
    const saved = (await readSafetensors(out)).tensors;
    for (const name of ['blocks.1.hook_resid_pre', 'ln_final.hook_normalized', 'logits', 'loss_per_token']) {
      const a = saved[name].data as Float32Array;
      const b = ref[name].data as Float32Array;
      expect(saved[name].shape, name).toEqual(ref[name].shape);
      let worst = 0;
      for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
      expect(worst, name).toBeLessThan(1e-4);
    }
  });

  it('bad input: one line, non-zero exit, nothing written', async () => {
    const out = path.join(root, 'never.safetensors');
    for (const args of [
      ['model', 'run', GPT2, '--ids', '1,2,x', '--save', out],
      ['model', 'run', GPT2, '--ids', '1,2,769', '--save', out],
      ['model', 'run', NEOX, '--ids', '1,2', '--hook', 'blocks.0.hook_resid_mid', '--save', out],
      ['model', 'info', path.join(root, 'nowhere')],
    ]) {
      const r = sae(...args);
      expect(r.status, args.join(' ')).not.toBe(0);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr).toMatch(/^sae: error: /);
    }
    await expect(fs.stat(out)).rejects.toThrow();
  });
});

describe('models by Hub id from the command line', () => {
  const run = promisify(execFile);
  const gpt2Tree = Object.fromEntries(readdirSync(GPT2).map((f) => [f, readFileSync(path.join(GPT2, f))]));
  const hub = new FakeHub({ 'openai-community/gpt2': { revisions: { main: gpt2Tree } } }, { gpt2: 'openai-community/gpt2' });
  beforeAll(() => hub.start());
  afterAll(() => hub.stop());

  it('sae model info gpt2 downloads into the Hugging Face cache, then works offline', async () => {
    const env = { ...process.env, HF_HOME: path.join(root, 'hf-home'), HF_ENDPOINT: hub.url, HF_HUB_OFFLINE: '' };
    const first = await run(process.execPath, [bin, 'model', 'info', 'gpt2', '--json'], { env });
    expect(JSON.parse(first.stdout)).toMatchObject({ family: 'gpt2', layers: 3, vocab: 769 });
    const before = hub.requests.length;
    expect(before).toBeGreaterThan(0);
    const second = await run(process.execPath, [bin, 'model', 'info', 'gpt2', '--json'], { env: { ...env, HF_HUB_OFFLINE: '1' } });
    expect(JSON.parse(second.stdout).dir).toMatch(/models--gpt2[\\/]snapshots[\\/]/);
    expect(hub.requests.length).toBe(before);
  });
});
