// A GPT-2-small-shaped host LM with deterministic random weights (real shapes, values that do not
// matter), shared by the benchmarks that need the model but cannot download it.
export function randomGpt2Small(HookedTransformer, kernels, seed0 = 12345) {
  // GPT-2 small's shapes (SPEC §2, paper §5): d 768, 12 heads, MLP 3072, 12 layers, vocabulary 50257
  const d = 768;
  const cfg = { family: 'gpt2', nLayers: 12, dModel: d, nHeads: 12, headDim: 64, dMlp: 3072, vocab: 50257, nPositions: 1024, lnEps: 1e-5, gelu: 'tanh', rotaryDims: 0, rotaryBase: 0, parallelResidual: false, tiedUnembed: true, bosTokenId: 50256, eosTokenId: 50256 };
  let seed = seed0;
  const rand = (n, std) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      a[i] = ((seed / 4294967296) * 2 - 1) * std * 1.7320508;
    }
    return a;
  };
  const ones = (n) => new Float32Array(n).fill(1);
  const lin = (k, m) => ({ W: rand(k * m, 0.02), bias: rand(m, 0.01), layout: 'in_out', k, m });
  const blocks = Array.from({ length: cfg.nLayers }, () => ({
    ln1: { w: ones(d), b: new Float32Array(d) },
    ln2: { w: ones(d), b: new Float32Array(d) },
    qkv: lin(d, 3 * d),
    attnOut: lin(d, d),
    mlpIn: lin(d, cfg.dMlp),
    mlpOut: lin(cfg.dMlp, d),
  }));
  const embed = rand(cfg.vocab * d, 0.02);
  const weights = { embed, pos: rand(cfg.nPositions * d, 0.01), blocks, lnFinal: { w: ones(d), b: new Float32Array(d) }, unembed: embed };
  return { model: new HookedTransformer(cfg, weights, kernels), rand, d };
}
