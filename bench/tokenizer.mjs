#!/usr/bin/env node
// Tokenizer benchmark (issue 8): the two candidate libraries for src/lm/tokenizer.ts, the Node
// binding of Hugging Face's Rust `tokenizers` and the pure-TypeScript `@huggingface/tokenizers`,
// on the same tokenizer.json. Reports load time, encode throughput over a few MB of English
// split into documents (harvest encodes one document per call), how often the two disagree on that
// corpus, and exactness on every reference text of the fixtures. Prints a markdown table.
// See bench/README.md.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Tokenizer as JsTokenizer } from '@huggingface/tokenizers';
// The Rust binding is not a dependency of the package (docs/tokenizer.md); only this bench uses it.
const { Tokenizer: RustTokenizer } = await import('tokenizers').catch(() => {
  console.error('bench/tokenizer.mjs compares against the Rust binding: npm install --no-save tokenizers');
  process.exit(2);
});

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
};
const megabytes = Number(arg('mb', '4'));
const reps = Number(arg('reps', '3'));
const folder = path.resolve(root, arg('tokenizer', 'fixtures/tokenizer/gpt2'));

// Real prose rather than repeated fixture texts: repeating a small text keeps every word in the
// libraries' BPE caches and overstates throughput. Markdown and text files under node_modules and
// /usr/share/doc are English written by people; files are cut into ~2 kB documents at blank lines.
function corpus(bytes) {
  const list = (dir, names) => {
    try {
      const args = [dir, '-type', 'f', '(', ...names.flatMap((n, i) => (i ? ['-o', '-name', n] : ['-name', n])), ')'];
      return execFileSync('find', args, { encoding: 'utf8', maxBuffer: 1 << 26 }).split('\n').filter(Boolean).sort();
    } catch {
      return [];
    }
  };
  const files = [
    ...list(path.join(root, 'node_modules/'), ['*.md']),
    ...list('/usr/share/doc', ['README*', '*.txt', '*.md']).filter((f) => !f.endsWith('.gz')),
  ];
  const docs = [];
  let total = 0;
  for (const f of files) {
    let text;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    if (text.includes('\u0000') || text.includes('\uFFFD')) continue; // binary or not UTF-8
    let doc = '';
    for (const para of text.split(/\n\s*\n/)) {
      doc += (doc ? '\n\n' : '') + para;
      if (doc.length >= 2000) {
        docs.push(doc);
        total += Buffer.byteLength(doc);
        doc = '';
      }
    }
    if (doc) {
      docs.push(doc);
      total += Buffer.byteLength(doc);
    }
    if (total >= bytes) break;
  }
  if (total < bytes) {
    // not enough text on this machine: cycle what there is (and say so)
    console.error(`only ${(total / 1e6).toFixed(2)} MB of text found; cycling it`);
    const n = docs.length;
    for (let i = 0; total < bytes && n > 0; i++) {
      docs.push(docs[i % n]);
      total += Buffer.byteLength(docs[i % n]);
    }
  }
  return { docs, bytes: total };
}

function references() {
  const sets = [
    ['fixtures/tokenizer/gpt2', 'reference.jsonl'],
    ['fixtures/hf-tiny/gpt2', 'tokenizer_reference.jsonl'],
    ['fixtures/hf-tiny/gpt-neox', 'tokenizer_reference.jsonl'],
  ];
  return sets.map(([dir, file]) => ({
    dir,
    rows: readFileSync(path.join(root, dir, file), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l)),
  }));
}

const same = (a, b) => a.length === b.length && Array.prototype.every.call(a, (v, i) => v === b[i]);

