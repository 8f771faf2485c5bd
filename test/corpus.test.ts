import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { openCorpus, brownCorpus, type Corpus, type CorpusPosition, type CorpusSpec, type OpenCorpusOptions } from '../src/corpus/corpus.js';
import { brownToText } from '../src/corpus/brown.js';
import { UserError } from '../src/util/errors.js';

let dir: string;
const at = (...p: string[]): string => path.join(dir, ...p);
const bytes = (...parts: (string | number[])[]): Buffer => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p))));
const INVALID = [0xff, 0xfe]; // never valid in UTF-8

async function write(name: string, data: string | Uint8Array): Promise<string> {
  const file = at(name);
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file, data);
  return file;
}

function parquet(columns: Record<string, (string | Uint8Array | null)[]>, rowGroupSize = 2, type: 'STRING' | 'BYTE_ARRAY' = 'STRING'): Uint8Array {
  const columnData = Object.entries(columns).map(([name, data]) => ({ name, data, type: name === 'text' || name === 'body' ? type : 'STRING' as const, nullable: true }));
  return new Uint8Array(parquetWriteBuffer({ columnData, rowGroupSize }));
}

async function texts(corpus: Corpus, from?: CorpusPosition): Promise<string[]> {
  const out: string[] = [];
  for await (const d of corpus.documents(from)) out.push(d.text);
  return out;
}

async function all(corpus: Corpus, from?: CorpusPosition): Promise<{ text: string; position: CorpusPosition }[]> {
  const out: { text: string; position: CorpusPosition }[] = [];
  for await (const d of corpus.documents(from)) out.push(d);
  return out;
}

/** The UserError a promise (or a full read of a corpus) fails with. */
async function userErrorOf(p: Promise<unknown>): Promise<UserError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UserError);
  expect((err as Error).message).not.toContain('\n');
  return err as UserError;
}

const open = (spec: CorpusSpec, opts: OpenCorpusOptions = {}): Promise<Corpus> => openCorpus(spec, { cwd: dir, ...opts });

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'sae-corpus-'));
});

afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('local formats', () => {
  it('reads a .txt file as one document', async () => {
    await write('one/a.txt', 'First paragraph.\n\nSecond paragraph.\n');
    expect(await texts(await open({ inputs: ['one/a.txt'] }))).toEqual(['First paragraph.\n\nSecond paragraph.\n']);
  });

  it('splits a .txt file into blank-line-separated blocks in blocks mode, whitespace-only lines and CRLF included', async () => {
    await write('blocks/a.txt', 'one\r\nstill one\r\n\r\ntwo\n \t \nthree\n\n\n\nfour');
    expect(await texts(await open({ inputs: ['blocks/a.txt'], txtMode: 'blocks' }))).toEqual(['one\nstill one', 'two', 'three', 'four']);
  });

  it('reads the text field of each JSONL line', async () => {
    await write('j/a.jsonl', '{"text":"alpha","id":1}\n\n{"text":"beta"}\n');
    expect(await texts(await open({ inputs: ['j/a.jsonl'] }))).toEqual(['alpha', 'beta']);
  });

  it('reads the JSONL field named by textField', async () => {
    await write('j/b.jsonl', '{"text":"not this","content":"gamma"}\n{"content":"delta"}\n');
    expect(await texts(await open({ inputs: ['j/b.jsonl'], textField: 'content' }))).toEqual(['gamma', 'delta']);
  });

  it('reads the text column of a Parquet file across row groups', async () => {
    await write('p/a.parquet', parquet({ id: ['1', '2', '3', '4', '5'], text: ['r0', 'r1', 'r2', 'r3', 'r4'] }, 2));
    expect(await texts(await open({ inputs: ['p/a.parquet'] }))).toEqual(['r0', 'r1', 'r2', 'r3', 'r4']);
  });

  it('reads the Parquet column named by textField', async () => {
    await write('p/b.parquet', parquet({ text: ['no', 'no'], body: ['b0', 'b1'] }));
    expect(await texts(await open({ inputs: ['p/b.parquet'], textField: 'body' }))).toEqual(['b0', 'b1']);
  });

  it('reads stdin as JSONL when it starts with {', async () => {
    const stdin = Readable.from([Buffer.from('\n  {"text":"s1"}\n{"te'), Buffer.from('xt":"s2"}\n')]);
    expect(await texts(await open({ inputs: ['-'] }, { stdin }))).toEqual(['s1', 's2']);
  });

  it('reads stdin as blank-line-separated text blocks otherwise', async () => {
    const stdin = Readable.from([Buffer.from('first doc\nline two\n\nsecond doc\n')]);
    const corpus = await open({ inputs: ['-'] }, { stdin });
    expect(await texts(corpus)).toEqual(['first doc\nline two', 'second doc']);
  });

  it('refuses to resume from stdin', async () => {
    const corpus = await open({ inputs: ['-'] }, { stdin: Readable.from([Buffer.from('x\n')]) });
    const err = await userErrorOf(texts(corpus, { file: 0, row: 0 }));
    expect(err.message).toMatch(/cannot resume .*stdin/);
  });
});

