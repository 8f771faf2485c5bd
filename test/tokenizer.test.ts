import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadTokenizer } from '../src/lm/tokenizer.js';
import { UserError } from '../src/util/errors.js';

const repo = path.join(import.meta.dirname, '..');
const GPT2 = path.join(repo, 'fixtures/tokenizer/gpt2');
const TINY_GPT2 = path.join(repo, 'fixtures/hf-tiny/gpt2');
const TINY_NEOX = path.join(repo, 'fixtures/hf-tiny/gpt-neox');

interface Reference {
  text: string;
  ids: number[];
  ids_with_special: number[];
}
const references = (file: string): Reference[] =>
  readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Reference);

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-tok-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

// A model folder holding the tiny tokenizer (or the given tokenizer.json text) and the given files.
let folders = 0;
async function folderWith(files: Record<string, unknown>, tokenizerJson?: string | null): Promise<string> {
  const dir = path.join(tmp, `f${folders++}`);
  await fs.mkdir(dir);
  if (tokenizerJson !== null) {
    await fs.writeFile(path.join(dir, 'tokenizer.json'), tokenizerJson ?? (await fs.readFile(path.join(TINY_GPT2, 'tokenizer.json'), 'utf8')));
  }
  for (const [name, content] of Object.entries(files)) {
    await fs.writeFile(path.join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
  }
  return dir;
}

function tinySpec(): Record<string, unknown> {
  return JSON.parse(readFileSync(path.join(TINY_GPT2, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
}

async function expectUserError(p: Promise<unknown>, re: RegExp): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UserError);
  expect((err as Error).message).toMatch(re);
  expect((err as Error).message).not.toContain('\n');
}

describe('encode', () => {
  // ids_with_special is what Hugging Face's tokenizers give: a literal <|endoftext|> is the special
  // token. The fixtures' `ids` (OpenAI's encoder, no special tokens) differ on exactly those texts.
  for (const [name, folder, file] of [
    ['GPT-2', GPT2, 'reference.jsonl'],
    ['tiny GPT-2', TINY_GPT2, 'tokenizer_reference.jsonl'],
    ['tiny GPT-NeoX', TINY_NEOX, 'tokenizer_reference.jsonl'],
  ] as const) {
    it(`gives the reference ids for every text of the ${name} fixture`, async () => {
      const tok = await loadTokenizer(folder);
      const refs = references(path.join(folder, file));
      expect(refs.length).toBeGreaterThanOrEqual(45);
      for (const r of refs) expect({ text: r.text, ids: Array.from(tok.encode(r.text)) }).toEqual({ text: r.text, ids: r.ids_with_special });
    });
  }

  it('returns an Int32Array', async () => {
    const tok = await loadTokenizer(GPT2);
    const ids = tok.encode('Hello world');
    expect(ids).toBeInstanceOf(Int32Array);
    expect(Array.from(ids)).toEqual([15496, 995]);
  });

  it('turns a literal <|endoftext|> into the EOS id', async () => {
    const tok = await loadTokenizer(GPT2);
    expect(Array.from(tok.encode('a<|endoftext|>b'))).toEqual([64, 50256, 65]);
  });

  it('adds no BOS even when the tokenizer post-processor would', async () => {
    const spec = tinySpec();
    spec.post_processor = {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<|endoftext|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<|endoftext|>': { id: '<|endoftext|>', ids: [768], tokens: ['<|endoftext|>'] } },
    };
    const tok = await loadTokenizer(await folderWith({ 'config.json': { bos_token_id: 768, eos_token_id: 768 } }, JSON.stringify(spec)));
    expect(Array.from(tok.encode('Hello world'))).toEqual([39, 695, 78, 476, 335]);
  });
});

describe('decode', () => {
  it('gives back every reference text of the GPT-2 fixture from its ids', async () => {
    const tok = await loadTokenizer(GPT2);
    for (const r of references(path.join(GPT2, 'reference.jsonl'))) expect(tok.decode(Int32Array.from(r.ids_with_special))).toBe(r.text);
  });

  it('leaves spaces before punctuation as they are', async () => {
    // the library's default clean-up would turn "a ." into "a."
    const tok = await loadTokenizer(GPT2);
    expect(tok.decode(tok.encode("a . b , c 's"))).toBe("a . b , c 's");
  });

  it('decodes no ids to the empty string', async () => {
    const tok = await loadTokenizer(GPT2);
    expect(tok.decode(new Int32Array(0))).toBe('');
  });

  it('rejects an id outside the vocabulary', async () => {
    const tok = await loadTokenizer(TINY_GPT2);
    expect(() => tok.decode([769])).toThrow(RangeError);
    expect(() => tok.decode([-1])).toThrow(RangeError);
  });
});

describe('BOS and EOS', () => {
  it('come from tokenizer_config.json when there is no config.json (GPT-2: 50256)', async () => {
    const tok = await loadTokenizer(GPT2);
    expect([tok.bosId, tok.eosId]).toEqual([50256, 50256]);
  });

  it('come from config.json in a model folder', async () => {
    for (const folder of [TINY_GPT2, TINY_NEOX]) {
      const tok = await loadTokenizer(folder);
      expect([tok.bosId, tok.eosId]).toEqual([768, 768]);
    }
  });

  it('take config.json ids over tokenizer_config.json tokens', async () => {
    const tok = await loadTokenizer(
      await folderWith({ 'config.json': { bos_token_id: 5, eos_token_id: 6 }, 'tokenizer_config.json': { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>' } }),
    );
    expect([tok.bosId, tok.eosId]).toEqual([5, 6]);
  });

  it('take an id of 0 from config.json (Pythia)', async () => {
    const tok = await loadTokenizer(
      await folderWith({ 'config.json': { bos_token_id: 0, eos_token_id: 0 }, 'tokenizer_config.json': { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>' } }),
    );
    expect([tok.bosId, tok.eosId]).toEqual([0, 0]);
  });

  it('take tokenizer_config.json tokens over special_tokens_map.json', async () => {
    const tok = await loadTokenizer(
      await folderWith({ 'tokenizer_config.json': { bos_token: 'a', eos_token: 'b' }, 'special_tokens_map.json': { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>' } }),
    );
    expect([tok.bosId, tok.eosId]).toEqual([64, 65]);
  });

  it('fall back to special_tokens_map.json, tokens written as {content}', async () => {
    const tok = await loadTokenizer(
      await folderWith({ 'special_tokens_map.json': { bos_token: { content: '<|endoftext|>', special: true }, eos_token: { content: 'b' } } }),
    );
    expect([tok.bosId, tok.eosId]).toEqual([768, 65]);
  });

  it('are resolved each on its own', async () => {
    const tok = await loadTokenizer(await folderWith({ 'config.json': { eos_token_id: 7 }, 'tokenizer_config.json': { bos_token: 'a' } }));
    expect([tok.bosId, tok.eosId]).toEqual([64, 7]);
  });

  it('take the first of a list of EOS ids', async () => {
    const tok = await loadTokenizer(await folderWith({ 'config.json': { bos_token_id: 1, eos_token_id: [9, 768] } }));
    expect(tok.eosId).toBe(9);
  });
});

describe('vocabSize', () => {
  it('counts the added tokens (GPT-2: 50257)', async () => {
    expect((await loadTokenizer(GPT2)).vocabSize).toBe(50257);
  });

  it("is the tokenizer's, not the model's padded vocabulary (tiny NeoX: 769 of 832)", async () => {
    expect((await loadTokenizer(TINY_NEOX)).vocabSize).toBe(769);
  });
});

describe('digest', () => {
  it("is the sha256 of tokenizer.json's bytes", async () => {
    const expected = createHash('sha256')
      .update(await fs.readFile(path.join(GPT2, 'tokenizer.json')))
      .digest('hex');
    expect((await loadTokenizer(GPT2)).digest).toBe(expected);
  });

  it('is the same on every load', async () => {
    expect((await loadTokenizer(TINY_GPT2)).digest).toBe((await loadTokenizer(TINY_GPT2)).digest);
  });

  it('differs between tokenizers', async () => {
    expect((await loadTokenizer(GPT2)).digest).not.toBe((await loadTokenizer(TINY_GPT2)).digest);
  });
});

describe('bad input', () => {
  it('a folder that does not exist', async () => {
    const missing = path.join(tmp, 'nowhere');
    await expectUserError(loadTokenizer(missing), new RegExp(`tokenizer folder .*nowhere does not exist`));
  });

  it('a folder without tokenizer.json names the folder', async () => {
    const dir = await folderWith({ 'config.json': { bos_token_id: 0, eos_token_id: 0 } }, null);
    await expectUserError(loadTokenizer(dir), new RegExp(`^no tokenizer.json in ${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`));
  });

  it('a tokenizer.json that is not JSON', async () => {
    await expectUserError(loadTokenizer(await folderWith({}, '{"model": {')), /tokenizer\.json is not valid JSON/);
  });

  it('a tokenizer.json without a model', async () => {
    await expectUserError(loadTokenizer(await folderWith({}, '{"version": "1.0"}')), /has no "model"/);
  });

  it('a model type the library does not have (WordLevel)', async () => {
    const spec = tinySpec();
    spec.model = { type: 'WordLevel', vocab: { a: 0, '[UNK]': 1 }, unk_token: '[UNK]' };
    await expectUserError(loadTokenizer(await folderWith({}, JSON.stringify(spec))), /unsupported tokenizer model type "WordLevel"/);
  });

  it('a component the library rejects', async () => {
    const spec = tinySpec();
    spec.pre_tokenizer = { type: 'NoSuchPreTokenizer' };
    await expectUserError(loadTokenizer(await folderWith({}, JSON.stringify(spec))), /the tokenizer cannot be built: .*NoSuchPreTokenizer/);
  });

  it('no BOS anywhere', async () => {
    await expectUserError(loadTokenizer(await folderWith({ 'config.json': { eos_token_id: 768 } })), /^no BOS token for .*bos_token_id/);
  });

  it('no EOS anywhere', async () => {
    await expectUserError(loadTokenizer(await folderWith({ 'tokenizer_config.json': { bos_token: 'a' } })), /^no EOS token for .*eos_token_id/);
  });

  it('a BOS token that is not in the vocabulary', async () => {
    await expectUserError(
      loadTokenizer(await folderWith({ 'tokenizer_config.json': { bos_token: '<s>', eos_token: '<|endoftext|>' } })),
      /tokenizer_config\.json: bos_token "<s>" is not in the tokenizer's vocabulary/,
    );
  });

  it("a config.json EOS id outside the tokenizer's ids", async () => {
    await expectUserError(
      loadTokenizer(await folderWith({ 'config.json': { bos_token_id: 0, eos_token_id: 50256 } })),
      /config\.json: eos_token_id 50256 is outside the tokenizer's 769 ids/,
    );
  });

  it('a config.json id that is not an id', async () => {
    await expectUserError(loadTokenizer(await folderWith({ 'config.json': { bos_token_id: 'x', eos_token_id: 0 } })), /bos_token_id "x" is not a token id/);
  });

  it('a config.json that is not JSON', async () => {
    await expectUserError(loadTokenizer(await folderWith({ 'config.json': '{bos' })), /config\.json is not valid JSON/);
  });
});
