// The SAE's sparse passes (decode, decode backward, encoder backward), each by token or by feature
// over a CSC transpose of the codes, or through the packed GEMM when the codes are dense.
#include "instance.h"

#define SAE_ISA_BODY "sparse_isa.h"
#include "isa_variants.h"

namespace sae {

// z' of a tile at the entries of its tokens that fall in its features (scan order: a token's
// features ascend, so one cursor per token suffices).
static void onSample(void* sp, const float* tile, int rows, int j0, int tl0, uint32_t valid) {
  Thread& h = *static_cast<Thread*>(sp);
  const int jEnd = j0 + rows;
  const int NR = h.NR;
  while (valid) {
    const int t = __builtin_ctz(valid);
    valid &= valid - 1;
    const int tl = tl0 + t;
    const int b = h.tok0 + tl;
    int p = h.scur[tl];
    const int end = h.sRowPtr[b + 1];
    while (p < end && h.sIndex[p] < jEnd) {
      h.sOut[p] = tile[(h.sIndex[p] - j0) * NR + t];
      p++;
    }
    h.scur[tl] = p;
  }
}

void Instance::decode(const float* Wdec, const float* bias, const int32_t* rowPtr, const int32_t* index, const float* value,
            int B, float* out) {
  const int T = T_;
  if (denseCodes((int64_t)rowPtr[B] - rowPtr[0], B)) {
    // out[b] = bias + Σ_j z_bj·Wdec[j]: columns = tokens, k = features
    const int d = d_;
    prepareAccum((B + T - 1) / T + 1);
    pool().run([&](int t) {
      const int c0 = (int)((int64_t)B * t / T), c1 = (int)((int64_t)B * (t + 1) / T);
      for (int b = c0; b < c1; b++) {
        float* o = out + (int64_t)b * d;
        for (int i = 0; i < d; i++) o[i] = bias ? bias[i] : 0.0f;
      }
      if (c1 > c0) ops_->gemm->denseAccum(accumJob(t, c0, c1, F_, rowPtr, index, nullptr, value, Wdec, out));
    });
    return;
  }
  // token ranges of about equal cost (entries + 1 per token)
  std::vector<int> cut(T + 1);
  const int64_t base = rowPtr[0];
  const int64_t total = (int64_t)rowPtr[B] - base + B;
  cut[0] = 0;
  cut[T] = B;
  for (int t = 1; t < T; t++) {
    const int64_t target = total * t / T;
    int lo = cut[t - 1], hi = B;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if ((int64_t)rowPtr[mid] - base + mid < target) lo = mid + 1;
      else hi = mid;
    }
    cut[t] = lo;
  }
  pool().run([&](int t) {
    if (cut[t] < cut[t + 1]) ops_->sparse->decodeRows(Wdec, bias, rowPtr, index, value, cut[t], cut[t + 1], d_, out);
  });
}

void Instance::decodeBackward(const float* Wdec, const int32_t* rowPtr, const int32_t* index, const float* value, int B,
                    const float* dOut, float* gWdec, float* dz) {
  const int T = T_;
  if (denseCodes((int64_t)rowPtr[B] - rowPtr[0], B)) {
    // dz[e] = dOut[b]·Wdec[j]: the encoder's GEMM on (dOut, Wdec), sampled at the entries
    sampleProducts(Wdec, dOut, rowPtr, index, B, dz);
    // gWdec[j] += Σ_b z_bj·dOut[b]: columns = features, k = tokens (the codes by token)
    prepareAccum((F_ + T - 1) / T + 1);
    pool().run([&](int t) {
      const int c0 = (int)((int64_t)F_ * t / T), c1 = (int)((int64_t)F_ * (t + 1) / T);
      if (c1 > c0) ops_->gemm->denseAccum(accumJobByK(t, c0, c1, B, rowPtr, index, value, nullptr, dOut, gWdec));
    });
    return;
  }
  buildCsc(rowPtr, index, B);
  std::vector<int> cut;
  splitFeatures(1, cut);
  pool().run([&](int t) {
    if (cut[t] < cut[t + 1])
      ops_->sparse->decodeBackwardCols(Wdec, colPtr_.data(), colEnt_.data(), colTok_.data(), value, dOut, cut[t], cut[t + 1],
                               d_, gWdec, dz);
  });
}