describe('globs and folders', () => {
  it('expands * to the matching files in sorted order', async () => {
    for (const n of ['c', 'a', 'b']) await write(`g/${n}.txt`, n);
    await write('g/skip.csv', 'not a corpus file');
    expect(await texts(await open({ inputs: ['g/*.txt'] }))).toEqual(['a', 'b', 'c']);
  });

  it('expands ** across folders', async () => {
    await write('deep/x/1.jsonl', '{"text":"x1"}\n');
    await write('deep/y/z/2.jsonl', '{"text":"z2"}\n');
    await write('deep/0.jsonl', '{"text":"top"}\n');
    expect(await texts(await open({ inputs: [at('deep/**/*.jsonl')] }))).toEqual(['top', 'x1', 'z2']);
  });

  it('reads every corpus file below a folder', async () => {
    await write('folder/b/2.txt', 'two');
    await write('folder/a.txt', 'one');
    expect(await texts(await open({ inputs: ['folder'] }))).toEqual(['one', 'two']);
  });

  it('keeps inputs in the order given', async () => {
    await write('order/z.txt', 'z');
    await write('order/a.txt', 'a');
    expect(await texts(await open({ inputs: ['order/z.txt', 'order/a.txt'] }))).toEqual(['z', 'a']);
  });
});

describe('skipped documents', () => {
  it('counts and skips empty, whitespace-only and invalid UTF-8 .txt files', async () => {
    await write('skip-txt/1.txt', 'good one');
    await write('skip-txt/2.txt', '');
    await write('skip-txt/3.txt', ' \n\t\n');
    await write('skip-txt/4.txt', bytes('bad ', INVALID, ' bytes'));
    await write('skip-txt/5.txt', 'good two');
    const corpus = await open({ inputs: ['skip-txt/*.txt'] });
    expect(await texts(corpus)).toEqual(['good one', 'good two']);
    expect(corpus.stats()).toEqual({ documents: 2, skippedEmpty: 2, skippedInvalidUtf8: 1 });
  });

  it('counts and skips an invalid UTF-8 block in blocks mode', async () => {
    await write('skip-blocks/a.txt', bytes('ok\n\nbad ', INVALID, '\n\nok too\n'));
    const corpus = await open({ inputs: ['skip-blocks/a.txt'], txtMode: 'blocks' });
    expect(await texts(corpus)).toEqual(['ok', 'ok too']);
    expect(corpus.stats()).toEqual({ documents: 2, skippedEmpty: 0, skippedInvalidUtf8: 1 });
  });

  it('counts and skips empty, whitespace, null, invalid UTF-8 and lone-surrogate JSONL strings', async () => {
    await write(
      'skip-jsonl/a.jsonl',
      bytes('{"text":"keep"}\n{"text":""}\n{"text":"  \\n "}\n{"text":null}\n{"text":"bad ', INVALID, '"}\n{"text":"\\ud800"}\n{"text":"keep too"}\n'),
    );
    const corpus = await open({ inputs: ['skip-jsonl/a.jsonl'] });
    expect(await texts(corpus)).toEqual(['keep', 'keep too']);
    expect(corpus.stats()).toEqual({ documents: 2, skippedEmpty: 3, skippedInvalidUtf8: 2 });
  });

  it('counts and skips null, empty and invalid UTF-8 Parquet values', async () => {
    const bad = new Uint8Array([0x62, 0x61, 0x64, ...INVALID]);
    await write('skip-parquet/a.parquet', parquet({ text: [Buffer.from('keep'), null, Buffer.from('   '), bad, Buffer.from('keep too')] }, 2, 'BYTE_ARRAY'));
    const corpus = await open({ inputs: ['skip-parquet/a.parquet'] });
    expect(await texts(corpus)).toEqual(['keep', 'keep too']);
    expect(corpus.stats()).toEqual({ documents: 2, skippedEmpty: 2, skippedInvalidUtf8: 1 });
  });
});

