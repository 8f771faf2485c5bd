import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { UserError } from '../util/errors.js';

/**
 * The host model's tokenizer, built from its folder's `tokenizer.json` by `@huggingface/tokenizers`
 * (pure TypeScript; why this library and not the Rust binding: docs/tokenizer.md).
 */
export interface LmTokenizer {
  /**
   * The ids of `text`, with no BOS/EOS or other template tokens added (harvest prepends BOS
   * itself). Special tokens written literally in the text (`<|endoftext|>`) become their ids, as
   * with Hugging Face's tokenizers, so corpora tokenize the way the Python tools tokenize them.
   */
  encode(text: string): Int32Array;
  /** The text of `ids`, special tokens included and spaces left as they are: decode(encode(t)) = t. */
  decode(ids: ArrayLike<number>): string;
  readonly bosId: number;
  readonly eosId: number;
  /**
   * One more than the largest id the tokenizer can emit (added tokens included). The model's
   * embedding may have more rows (Pythia pads its vocabulary to a multiple of 128).
   */
  readonly vocabSize: number;
  /** Hex sha256 of tokenizer.json's bytes: shards record it so ids from another tokenizer are caught. */
  readonly digest: string;
}

// The library has these three; given another type (Rust's WordLevel, a typo) it guesses a model
// from the fields present instead of failing, which would tokenize silently wrong.
const MODEL_TYPES = ['BPE', 'WordPiece', 'Unigram'];

/**
 * Loads the tokenizer of a Hugging Face model folder. BOS and EOS ids are resolved per id, first
 * source that has it wins:
 *   1. `config.json` `bos_token_id` / `eos_token_id` (the model's own; the first of a list),
 *   2. `tokenizer_config.json` `bos_token` / `eos_token` (a string or `{content}`), looked up in
 *      the vocabulary,
 *   3. `special_tokens_map.json`, the same way.
 * GPT-2 gets 50256 for both, Pythia 0.
 */
export async function loadTokenizer(folder: string): Promise<LmTokenizer> {
  const stat = await fs.stat(folder).catch(() => null);
  if (!stat?.isDirectory()) throw new UserError(`tokenizer folder ${folder} does not exist or is not a folder`);
  const file = path.join(folder, 'tokenizer.json');
  const bytes = await fs.readFile(file).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') throw new UserError(`no tokenizer.json in ${folder}`);
    throw new UserError(`cannot read ${file}: ${e.message}`);
  });
  const spec = parseJson(bytes.toString('utf8'), file);
  if (!isObject(spec) || !isObject(spec.model)) throw new UserError(`${file} has no "model": not a Hugging Face tokenizer.json`);
  const type = spec.model.type;
  if (typeof type !== 'string' || !MODEL_TYPES.includes(type)) {
    throw new UserError(`${file}: unsupported tokenizer model type ${JSON.stringify(type ?? null)} (supported: ${MODEL_TYPES.join(', ')})`);
  }

  const config = await readOptionalJson(path.join(folder, 'config.json'));
  const tokenizerConfig = await readOptionalJson(path.join(folder, 'tokenizer_config.json'));
  const specialTokensMap = await readOptionalJson(path.join(folder, 'special_tokens_map.json'));

  let tok: Tokenizer;
  try {
    // Only eos_token goes to the library (its Unigram lattice uses it). The other
    // tokenizer_config.json fields it reads (remove_space, do_lowercase_and_remove_accent) belong
    // to transformers' slow tokenizers and would make us differ from what tokenizer.json defines.
    const eos = tokenString(tokenizerConfig?.eos_token);
    tok = new Tokenizer(spec, eos === undefined ? {} : { eos_token: eos });
  } catch (e) {
    throw new UserError(`${file}: the tokenizer cannot be built: ${oneLine(e)}`);
  }

  let vocabSize = 0;
  for (const id of tok.get_vocab(true).values()) vocabSize = Math.max(vocabSize, id + 1);

  const resolve = (which: 'bos' | 'eos'): number => {
    const sources: [string, unknown][] = [
      ['config.json', config?.[`${which}_token_id`]],
      ['tokenizer_config.json', tokenizerConfig?.[`${which}_token`]],
      ['special_tokens_map.json', specialTokensMap?.[`${which}_token`]],
    ];
    for (const [name, value] of sources) {
      if (value === undefined || value === null) continue;
      const where = path.join(folder, name);
      if (name === 'config.json') {
        const id = firstId(value);
        if (id === undefined) throw new UserError(`${where}: ${which}_token_id ${JSON.stringify(value)} is not a token id`);
        if (id >= vocabSize) throw new UserError(`${where}: ${which}_token_id ${id} is outside the tokenizer's ${vocabSize} ids`);
        return id;
      }
      const token = tokenString(value);
      const id = token === undefined ? undefined : tok.token_to_id(token);
      if (id === undefined) throw new UserError(`${where}: ${which}_token ${JSON.stringify(value)} is not in the tokenizer's vocabulary`);
      return id;
    }
    throw new UserError(
      `no ${which.toUpperCase()} token for ${folder}: none of config.json (${which}_token_id), tokenizer_config.json or special_tokens_map.json (${which}_token) names one`,
    );
  };
  const bosId = resolve('bos');
  const eosId = resolve('eos');
  const digest = createHash('sha256').update(bytes).digest('hex');

  return {
    bosId,
    eosId,
    vocabSize,
    digest,
    encode(text: string): Int32Array {
      return Int32Array.from(tok.encode(text, { add_special_tokens: false }).ids);
    },
    decode(ids: ArrayLike<number>): string {
      const list = Array.from(ids);
      // the library maps an unknown id to nothing (or, for -1, to the last token) without a word
      for (const id of list) {
        if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw new RangeError(`token id ${id} is outside 0..${vocabSize - 1}`);
      }
      // it also refuses an empty list, whose text is plainly ''
      if (list.length === 0) return '';
      return tok.decode(list, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
    },
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UserError(`${file} is not valid JSON: ${oneLine(e)}`);
  }
}

/** A config file a folder may lack; present but broken is an error, not a silent fallback. */
async function readOptionalJson(file: string): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new UserError(`cannot read ${file}: ${oneLine(e)}`);
  }
  const v = parseJson(text, file);
  if (!isObject(v)) throw new UserError(`${file} is not a JSON object`);
  return v;
}

// tokenizer_config.json writes a token as its string or as a serialized AddedToken {content, ...}
function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

// Some configs list several EOS ids (any of them ends generation); the first is the model's own.
function firstId(v: unknown): number | undefined {
  const id = Array.isArray(v) ? v[0] : v;
  return Number.isInteger(id) && (id as number) >= 0 ? (id as number) : undefined;
}

function oneLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).replace(/\s*\n\s*/g, ' ');
}
