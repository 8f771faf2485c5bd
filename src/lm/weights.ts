import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { UserError } from '../util/errors.js';
import type { LmConfig } from './config.js';
import { openSafetensors, type OpenSafetensors } from '../util/safetensors.js';
import { toFloat32, type RawTensor } from './tensors.js';
import { readTorchBin } from './torch-bin.js';

/**
 * The host LM's weights as the forward uses them: float32, Hugging Face's own values (no folding
 * or centring, so activations are the checkpoint's hidden states), each matrix with the layout
 * the checkpoint stores it in. Loading is strict: every expected tensor present with the shape
 * the config implies, nothing unexpected besides the buffers checkpoints are known to carry, so
 * a model of another layout cannot load quietly.
 */
export interface Linear {
  /** k×m ('in_out', GPT-2 Conv1D) or m×k ('out_in', nn.Linear) */
  W: Float32Array;
  layout: 'in_out' | 'out_in';
  bias: Float32Array;
  /** inputs */
  k: number;
  /** outputs */
  m: number;
}

export interface LayerNormWeights {
  w: Float32Array;
  b: Float32Array;
}

export interface BlockWeights {
  ln1: LayerNormWeights;
  ln2: LayerNormWeights;
  /** fused q, k, v projection [d → 3d] */
  qkv: Linear;
  attnOut: Linear;
  mlpIn: Linear;
  mlpOut: Linear;
}

export interface ModelWeights {
  /** V×d token embedding */
  embed: Float32Array;
  /** P×d learned positions (GPT-2), null with rotary */
  pos: Float32Array | null;
  blocks: BlockWeights[];
  lnFinal: LayerNormWeights;
  /** V×d unembedding, applied as x @ Wᵀ (the embedding itself when tied) */
  unembed: Float32Array;
}

/** Buffers checkpoints carry that are not parameters: causal masks (F32 or BOOL), masked_bias, inv_freq. */
const BUFFERS = [/^(h|layers)\.\d+\.(attn|attention)\.(bias|masked_bias)$/, /^layers\.\d+\.attention\.rotary_emb\.inv_freq$/];

/** Where a folder's tensors are, by name (without the transformer. / gpt_neox. prefix). */
interface TensorSource {
  names: string[];
  read(name: string): Promise<RawTensor>;
  close(): Promise<void>;
}

/** Strip the body prefix a *ForCausalLM checkpoint puts on its body's parameters. */
export function canonicalName(name: string): string {
  return name.replace(/^(transformer|gpt_neox)\./, '');
}

async function exists(p: string): Promise<boolean> {
  return !!(await fs.stat(p).catch(() => null));
}

/** Open the weights of a model folder: model.safetensors, a sharded index, or (refused) pickles only. */
export async function openWeights(dir: string): Promise<TensorSource> {
  const single = path.join(dir, 'model.safetensors');
  const index = path.join(dir, 'model.safetensors.index.json');
  let files: OpenSafetensors[];
  if (await exists(single)) {
    files = [await openSafetensors(single)];
  } else if (await exists(index)) {
    const { map, shards } = await indexShards(index);
    files = [];
    for (const s of shards) files.push(await openSafetensors(path.join(dir, s)));
    for (const [name, s] of Object.entries(map)) {
      if (!files[shards.indexOf(s)].entries.has(name)) throw new UserError(`${index}: lists ${name} in ${s}, which does not hold it`);
    }
  } else if (await exists(path.join(dir, 'pytorch_model.bin'))) {
    return openTorchBin(dir, ['pytorch_model.bin']);
  } else if (await exists(path.join(dir, 'pytorch_model.bin.index.json'))) {
    return openTorchBin(dir, (await indexShards(path.join(dir, 'pytorch_model.bin.index.json'))).shards);
  } else {
    throw new UserError(`${dir}: no weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin or its index)`);
  }
  const owner = new Map<string, OpenSafetensors>();
  for (const f of files) {
    for (const name of f.entries.keys()) {
      const c = canonicalName(name);
      if (owner.has(c)) throw new UserError(`${f.file}: tensor ${c} appears twice`);
      owner.set(c, f);
    }
  }
  const original = new Map<string, string>();
  for (const f of files) for (const name of f.entries.keys()) original.set(canonicalName(name), name);
  return {
    names: [...owner.keys()],
    read: (c) => owner.get(c)!.read(original.get(c)!),
    close: async () => {
      for (const f of files) await f.close();
    },
  };
}