describe('resume', () => {
  // every format, skipped documents between and at the ends, several row groups
  async function mixed(txtMode: 'file' | 'blocks'): Promise<Corpus> {
    const d = `mixed-${txtMode}`;
    await write(`${d}/1.txt`, 'a1\n\n\na2\n\n   \n\na3');
    await write(`${d}/2.jsonl`, bytes('{"text":"j0"}\n{"text":""}\n\n{"text":"j3"}\n{"text":"', INVALID, '"}\n{"text":"j5"}\n'));
    await write(`${d}/3.parquet`, parquet({ text: ['p0', '', 'p2', 'p3', 'p4', null, 'p6'] }, 3));
    await write(`${d}/4.txt`, '');
    await write(`${d}/5.jsonl`, '{"text":"last"}\n{"text":" "}');
    return open({ inputs: [`${d}/*`], txtMode });
  }

  for (const mode of ['file', 'blocks'] as const) {
    it(`from every position gives the same tail as an uninterrupted read (txt ${mode})`, async () => {
      const corpus = await mixed(mode);
      const full = await all(corpus);
      expect(full.length).toBeGreaterThan(8);
      for (let i = 0; i < full.length; i++) {
        const tail = await all(corpus, JSON.parse(JSON.stringify(full[i].position)) as CorpusPosition);
        expect(tail).toEqual(full.slice(i + 1));
      }
    });
  }

  it('from a position without a byte offset gives the same tail as with one', async () => {
    const corpus = await mixed('blocks');
    const full = await all(corpus);
    for (let i = 0; i < full.length; i++) {
      const { file, row } = full[i].position;
      expect((await all(corpus, { file, row })).map((d) => d.text)).toEqual(full.slice(i + 1).map((d) => d.text));
    }
  });

  it('seeks a JSONL file to the byte offset instead of reading it from the start', async () => {
    await write('seek/a.jsonl', '{"text":"one"}\n{"text":"two"}\n{"text":"three"}\n');
    const corpus = await open({ inputs: ['seek/a.jsonl'] });
    const full = await all(corpus);
    expect(full[0].position).toEqual({ file: 0, row: 0, offset: 15 });
    // the bytes before the offset are garbage now: a read that scanned them would fail
    await write('seek/a.jsonl', 'x'.repeat(14) + '\n{"text":"two"}\n{"text":"three"}\n');
    expect(await texts(corpus, full[0].position)).toEqual(['two', 'three']);
  });

  it('from the last position yields nothing and is not an error', async () => {
    await write('end/a.txt', 'only');
    const corpus = await open({ inputs: ['end/a.txt'] });
    const [doc] = await all(corpus);
    expect(await texts(corpus, doc.position)).toEqual([]);
  });

  it('rejects a position that is not one', async () => {
    await write('badpos/a.txt', 'x');
    const corpus = await open({ inputs: ['badpos/a.txt'] });
    const err = await userErrorOf(texts(corpus, { file: -1, row: 0 }));
    expect(err.message).toMatch(/not a corpus position/);
  });
});