async function main() {
  const { docs, bytes } = corpus(megabytes * 1e6);
  const json = readFileSync(path.join(folder, 'tokenizer.json'), 'utf8');
  const config = JSON.parse(readFileSync(path.join(folder, 'tokenizer_config.json'), 'utf8'));

  let t = performance.now();
  const rust = RustTokenizer.fromString(json);
  const rustLoad = performance.now() - t;
  t = performance.now();
  const js = new JsTokenizer(JSON.parse(json), config);
  const jsLoad = performance.now() - t;

  // Each way of encoding runs `--reps` times, interleaved with the others, and keeps its best wall
  // and CPU time: on a shared machine the best run is the one least disturbed. CPU time
  // (process.cpuUsage, all threads, so the Rust thread pool's included) moves less with load.
  const ways = [
    ['tokenizers (Rust), await encode per doc', rustLoad, async (d) => {
      const out = [];
      for (const text of d) out.push((await rust.encode(text, null, { addSpecialTokens: false })).getIds());
      return out;
    }],
    ['tokenizers (Rust), encodeBatch of 256 docs', rustLoad, async (d) => {
      const out = [];
      for (let i = 0; i < d.length; i += 256) {
        const encs = await rust.encodeBatch(d.slice(i, i + 256), { addSpecialTokens: false });
        for (const e of encs) out.push(e.getIds());
      }
      return out;
    }],
    ['@huggingface/tokenizers (TS), encode per doc', jsLoad, async (d) => d.map((text) => js.encode(text, { add_special_tokens: false }).ids)],
  ];
  // the module itself (needs `npm run build:ts`): the library plus the Int32Array copy
  const dist = path.join(root, 'dist/lm/tokenizer.js');
  if (existsSync(dist)) {
    t = performance.now();
    const tok = await (await import(pathToFileURL(dist).href)).loadTokenizer(folder);
    ways.push(['loadTokenizer (src/lm/tokenizer.ts), encode per doc', performance.now() - t, async (d) => d.map((text) => tok.encode(text))]);
  }
  const rows = ways.map(([name, load]) => ({ name, load, s: Infinity, cpu: Infinity, tokens: 0, out: null }));
  for (const [, , run] of ways) await run(docs.slice(0, 200)); // warm-up: JIT, caches of the first words
  for (let rep = 0; rep < reps; rep++) {
    for (let w = 0; w < ways.length; w++) {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const out = await ways[w][2](docs);
      const s = (performance.now() - t0) / 1000;
      const c = process.cpuUsage(c0);
      const r = rows[w];
      r.s = Math.min(r.s, s);
      r.cpu = Math.min(r.cpu, (c.user + c.system) / 1e6);
      r.tokens = out.reduce((n, ids) => n + ids.length, 0);
      r.out = out;
    }
  }

  const base = rows[0].out;
  console.log(`corpus: ${docs.length} documents, ${(bytes / 1e6).toFixed(2)} MB; tokenizer: ${path.relative(root, folder)}`);
  console.log('');
  console.log(`${reps} runs each, best kept; ${os.availableParallelism()} CPUs, load average ${os.loadavg()[0].toFixed(1)} at the end`);
  console.log('');
  console.log('| library / call | load ms | tokens | best wall s | tokens/s (wall) | MB/s (wall) | best CPU s | tokens per CPU s | docs differing from Rust |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  const k = (x) => Math.round(x).toLocaleString('en');
  for (const r of rows) {
    const differ = r.out.filter((ids, i) => !same(ids, base[i])).length;
    console.log(
      `| ${r.name} | ${r.load.toFixed(0)} | ${r.tokens} | ${r.s.toFixed(2)} | ${k(r.tokens / r.s)} | ${(bytes / 1e6 / r.s).toFixed(2)} | ${r.cpu.toFixed(2)} | ${k(r.tokens / r.cpu)} | ${differ} |`,
    );
  }
  console.log('');
  console.log('| fixture | texts | Rust = ids_with_special | TS = ids_with_special | Rust decode = text | TS decode = text |');
  console.log('|---|---|---|---|---|---|');
  for (const { dir, rows: refs } of references()) {
    const r = RustTokenizer.fromFile(path.join(root, dir, 'tokenizer.json'));
    const j = new JsTokenizer(
      JSON.parse(readFileSync(path.join(root, dir, 'tokenizer.json'), 'utf8')),
      JSON.parse(readFileSync(path.join(root, dir, 'tokenizer_config.json'), 'utf8')),
    );
    let re = 0, je = 0, rd = 0, jd = 0;
    for (const { text, ids_with_special: ids } of refs) {
      if (same((await r.encode(text, null, { addSpecialTokens: false })).getIds(), ids)) re++;
      if (same(j.encode(text, { add_special_tokens: false }).ids, ids)) je++;
      if ((await r.decode(ids, false)) === text) rd++;
      // the TS decode throws on an empty list
      if ((ids.length ? j.decode(ids, { clean_up_tokenization_spaces: false }) : '') === text) jd++;
    }
    const n = refs.length;
    console.log(`| ${dir} | ${n} | ${re}/${n} | ${je}/${n} | ${rd}/${n} | ${jd}/${n} |`);
  }

  if (process.argv.includes('--codepoints')) {
    // Where the TypeScript port could differ: its translation of the pre-tokenizer's Oniguruma regex
    // (\s, \p{L}, \p{N} on exotic characters). Every code point below U+30000 in five contexts.
    const contexts = (ch) => [`a${ch}b`, `a ${ch} b`, `x${ch}${ch} y`, `${ch}  z`, `1${ch}2`];
    const differ = [];
    let n = 0;
    for (let c = 0; c < 0x30000; c++) {
      if (c >= 0xd800 && c < 0xe000) continue; // lone surrogates are not text
      for (const text of contexts(String.fromCodePoint(c))) {
        n++;
        const a = (await rust.encode(text, null, { addSpecialTokens: false })).getIds();
        if (!same(a, js.encode(text, { add_special_tokens: false }).ids)) {
          differ.push(`U+${c.toString(16).toUpperCase().padStart(4, '0')}`);
          break;
        }
      }
    }
    console.log('');
    console.log(`code points: ${n} texts, ${differ.length} code points where the libraries differ ${differ.slice(0, 20).join(' ')}`);
  }
}

await main();