/**
 * pytorch_model.bin (or its shards) is a zip of pickles: read through the restricted reader, which
 * understands torch's storage layout and refuses every other global, so nothing is ever executed.
 */
async function openTorchBin(dir: string, files: string[]): Promise<TensorSource> {
  const byCanon = new Map<string, RawTensor>();
  for (const f of files) {
    for (const [n, t] of Object.entries(await readTorchBin(path.join(dir, f)))) {
      const c = canonicalName(n);
      if (byCanon.has(c)) throw new UserError(`${path.join(dir, f)}: tensor ${c} appears twice`);
      byCanon.set(c, t);
    }
  }
  return { names: [...byCanon.keys()], read: async (c) => byCanon.get(c)!, close: async () => undefined };
}

/** Shard file names of a Hugging Face index (model.safetensors.index.json, pytorch_model.bin.index.json). */
async function indexShards(index: string): Promise<{ map: Record<string, string>; shards: string[] }> {
  let map: Record<string, string>;
  try {
    map = (JSON.parse(await fs.readFile(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map;
  } catch {
    throw new UserError(`${index}: not a valid weight index (no weight_map)`);
  }
  if (typeof map !== 'object' || map === null) throw new UserError(`${index}: not a valid weight index (no weight_map)`);
  const shards = [...new Set(Object.values(map))].sort();
  for (const s of shards) if (typeof s !== 'string' || s.includes('/') || s.includes('\\')) throw new UserError(`${index}: malformed shard name ${JSON.stringify(s)}`);
  return { map, shards };
}

/** Which tensors a family needs, with their shapes, in Hugging Face's names (prefix stripped). */
function expected(cfg: LmConfig): Map<string, number[]> {
  const { dModel: d, dMlp: f, vocab: V, nPositions: P } = cfg;
  const e = new Map<string, number[]>();
  if (cfg.family === 'gpt2') {
    e.set('wte.weight', [V, d]);
    e.set('wpe.weight', [P, d]);
    for (let i = 0; i < cfg.nLayers; i++) {
      const p = `h.${i}.`;
      for (const ln of ['ln_1', 'ln_2']) {
        e.set(`${p}${ln}.weight`, [d]);
        e.set(`${p}${ln}.bias`, [d]);
      }
      // Conv1D stores [in, out]
      e.set(`${p}attn.c_attn.weight`, [d, 3 * d]);
      e.set(`${p}attn.c_attn.bias`, [3 * d]);
      e.set(`${p}attn.c_proj.weight`, [d, d]);
      e.set(`${p}attn.c_proj.bias`, [d]);
      e.set(`${p}mlp.c_fc.weight`, [d, f]);
      e.set(`${p}mlp.c_fc.bias`, [f]);
      e.set(`${p}mlp.c_proj.weight`, [f, d]);
      e.set(`${p}mlp.c_proj.bias`, [d]);
    }
    e.set('ln_f.weight', [d]);
    e.set('ln_f.bias', [d]);
    if (!cfg.tiedUnembed) e.set('lm_head.weight', [V, d]);
  } else {
    e.set('embed_in.weight', [V, d]);
    for (let i = 0; i < cfg.nLayers; i++) {
      const p = `layers.${i}.`;
      for (const ln of ['input_layernorm', 'post_attention_layernorm']) {
        e.set(`${p}${ln}.weight`, [d]);
        e.set(`${p}${ln}.bias`, [d]);
      }
      // nn.Linear stores [out, in]
      e.set(`${p}attention.query_key_value.weight`, [3 * d, d]);
      e.set(`${p}attention.query_key_value.bias`, [3 * d]);
      e.set(`${p}attention.dense.weight`, [d, d]);
      e.set(`${p}attention.dense.bias`, [d]);
      e.set(`${p}mlp.dense_h_to_4h.weight`, [f, d]);
      e.set(`${p}mlp.dense_h_to_4h.bias`, [f]);
      e.set(`${p}mlp.dense_4h_to_h.weight`, [d, f]);
      e.set(`${p}mlp.dense_4h_to_h.bias`, [d]);
    }
    e.set('final_layer_norm.weight', [d]);
    e.set('final_layer_norm.bias', [d]);
    if (!cfg.tiedUnembed) e.set('embed_out.weight', [V, d]);
  }
  return e;
}

/** Load and check every weight of a model folder for this config. */
export async function loadWeights(dir: string, cfg: LmConfig): Promise<ModelWeights> {
  const src = await openWeights(dir);
  try {
    const want = expected(cfg);
    const have = new Set(src.names);
    // an untied checkpoint may still carry lm_head.weight for a tied GPT-2: it equals wte, ignore it
    const ignorable = (n: string) => BUFFERS.some((re) => re.test(n)) || (cfg.family === 'gpt2' && cfg.tiedUnembed && n === 'lm_head.weight');
    const unexpected = src.names.filter((n) => !want.has(n) && !ignorable(n));
    if (unexpected.length) throw new UserError(`${dir}: unexpected tensor ${unexpected[0]} for a ${cfg.family} model (${unexpected.length} in all): the checkpoint does not match its config.json`);
    for (const name of want.keys()) if (!have.has(name)) throw new UserError(`${dir}: missing tensor ${name} for a ${cfg.family} model with ${cfg.nLayers} layers`);
    const get = async (name: string): Promise<Float32Array> => {
      const t = await src.read(name);
      const shape = want.get(name)!;
      if (t.shape.length !== shape.length || t.shape.some((s, i) => s !== shape[i])) {
        throw new UserError(`${dir}: tensor ${name} has shape ${JSON.stringify(t.shape)}, the config implies ${JSON.stringify(shape)}`);
      }
      return toFloat32(t, `${dir}: ${name}`);
    };
    const lin = async (w: string, b: string, k: number, m: number, layout: 'in_out' | 'out_in'): Promise<Linear> => ({ W: await get(w), bias: await get(b), layout, k, m });
    const ln = async (p: string): Promise<LayerNormWeights> => ({ w: await get(`${p}.weight`), b: await get(`${p}.bias`) });
    const { dModel: d, dMlp: f } = cfg;
    const blocks: BlockWeights[] = [];
    if (cfg.family === 'gpt2') {
      for (let i = 0; i < cfg.nLayers; i++) {
        const p = `h.${i}.`;
        blocks.push({
          ln1: await ln(`${p}ln_1`),
          ln2: await ln(`${p}ln_2`),
          qkv: await lin(`${p}attn.c_attn.weight`, `${p}attn.c_attn.bias`, d, 3 * d, 'in_out'),
          attnOut: await lin(`${p}attn.c_proj.weight`, `${p}attn.c_proj.bias`, d, d, 'in_out'),
          mlpIn: await lin(`${p}mlp.c_fc.weight`, `${p}mlp.c_fc.bias`, d, f, 'in_out'),
          mlpOut: await lin(`${p}mlp.c_proj.weight`, `${p}mlp.c_proj.bias`, f, d, 'in_out'),
        });
      }
      const embed = await get('wte.weight');
      return { embed, pos: await get('wpe.weight'), blocks, lnFinal: await ln('ln_f'), unembed: cfg.tiedUnembed ? embed : await get('lm_head.weight') };
    }
    for (let i = 0; i < cfg.nLayers; i++) {
      const p = `layers.${i}.`;
      blocks.push({
        ln1: await ln(`${p}input_layernorm`),
        ln2: await ln(`${p}post_attention_layernorm`),
        qkv: await lin(`${p}attention.query_key_value.weight`, `${p}attention.query_key_value.bias`, d, 3 * d, 'out_in'),
        attnOut: await lin(`${p}attention.dense.weight`, `${p}attention.dense.bias`, d, d, 'out_in'),
        mlpIn: await lin(`${p}mlp.dense_h_to_4h.weight`, `${p}mlp.dense_h_to_4h.bias`, d, f, 'out_in'),
        mlpOut: await lin(`${p}mlp.dense_4h_to_h.weight`, `${p}mlp.dense_4h_to_h.bias`, f, d, 'out_in'),
      });
    }
    const embed = await get('embed_in.weight');
    return { embed, pos: null, blocks, lnFinal: await ln('final_layer_norm'), unembed: cfg.tiedUnembed ? embed : await get('embed_out.weight') };
  } finally {
    await src.close();
  }
}