describe('describe and pinned spec', () => {
  it('describes a JSONL file by absolute path and field', async () => {
    await write('desc/a.jsonl', '{"text":"x"}\n');
    const corpus = await open({ inputs: ['desc/a.jsonl'], textField: 'text' });
    expect(corpus.describe()).toBe(`file:${at('desc/a.jsonl')}#text`);
  });

  it('pins a glob to the files it matched', async () => {
    await write('pin/b.txt', 'b');
    await write('pin/a.txt', 'a');
    const corpus = await open({ inputs: ['pin/*.txt'] });
    expect(corpus.pinned().inputs).toEqual([at('pin/a.txt'), at('pin/b.txt')]);
  });
});

describe('the embedded Brown corpus', () => {
  let train: string[];
  let heldout: string[];
  beforeAll(async () => {
    train = await texts(await openCorpus());
    heldout = await texts(await brownCorpus({ split: 'heldout' }));
  });

  it('is the default corpus, 475 training texts described as brown', async () => {
    const corpus = await openCorpus();
    expect(corpus.describe()).toBe('brown');
    expect(train).toHaveLength(475);
  });

  it('holds a known sentence of ca01 as plain text', () => {
    expect(train[0]).toContain("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced \"no evidence\" that any irregularities took place.");
  });

  it('has no tags, no Brown quote marks and no space before punctuation', () => {
    for (const t of [...train, ...heldout]) {
      expect(t).not.toMatch(/[A-Za-z]\/(at|nn|nns|np|vbd|vbz|in|jj|cc|rb|ppss|pps)(-tl|-hl)?(\s|$)/);
      // `''` stays inside words, where it means inches (4' 10'')
      expect(t).not.toMatch(/(^|\s)(``|'')(\s|$)/);
      expect(t).not.toMatch(/ [,.;:?!](\s|$)/);
      expect(t).not.toMatch(/[?;!]{2}/);
    }
  });

  it('keeps a held-out split of 25 texts disjoint from the training split', () => {
    expect(heldout).toHaveLength(25);
    const trainSet = new Set(train);
    for (const t of heldout) expect(trainSet.has(t)).toBe(false);
  });

  it('turns Brown conventions back into printed text', () => {
    const tagged = "\n\n\t``/`` Only/rb a/at handful/nn ''/'' ,/, the/at jury/nn said/vbd ./.\nWon/vbn by/in Ivan/np Allen/np Jr./np ./.\n\n\n\tWhat/wdt '/' pro/jj '/' letters/nns ?/. ?/.\n\n\n\nMerger/nn-hl proposed/vbn-hl\nHowever/wrb ;/. ;/. (/( 2/cd )/) it's/pps+bez 1-1/2/cd miles/nns ./.\n";
    expect(brownToText(tagged)).toBe(
      '"Only a handful," the jury said. Won by Ivan Allen Jr.\n\n' + "What 'pro' letters?\n\n" + 'Merger proposed\n\n' + "However; (2) it's 1-1/2 miles.",
    );
  });
});