void Instance::encoderBackward(const float* WencT, const float* xc, const int32_t* rowPtr, const int32_t* index, int B,
                     const float* dz, float* gWencT, float* gBenc, float* gBdec) {
  const int T = T_;
  const int chunk = kChunk;
  const int nch = (F_ + chunk - 1) / chunk;
  need(partial_.reserve((size_t)nch * d_));
  if (denseCodes((int64_t)rowPtr[B] - rowPtr[0], B)) {
    // gWencT[j] += Σ_b dz_bj·xc[b] and s_j = Σ_b dz_bj: columns = features, k = tokens
    prepareAccum((F_ + T - 1) / T + 1);
    need(colSum_.reserve((size_t)F_));
    float* sj = colSum_.data();
    pool().run([&](int t) {
      // whole chunks per thread, so that the b_dec partials below need no other thread's s_j
      const int nchT = (int)((int64_t)nch * t / T), nchT1 = (int)((int64_t)nch * (t + 1) / T);
      const int c0 = std::min(F_, nchT * chunk), c1 = std::min(F_, nchT1 * chunk);
      if (c1 <= c0) return;
      std::memset(sj + c0, 0, sizeof(float) * (size_t)(c1 - c0));
      ops_->gemm->denseAccum(accumJobByK(t, c0, c1, B, rowPtr, index, dz, sj, xc, gWencT));
      for (int j = c0; j < c1; j++) gBenc[j] += sj[j];
      ops_->sparse->weightedRowSum(WencT, sj, c0, c1, d_, chunk, partial_.data());
    });
  } else {
    // gWencT, gBenc and the b_dec gradient partials by feature
    buildCsc(rowPtr, index, B);
    std::vector<int> cut;
    splitFeatures(chunk, cut);
    pool().run([&](int t) {
      if (cut[t] < cut[t + 1])
        ops_->sparse->encoderBackwardCols(WencT, xc, colPtr_.data(), colEnt_.data(), colTok_.data(), dz, cut[t], cut[t + 1], d_,
                                  chunk, gWencT, gBenc, partial_.data());
    });
  }
  // b_dec gradient: fixed chunk order, independent of the thread count
  const int d = d_;
  for (int c = 0; c < nch; c++) {
    const float* pc = partial_.data() + (size_t)c * d;
    for (int i = 0; i < d; i++) gBdec[i] -= pc[i];
  }
}

// Scratch for denseAccum on every thread (cols: the most columns one thread gets).
void Instance::prepareAccum(int cols) {
  const size_t nrp = (size_t)(d_ + ops_->gemm->MR - 1) / ops_->gemm->MR;
  for (int t = 0; t < T_; t++) {
    Thread& h = th_[t];
    need(h.Ap.reserve(nrp * ((size_t)kAccumK * ops_->gemm->MR + ops_->gemm->MR)));
    need(h.Bp.reserve((size_t)kAccumK * ops_->gemm->NR));
    need(h.tile.reserve((size_t)ops_->gemm->MR * ops_->gemm->NR));
    need(h.scur.reserve((size_t)std::max(cols, kAccumK) + 1));
  }
}

AccumJob Instance::accumJobByK(int t, int c0, int c1, int K, const int32_t* kPtr, const int32_t* kCols, const float* val,
                     float* colSum, const float* dense, float* out) {
  AccumJob J = accumJob(t, c0, c1, K, nullptr, nullptr, nullptr, val, dense, out);
  J.kPtr = kPtr;
  J.kCols = kCols;
  J.colSum = colSum;
  return J;
}

AccumJob Instance::accumJob(int t, int c0, int c1, int K, const int32_t* colPtr, const int32_t* colK, const int32_t* colEnt,
                  const float* val, const float* dense, float* out) {
  Thread& h = th_[t];
  AccumJob J;
  J.d = d_;
  J.K = K;
  J.c0 = c0;
  J.c1 = c1;
  J.kc = kAccumK;
  J.colPtr = colPtr;
  J.colK = colK;
  J.colEnt = colEnt;
  J.val = val;
  J.dense = dense;
  J.out = out;
  J.Ap = h.Ap.data();
  J.Bp = h.Bp.data();
  J.tile = h.tile.data();
  J.cur = h.scur.data();
  return J;
}

