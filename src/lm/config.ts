import { UserError } from '../util/errors.js';

/**
 * The host LM's architecture, read from a Hugging Face `config.json` (issue 8). Two families, as
 * Hugging Face defines them: GPT-2 (learned positions, Conv1D weights, tied unembedding) and
 * GPT-NeoX / Pythia (rotary on part of each head, parallel or sequential residual, untied
 * unembedding, vocabulary padded beyond the tokenizer's). Fields an older config leaves out take
 * the defaults of Hugging Face's config classes.
 */
export type Family = 'gpt2' | 'gpt_neox';

export const SUPPORTED_MODEL_TYPES: readonly Family[] = ['gpt2', 'gpt_neox'];

export interface LmConfig {
  family: Family;
  nLayers: number;
  dModel: number;
  nHeads: number;
  headDim: number;
  dMlp: number;
  /** rows of the embedding and unembedding (may exceed the tokenizer's vocabulary) */
  vocab: number;
  /** longest context the model takes */
  nPositions: number;
  lnEps: number;
  /** 'tanh' = gelu_new (GPT-2), 'erf' = exact gelu (GPT-NeoX) */
  gelu: 'tanh' | 'erf';
  /** learned absolute positions (GPT-2) or rotary on the first rotaryDims of each head (NeoX) */
  rotaryDims: number;
  rotaryBase: number;
  /** x + attn(ln1 x) + mlp(ln2 x) instead of two sequential residual adds (no resid_mid then) */
  parallelResidual: boolean;
  tiedUnembed: boolean;
  bosTokenId: number | null;
  eosTokenId: number | null;
}

function bad(file: string, msg: string): never {
  throw new UserError(`${file}: ${msg}`);
}