describe('bad input', () => {
  it('no corpus and no default', async () => {
    const err = await userErrorOf(openCorpus({}, { defaultPackage: 'corpus-brown-not-installed' }));
    expect(err.message).toMatch(/no corpus given.*not installed/);
  });

  it('an empty corpus', async () => {
    await write('empty/a.txt', '');
    await write('empty/b.jsonl', '{"text":"  "}\n');
    const corpus = await open({ inputs: ['empty'] });
    const err = await userErrorOf(texts(corpus));
    expect(err.message).toMatch(/has no documents \(skipped 2 empty/);
  });

  it('names an empty corpus by its file, without the recorded file:…#text key', async () => {
    const file = await write('empty-named/a.jsonl', '{"text":""}\n');
    const err = await userErrorOf(texts(await open({ inputs: [file] })));
    expect(err.message).toBe(`corpus ${file} has no documents (skipped 1 empty or whitespace-only and 0 not valid UTF-8)`);
  });

  it('names an empty corpus of several files by count and names', async () => {
    await write('empty-two/a.jsonl', '{"text":""}\n');
    await write('empty-two/b.jsonl', '{"text":" "}\n');
    const err = await userErrorOf(texts(await open({ inputs: ['empty-two'] })));
    expect(err.message).toMatch(/^corpus 2 files: \S*a\.jsonl, \S*b\.jsonl has no documents/);
    expect(err.message).not.toMatch(/file:|#text/);
  });

  it('a folder with no corpus files', async () => {
    await write('nofiles/readme.md', 'x');
    const err = await userErrorOf(open({ inputs: ['nofiles'] }));
    expect(err.message).toMatch(/holds no \.txt, \.jsonl or \.parquet file/);
  });

  it('a corrupt JSONL line, with its line number', async () => {
    await write('corrupt/a.jsonl', '{"text":"fine"}\n\n{"text": oops}\n');
    const err = await userErrorOf(texts(await open({ inputs: ['corrupt/a.jsonl'] })));
    expect(err.message).toMatch(/a\.jsonl: line 3 is not valid JSON/);
  });

  it('a JSONL line that is not an object', async () => {
    await write('corrupt/b.jsonl', '["text"]\n');
    const err = await userErrorOf(texts(await open({ inputs: ['corrupt/b.jsonl'] })));
    expect(err.message).toMatch(/line 1 is not a JSON object/);
  });

  it('a corrupt Parquet file', async () => {
    await write('corrupt/c.parquet', 'PAR1 this is not parquet at all');
    const err = await userErrorOf(texts(await open({ inputs: ['corrupt/c.parquet'] })));
    expect(err.message).toMatch(/c\.parquet: not a readable Parquet file/);
  });

  it('a JSONL text field that does not exist', async () => {
    await write('nofield/a.jsonl', '{"text":"x"}\n{"body":"y"}\n');
    const err = await userErrorOf(texts(await open({ inputs: ['nofield/a.jsonl'] })));
    expect(err.message).toMatch(/line 2 has no field "text" \(fields: body\)/);
  });

  it('a missing JSONL text field: the message names --text-field, the flag that fixes it', async () => {
    await write('nofield/c.jsonl', '{"body":"y"}\n');
    const err = await userErrorOf(texts(await open({ inputs: ['nofield/c.jsonl'] })));
    expect(err.message).toMatch(/name the field that holds the text with --text-field$/);
  });

  it('a missing Parquet text column: the message names --text-field, the flag that fixes it', async () => {
    await write('nofield/d.parquet', parquet({ body: ['x'] }));
    const err = await userErrorOf(texts(await open({ inputs: ['nofield/d.parquet'] })));
    expect(err.message).toMatch(/name the column that holds the text with --text-field$/);
  });

  it('a Parquet text column that does not exist', async () => {
    await write('nofield/b.parquet', parquet({ body: ['x'] }));
    const err = await userErrorOf(texts(await open({ inputs: ['nofield/b.parquet'] })));
    expect(err.message).toMatch(/no column "text" \(columns: body\)/);
  });

  it('a glob that matches nothing', async () => {
    const err = await userErrorOf(open({ inputs: ['nowhere/*.jsonl'] }));
    expect(err.message).toMatch(/glob nowhere\/\*\.jsonl matches no/);
  });

  it('a file that does not exist', async () => {
    const err = await userErrorOf(open({ inputs: ['missing.txt'] }));
    expect(err.message).toMatch(/missing\.txt does not exist/);
  });

  it('a file of unknown format', async () => {
    await write('fmt/a.csv', 'a,b');
    const err = await userErrorOf(open({ inputs: ['fmt/a.csv'] }));
    expect(err.message).toMatch(/unknown format/);
  });

  it('files and a Hub dataset together', async () => {
    const err = await userErrorOf(open({ inputs: ['a.txt'], hub: { id: 'x/y' } }));
    expect(err.message).toMatch(/give one corpus/);
  });
});