// out[e] = Y[b]·W[j] for every entry e = (b, j) of the codes: the encoder's GEMM with Y in
// place of xc and no biases, each tile sampled at the entries it covers.
void Instance::sampleProducts(const float* W, const float* Y, const int32_t* rowPtr, const int32_t* index, int B, float* out) {
  const int T = T_;
  const int NR = ops_->gemm->NR;
  for (int t = 0; t < T; t++) {
    Thread& h = th_[t];
    h.tok0 = (int)((int64_t)B * t / T);
    h.ntok = (int)((int64_t)B * (t + 1) / T) - h.tok0;
    need(h.Xp.reserve(ops_->gemm->packedXFloats(h.ntok, d_)));
    need(h.Wp.reserve(ops_->gemm->packedWFloats(nb_, d_)));
    need(h.tile.reserve((size_t)ops_->gemm->MR * NR));
    need(h.scur.reserve((size_t)h.ntok + NR));
    h.NR = NR;
    h.sRowPtr = rowPtr;
    h.sIndex = index;
    h.sOut = out;
    Consumer& c = h.cons;
    c = Consumer();
    c.mode = kModeTile;
    c.onTile = onSample;
    c.st = &h;
    c.tok0 = h.tok0;
    c.F = F_;
  }
  pool().run([&](int t) {
    Thread& h = th_[t];
    if (h.ntok == 0) return;
    for (int tl = 0; tl < h.ntok; tl++) h.scur[tl] = rowPtr[h.tok0 + tl];
    ops_->gemm->packX(Y, nullptr, nullptr, h.tok0, h.ntok, d_, h.Xp.data());
    ScanJob job;
    job.W = W;
    job.bEnc = nullptr;
    job.d = d_;
    job.F = F_;
    job.tok0 = h.tok0;
    job.ntok = h.ntok;
    job.nb = nb_;
    job.tile = h.tile.data();
    job.c = &h.cons;
    job.Xp = h.Xp.data();
    job.Wp = h.Wp.data();
    ops_->gemm->scan(job);
  });
}

// Entries grouped by feature, each group in token order: a stable counting sort, with every
// thread counting and then placing the entries of its own token range.
void Instance::buildCsc(const int32_t* rowPtr, const int32_t* index, int B) {
  const int F = F_;
  const int T = T_;
  const int64_t e0 = rowPtr[0], e1 = rowPtr[B];
  const size_t nnz = (size_t)(e1 - e0);
  need(colPtr_.reserve((size_t)F + 2));
  need(colEnt_.reserve(std::max<size_t>(nnz, 1)));
  need(colTok_.reserve(std::max<size_t>(nnz, 1)));
  for (int t = 0; t < T; t++) need(th_[t].tokCount.reserve((size_t)F + 1));
  pool().run([&](int t) {
    int32_t* cnt = th_[t].tokCount.data();
    std::memset(cnt, 0, sizeof(int32_t) * (size_t)F);
    const int b0 = (int)((int64_t)B * t / T), b1 = (int)((int64_t)B * (t + 1) / T);
    for (int32_t e = rowPtr[b0]; e < rowPtr[b1]; e++) cnt[index[e]]++;
  });
  // colPtr, and each thread's first slot in every column (threads in token order)
  int32_t* cp = colPtr_.data();
  int32_t pos = 0;
  for (int j = 0; j < F; j++) {
    cp[j] = pos;
    for (int t = 0; t < T; t++) {
      int32_t* cnt = th_[t].tokCount.data();
      const int32_t c = cnt[j];
      cnt[j] = pos;
      pos += c;
    }
  }
  cp[F] = pos;
  pool().run([&](int t) {
    int32_t* cur = th_[t].tokCount.data();
    const int b0 = (int)((int64_t)B * t / T), b1 = (int)((int64_t)B * (t + 1) / T);
    for (int b = b0; b < b1; b++) {
      for (int32_t e = rowPtr[b]; e < rowPtr[b + 1]; e++) {
        const int32_t p = cur[index[e]]++;
        colEnt_[p] = e;
        colTok_[p] = b;
      }
    }
  });
}

// Feature ranges (multiples of `align`) of about equal cost (entries + 1 per feature).
void Instance::splitFeatures(int align, std::vector<int>& cut) {
  const int T = T_;
  const int F = F_;
  cut.assign(T + 1, F);
  cut[0] = 0;
  const int32_t* cp = colPtr_.data();
  const int64_t total = (int64_t)cp[F] + F;
  for (int t = 1; t < T; t++) {
    const int64_t target = total * t / T;
    int lo = cut[t - 1], hi = F;
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if ((int64_t)cp[mid] + mid < target) lo = mid + 1;
      else hi = mid;
    }
    int j = (lo / align) * align;
    if (j < cut[t - 1]) j = cut[t - 1];
    cut[t] = j;
  }
}

}  // namespace sae