function int(cfg: Record<string, unknown>, file: string, keys: string[], fallback?: number): number {
  for (const k of keys) {
    const v = cfg[k];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) bad(file, `${k} must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  }
  if (fallback === undefined) bad(file, `missing ${keys[0]}`);
  return fallback;
}

function num(cfg: Record<string, unknown>, file: string, key: string, fallback: number): number {
  const v = cfg[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) bad(file, `${key} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

function bool(cfg: Record<string, unknown>, file: string, key: string, fallback: boolean): boolean {
  const v = cfg[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') bad(file, `${key} must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

function tokenId(cfg: Record<string, unknown>, key: string): number | null {
  const v = cfg[key];
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : null;
}

function geluKind(file: string, key: string, v: unknown): 'tanh' | 'erf' {
  // Hugging Face's ACT2FN names: gelu is the exact erf form; gelu_new / gelu_pytorch_tanh the tanh one
  if (v === 'gelu') return 'erf';
  if (v === 'gelu_new' || v === 'gelu_pytorch_tanh' || v === 'gelu_fast') return 'tanh';
  bad(file, `${key} ${JSON.stringify(v)} is not supported (gelu, gelu_new, gelu_pytorch_tanh)`);
}

/** Parse and validate a config.json object; `file` names it in errors. */
export function parseLmConfig(raw: unknown, file = 'config.json'): LmConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad(file, 'must hold a JSON object');
  const cfg = raw as Record<string, unknown>;
  const type = cfg.model_type;
  if (type === 'gpt2') return gpt2(cfg, file);
  if (type === 'gpt_neox') return neox(cfg, file);
  bad(file, `model_type ${JSON.stringify(type)} is not supported (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
}

// Defaults: transformers' GPT2Config.
function gpt2(cfg: Record<string, unknown>, file: string): LmConfig {
  const dModel = int(cfg, file, ['n_embd'], 768);
  const nHeads = int(cfg, file, ['n_head'], 12);
  if (dModel % nHeads) bad(file, `n_embd ${dModel} is not divisible by n_head ${nHeads}`);
  if (!bool(cfg, file, 'scale_attn_weights', true)) bad(file, 'scale_attn_weights false is not supported');
  if (bool(cfg, file, 'scale_attn_by_inverse_layer_idx', false)) bad(file, 'scale_attn_by_inverse_layer_idx is not supported');
  return {
    family: 'gpt2',
    nLayers: int(cfg, file, ['n_layer'], 12),
    dModel,
    nHeads,
    headDim: dModel / nHeads,
    dMlp: int(cfg, file, ['n_inner'], 4 * dModel),
    vocab: int(cfg, file, ['vocab_size'], 50257),
    nPositions: int(cfg, file, ['n_positions', 'n_ctx'], 1024),
    lnEps: num(cfg, file, 'layer_norm_epsilon', 1e-5),
    gelu: geluKind(file, 'activation_function', cfg.activation_function ?? 'gelu_new'),
    rotaryDims: 0,
    rotaryBase: 0,
    parallelResidual: false,
    tiedUnembed: bool(cfg, file, 'tie_word_embeddings', true),
    bosTokenId: tokenId(cfg, 'bos_token_id') ?? 50256,
    eosTokenId: tokenId(cfg, 'eos_token_id') ?? 50256,
  };
}

// Defaults: transformers' GPTNeoXConfig. Newer configs put rotary settings under rope_parameters.
function neox(cfg: Record<string, unknown>, file: string): LmConfig {
  const dModel = int(cfg, file, ['hidden_size'], 6144);
  const nHeads = int(cfg, file, ['num_attention_heads'], 64);
  if (dModel % nHeads) bad(file, `hidden_size ${dModel} is not divisible by num_attention_heads ${nHeads}`);
  const headDim = dModel / nHeads;
  const rope = (typeof cfg.rope_parameters === 'object' && cfg.rope_parameters !== null ? cfg.rope_parameters : {}) as Record<string, unknown>;
  const ropeType = rope.rope_type ?? rope.type ?? 'default';
  if (ropeType !== 'default') bad(file, `rope_parameters.rope_type ${JSON.stringify(ropeType)} is not supported (default)`);
  if (cfg.rope_scaling !== undefined && cfg.rope_scaling !== null) bad(file, 'rope_scaling is not supported');
  const pct = num(rope, file, 'partial_rotary_factor', num(cfg, file, 'partial_rotary_factor', num(cfg, file, 'rotary_pct', 0.25)));
  const base = num(rope, file, 'rope_theta', num(cfg, file, 'rope_theta', num(cfg, file, 'rotary_emb_base', 10000)));
  if (!(pct > 0 && pct <= 1)) bad(file, `rotary_pct must be in (0, 1], got ${pct}`);
  if (!(base > 0)) bad(file, `rotary base must be > 0, got ${base}`);
  // transformers: rotary_ndims = int(head_size * rotary_pct)
  const rotaryDims = Math.floor(headDim * pct);
  if (rotaryDims % 2) bad(file, `rotary dims ${rotaryDims} (head ${headDim} × ${pct}) must be even`);
  if (cfg.attention_bias === false) bad(file, 'attention_bias false is not supported');
  return {
    family: 'gpt_neox',
    nLayers: int(cfg, file, ['num_hidden_layers'], 44),
    dModel,
    nHeads,
    headDim,
    dMlp: int(cfg, file, ['intermediate_size'], 24576),
    vocab: int(cfg, file, ['vocab_size'], 50432),
    nPositions: int(cfg, file, ['max_position_embeddings'], 2048),
    lnEps: num(cfg, file, 'layer_norm_eps', 1e-5),
    gelu: geluKind(file, 'hidden_act', cfg.hidden_act ?? 'gelu'),
    rotaryDims,
    rotaryBase: base,
    parallelResidual: bool(cfg, file, 'use_parallel_residual', true),
    tiedUnembed: bool(cfg, file, 'tie_word_embeddings', false),
    bosTokenId: tokenId(cfg, 'bos_token_id') ?? 0,
    eosTokenId: tokenId(cfg, 'eos_token_id') ?? 0,
  };
}
