// The encoder and the selections' finalisation: Instance::encode runs the GEMM scan with every
// thread's selection state, then each finalize* merges the threads' lists into CSR codes.
#include <cstdio>

#include "selection.h"

namespace sae {

// z' = (x − b_dec)·W_enc + b_enc (W given) or z' given (z), then the selection and the aux
// selections. outs[0] is the main output (selections only), then one per aux.
void Instance::encode(const float* W, const float* bEnc, const float* bDec, const float* x, const float* z, int B,
            float* xc, const SelSpec& sel, const AuxSpec* aux, int nAux, const Out* outs, int64_t* nnz,
            bool* written) {
  if (B < 0 || B > maxB_) failRange("batch of " + std::to_string(B) + " exceeds kernel capacity " + std::to_string(maxB_));
  if (nAux > kMaxAux) failRange("at most " + std::to_string(kMaxAux) + " aux selections");
  const int T = T_;
  const int d = d_, F = F_;
  const bool gemm = W != nullptr;
  const int NR = ops_->gemm->NR;
  const int kind = sel.kind;
  const double t0 = now();

  // ---- set up every thread's state (all allocation happens here, on the calling thread)
  if (kind == kSelRelu || kind == kSelJumpRelu || kind == kSelGlobal) {
    need(cut_.reserve((size_t)F));
    for (int j = 0; j < F; j++) {
      float c = 0.0f;
      if (kind == kSelJumpRelu) c = std::max(sel.thr[j], 0.0f);
      if (kind == kSelGlobal) c = std::max((float)sel.gthr, 0.0f);
      if (kind == kSelJumpRelu && std::isnan(sel.thr[j])) c = sel.thr[j];
      if (kind == kSelGlobal && std::isnan(sel.gthr)) c = (float)sel.gthr;
      cut_[j] = c;
    }
  }
  int64_t featKeepTotal = 0;
  int64_t M = 0;
  if (kind == kSelMutual) M = std::min<int64_t>(sel.num, (int64_t)B * F);
  for (int t = 0; t < T; t++) {
    Thread& h = th_[t];
    h.kth = ops_->select->kthLargest;
    h.tok0 = (int)((int64_t)B * t / T);
    h.ntok = (int)((int64_t)B * (t + 1) / T) - h.tok0;
    const size_t padded = (size_t)((h.ntok + NR - 1) / NR) * NR + NR;
    if (gemm && unit_) {
      need(h.Xb.reserve((size_t)(h.ntok + 31) / 32 * 32 * bf16Kp(d) + 1));
    } else if (gemm) {
      need(h.Xp.reserve(ops_->gemm->packedXFloats(h.ntok, d)));
      need(h.Wp.reserve(ops_->gemm->packedWFloats(nb_, d)));
    }
    // a bf16 unit's tiles are 32 features × 32 tokens
    need(h.tile.reserve((size_t)std::max(ops_->gemm->MR, unit_ ? 32 : 0) * NR));
    Consumer& c = h.cons;
    c = Consumer();
    c.st = &h;
    c.tok0 = h.tok0;
    c.F = F;
    size_t tmpV = 1;
    switch (kind) {
      case kSelDense:
        c.mode = kModeDense;
        c.denseOut = sel.dense;
        break;
      case kSelTopK: {
        c.mode = kModeToken;
        c.onMain = onTopK;
        setupTok(h.main, std::min<int64_t>(sel.num, F), h.ntok, padded);
        c.tokThr = h.main.thr.data();
        tmpV = std::max<size_t>(tmpV, (size_t)h.main.cap);
        break;
      }
      case kSelMutual: {
        c.mode = kModeGlobal;
        c.onMain = onMutual;
        const int64_t all = (int64_t)h.ntok * F;
        h.mkeep = (size_t)std::min(M, all);
        h.mcap = slackCap((int64_t)h.mkeep, all);
        if (h.mkeep > 0 && (int64_t)h.mcap < all) h.mcap = std::max<size_t>(h.mcap, 2 * h.mkeep + 4096);
        h.mcap = std::min<size_t>(h.mcap, (size_t)all);
        need(h.mb.reserve(std::max<size_t>(h.mcap, 1)));
        need(h.rcount.reserve((size_t)h.ntok + 1));
        need(h.tmpM.reserve(std::max<size_t>(h.mcap, 1)));
        tmpV = std::max(tmpV, h.mcap);
        h.mcnt = 0;
        h.mfull = false;
        h.mthr = h.mkeep > 0 ? 0.0f : kInf;
        c.globalThr = &h.mthr;
        break;
      }
      case kSelFeature: {
        c.mode = kModeFeature;
        c.onMain = onFeature;
        need(h.foff.reserve((size_t)F + 1));
        need(h.fcnt.reserve((size_t)F));
        need(h.fkeep.reserve((size_t)F));
        need(h.fcap.reserve((size_t)F));
        need(h.fthr.reserve((size_t)F));
        int64_t off = 0;
        size_t widest = 1;
        for (int j = 0; j < F; j++) {
          const int64_t keepAll = std::min<int64_t>(std::max<int32_t>(sel.cap[j], 0), B);
          if (t == 0) featKeepTotal += keepAll;
          const int64_t keep = std::min<int64_t>(keepAll, h.ntok);
          const size_t cap = keep <= 0 ? 0 : keep <= kSmallKeep ? (size_t)keep : (keep >= h.ntok ? (size_t)h.ntok : slackCap(keep, h.ntok));
          h.fkeep[j] = (int32_t)keep;
          h.fcap[j] = (int32_t)cap;
          h.fcnt[j] = 0;
          h.fthr[j] = keep > 0 ? 0.0f : kInf;
          h.foff[j] = off;
          off += (int64_t)cap;
          widest = std::max(widest, cap);
        }
        h.foff[F] = off;
        need(h.fb.reserve(std::max<int64_t>(off, 1)));
        tmpV = std::max(tmpV, widest);
        c.featThr = h.fthr.data();
        break;
      }
      case kSelRelu:
      case kSelJumpRelu:
      case kSelGlobal: {
        c.mode = kModeFeature;
        c.onMain = onRelu;
        c.featThr = cut_.data();
        need(h.rl.reserve((size_t)h.ntok * std::min(F, 64) + 1024));
        need(h.rcount.reserve((size_t)h.ntok + 1));
        h.rn = 0;
        h.oom = false;
        break;
      }
      default:
        c.mode = kModeNone;
        break;
    }
    c.nAux = nAux;
    c.onAux = onAux;
    for (int a = 0; a < nAux; a++) {
      setupTok(h.aux[a], std::min<int64_t>(aux[a].k, F), h.ntok, padded);
      c.auxMask[a] = aux[a].mask;
      c.auxThr[a] = h.aux[a].thr.data();
      tmpV = std::max<size_t>(tmpV, (size_t)h.aux[a].cap);
    }
    need(h.tmpV.reserve(tmpV));
  }

  // ---- a bf16 unit reads W_enc rounded and packed: once per call, shared by every thread (O(F·d)
  // against the GEMM's O(B·F·d); the weights change at every optimizer step)
  const int wTiles = unit_ ? (F + unit_->rows - 1) / unit_->rows : 0;
  if (gemm && unit_) {
    need(Wb_.reserve((size_t)wTiles * unit_->rows * bf16Kp(d)));
    pool().run([&](int t) {
      const int t0 = (int)((int64_t)wTiles * t / T), t1 = (int)((int64_t)wTiles * (t + 1) / T);
      if (t1 > t0) unit_->packRows(W, d, F, t0, t1, Wb_.data());
    });
  }

  // ---- the encoder pass
  const double tSetup = now();
  pool().run([&](int t) {
    Thread& h = th_[t];
    if (kind == kSelTopK) resetTok(h.main, h.ntok);
    for (int a = 0; a < nAux; a++) resetTok(h.aux[a], h.ntok);
    if (kind == kSelRelu || kind == kSelJumpRelu || kind == kSelGlobal)
      std::memset(h.rcount.data(), 0, sizeof(int32_t) * (size_t)h.ntok);
    if (h.ntok == 0) return;
    ScanJob job;
    job.W = W;
    job.bEnc = bEnc;
    job.dense = z;
    job.d = d;
    job.F = F;
    job.tok0 = h.tok0;
    job.ntok = h.ntok;
    job.nb = nb_;
    job.tile = h.tile.data();
    job.c = &h.cons;
    if (gemm && unit_) {
      unit_->packX(x, bDec, xc, h.tok0, h.ntok, d, h.Xb.data());
      job.Xb = h.Xb.data();
      job.Wb = Wb_.data();
      unit_->scan(job);
      return;
    }
    if (gemm) {
      ops_->gemm->packX(x, bDec, xc, h.tok0, h.ntok, d, h.Xp.data());
      job.Xp = h.Xp.data();
      job.Wp = h.Wp.data();
      if (bf16_) {
        ops_->gemm->roundBf16(h.Xp.data(), ops_->gemm->packedXFloats(h.ntok, d));
        job.roundW = true;
      }
    }
    ops_->gemm->scan(job);
  });
  for (int t = 0; t < T; t++)
    if (th_[t].oom) fail("out of memory while collecting the selected entries");

  const double tScan = now();
  // ---- emit
  int o = 0;
  if (kind >= kSelTopK) {
    int64_t n = 0;
    switch (kind) {
      case kSelTopK:
        n = finalizeTok(-1, B, outs[0], res_[0], written[0]);
        break;
      case kSelMutual:
        n = finalizeMutual(M, B, outs[0], res_[0], written[0]);
        break;
      case kSelFeature:
        n = finalizeFeature(sel.cap, featKeepTotal, B, outs[0], res_[0], written[0]);
        break;
      default:
        n = finalizeRelu(B, outs[0], res_[0], written[0]);
        break;
    }
    nnz[0] = n;
    o = 1;
  }
  for (int a = 0; a < nAux; a++) nnz[o + a] = finalizeTok(a, B, outs[o + a], res_[o + a], written[o + a]);
  if (profile_) {
    const double tEnd = now();
    std::fprintf(stderr, "sae-native encode kind=%d B=%d aux=%d: setup %.2f ms, scan %.2f ms, finalize %.2f ms\n", kind, B, nAux,
                 (tSetup - t0) * 1e3, (tScan - tSetup) * 1e3, (tEnd - tScan) * 1e3);
  }
}

// Copy a pending result into (larger) caller arrays.
int64_t Instance::emitChecked(int which, const Out& out, size_t rowPtrLen) {
  if (which < 0 || which > kMaxAux) failRange("emit: no such output");
  Result& r = res_[which];
  if (!r.pending) fail("emit: nothing pending for this output");
  if (out.cap < r.nnz) failRange("emit: arrays too small");
  if (rowPtrLen < (size_t)r.B + 1) failRange("emit: rowPtr too small");
  std::memcpy(out.rowPtr, r.rowPtr.data(), sizeof(int32_t) * ((size_t)r.B + 1));
  std::memcpy(out.index, r.index.data(), sizeof(int32_t) * r.nnz);
  std::memcpy(out.value, r.value.data(), sizeof(float) * r.nnz);
  r.pending = false;
  return (int64_t)r.nnz;
}

void Instance::setupTok(TokLists& L, int64_t k, int ntok, size_t padded) {
  L.k = (int)std::max<int64_t>(k, 0);
  L.cap = (int)slackCap(L.k, (int64_t)1 << 30);
  if (L.cap == 0) L.cap = 1;
  need(L.ent.reserve((size_t)ntok * L.cap + 1));
  need(L.cnt.reserve((size_t)ntok + 1));
  need(L.thr.reserve(padded));
  (void)padded;
}

void Instance::resetTok(TokLists& L, int ntok) {
  std::memset(L.cnt.data(), 0, sizeof(int32_t) * (size_t)ntok);
  const float t0 = L.k > 0 ? 0.0f : kInf;
  float* thr = L.thr.data();
  const size_t cap = L.thr.capacity();
  for (size_t i = 0; i < cap; i++) thr[i] = i < (size_t)ntok ? t0 : kInf;
}

Dest Instance::dest(const Out& out, Result& r, int64_t nnz, int B, bool& written) {
  r.B = B;
  r.nnz = (size_t)nnz;
  if ((size_t)nnz <= out.cap) {
    written = true;
    r.pending = false;
    return Dest{out.rowPtr, out.index, out.value};
  }
  need(r.rowPtr.reserve((size_t)B + 1));
  need(r.index.reserve((size_t)nnz));
  need(r.value.reserve((size_t)nnz));
  written = false;
  r.pending = true;
  return Dest{r.rowPtr.data(), r.index.data(), r.value.data()};
}

// Per-token lists (TopK when which < 0, aux `which` otherwise) → CSR.
int64_t Instance::finalizeTok(int which, int B, const Out& out, Result& r, bool& written) {
  const int T = T_;
  pool().run([&](int t) {
    Thread& h = th_[t];
    TokLists& L = which < 0 ? h.main : h.aux[which];
    size_t tot = 0;
    for (int tl = 0; tl < h.ntok; tl++) {
      size_t c = (size_t)L.cnt[tl];
      if (c > (size_t)L.k) {
        keepOrdered(L.ent.data() + (size_t)tl * L.cap, c, (size_t)L.k, h.tmpV.data(), h.kth);
        L.cnt[tl] = (int32_t)c;
      }
      tot += c;
    }
    h.total = tot;
  });
  int64_t nnz = 0;
  for (int t = 0; t < T; t++) nnz += (int64_t)th_[t].total;
  if (nnz > INT32_MAX) fail("too many selected entries for Int32 indices");
  const Dest D = dest(out, r, nnz, B, written);
  pool().run([&](int t) {
    Thread& h = th_[t];
    TokLists& L = which < 0 ? h.main : h.aux[which];
    int64_t off = 0;
    for (int u = 0; u < t; u++) off += (int64_t)th_[u].total;
    for (int tl = 0; tl < h.ntok; tl++) {
      D.rowPtr[h.tok0 + tl] = (int32_t)off;
      const EntJ* e = L.ent.data() + (size_t)tl * L.cap;
      const int c = L.cnt[tl];
      for (int i = 0; i < c; i++) {
        D.index[off + i] = e[i].j;
        D.value[off + i] = e[i].v;
      }
      off += c;
    }
  });
  D.rowPtr[B] = (int32_t)nnz;
  return nnz;
}

int64_t Instance::finalizeMutual(int64_t M, int B, const Out& out, Result& r, bool& written) {
  const int T = T_;
  size_t N = 0;
  for (int t = 0; t < T; t++) N += th_[t].mcnt;
  bool all = (int64_t)N <= M;
  EntM tau{kInf, -1, -1};  // with M = 0 nothing is better-or-equal
  if (M == 0) all = false;
  if (!all && M > 0) {
    // The M-th best of every thread's candidates (each holds its own top M and more): its value
    // by a vectorised search over all candidate values, then, among the entries with exactly
    // that value, the boundary in flat order.
    need(mval_.reserve(N));
    size_t o = 0;
    for (int t = 0; t < T; t++) {
      const Thread& h = th_[t];
      for (size_t i = 0; i < h.mcnt; i++) mval_[o + i] = h.mb[i].v;
      o += h.mcnt;
    }
    const float vk = ops_->select->kthLargest(mval_.data(), N, (size_t)M, 31);
    size_t above = 0, eq = 0;
    for (size_t i = 0; i < N; i++) {
      above += mval_[i] > vk ? 1 : 0;
      eq += mval_[i] == vk ? 1 : 0;
    }
    need(mtmp_.reserve(std::max<size_t>(eq, 1)));
    eq = 0;
    for (int t = 0; t < T; t++) {
      const Thread& h = th_[t];
      for (size_t i = 0; i < h.mcnt; i++)
        if (h.mb[i].v == vk) mtmp_[eq++] = h.mb[i];
    }
    const size_t needEq = (size_t)M - above;  // ≤ eq; 0 when exactly M values are > vk
    if (needEq > 0) {
      std::nth_element(mtmp_.data(), mtmp_.data() + (needEq - 1), mtmp_.data() + eq, BetterM());
      tau = mtmp_[needEq - 1];
    } else {
      tau = EntM{vk, INT32_MAX, INT32_MAX};  // selects exactly the values > vk
    }
  }
  pool().run([&](int t) {
    Thread& h = th_[t];
    std::memset(h.rcount.data(), 0, sizeof(int32_t) * ((size_t)h.ntok + 1));
    size_t n = 0;
    for (size_t i = 0; i < h.mcnt; i++) {
      const EntM& e = h.mb[i];
      if (all || !betterM(tau, e)) {
        h.mb[n++] = e;
        h.rcount[e.b - h.tok0]++;
      }
    }
    h.mcnt = n;
    h.total = n;
  });
  int64_t nnz = 0;
  for (int t = 0; t < T; t++) nnz += (int64_t)th_[t].total;
  if (nnz > INT32_MAX) fail("too many selected entries for Int32 indices");
  const Dest D = dest(out, r, nnz, B, written);
  pool().run([&](int t) { scatterByToken(th_[t], t, D); });
  D.rowPtr[B] = (int32_t)nnz;
  return nnz;
}

// Thread t owns a contiguous range of tokens whose per-token counts are in h.rcount: write their
// CSR row starts (after the entries of threads < t) and turn rcount into write cursors.
int32_t* Instance::rowCursors(Thread& h, int t, const Dest& D) {
  int64_t off = 0;
  for (int u = 0; u < t; u++) off += (int64_t)th_[u].total;
  int32_t* cur = h.rcount.data();
  for (int tl = 0; tl < h.ntok; tl++) {
    const int32_t c = cur[tl];
    D.rowPtr[h.tok0 + tl] = (int32_t)off;
    cur[tl] = (int32_t)off;
    off += c;
  }
  return cur;
}

// Thread t's selected mutual entries (scan order: per token ascending j) → its CSR rows.
void Instance::scatterByToken(Thread& h, int t, const Dest& D) {
  int32_t* cur = rowCursors(h, t, D);
  for (size_t i = 0; i < h.mcnt; i++) {
    const EntM& e = h.mb[i];
    const int32_t p = cur[e.b - h.tok0]++;
    D.index[p] = e.j;
    D.value[p] = e.v;
  }
}

int64_t Instance::finalizeFeature(const int32_t* capacity, int64_t keepTotal, int B, const Out& out, Result& r,
                        bool& written) {
  const int T = T_;
  const int F = F_;
  need(fgoff_.reserve((size_t)F + 1));
  need(fgcnt_.reserve((size_t)F));
  int64_t off = 0;
  for (int j = 0; j < F; j++) {
    fgoff_[j] = off;
    for (int t = 0; t < T; t++) off += th_[t].fcnt[j];
  }
  fgoff_[F] = off;
  (void)keepTotal;
  need(ftmp_.reserve(std::max<int64_t>(off, 1)));
  for (int t = 0; t < T; t++) {
    need(th_[t].tokCount.reserve((size_t)B + 1));
    need(th_[t].tmpV.reserve((size_t)std::max(B, 1)));
  }
  // phase 1 (features split evenly): merge the threads' lists, keep the best m_j
  pool().run([&](int t) {
    Thread& h = th_[t];
    std::memset(h.tokCount.data(), 0, sizeof(int32_t) * (size_t)B);
    const int j0 = (int)((int64_t)F * t / T), j1 = (int)((int64_t)F * (t + 1) / T);
    for (int j = j0; j < j1; j++) {
      EntB* dst = ftmp_.data() + fgoff_[j];
      size_t n = 0;
      for (int u = 0; u < T; u++) {
        const Thread& g = th_[u];
        const EntB* src = g.fb.data() + g.foff[j];
        const int c = g.fcnt[j];
        for (int i = 0; i < c; i++) dst[n++] = EntB{src[i].v, src[i].b + g.tok0};
      }
      const size_t keep = (size_t)std::min<int64_t>(std::max<int32_t>(capacity[j], 0), B);
      if (n > keep) {
        if (keep == 0) {
          n = 0;
        } else {
          keepOrdered(dst, n, keep, h.tmpV.data(), h.kth);
        }
      }
      fgcnt_[j] = (int32_t)n;
      for (size_t i = 0; i < n; i++) h.tokCount[dst[i].b]++;
    }
  });
  // rows, and where each thread's entries of each row start (threads own ascending features)
  int64_t nnz = 0;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) nnz += th_[t].tokCount[b];
  if (nnz > INT32_MAX) fail("too many selected entries for Int32 indices");
  const Dest D = dest(out, r, nnz, B, written);
  int64_t pos = 0;
  for (int b = 0; b < B; b++) {
    D.rowPtr[b] = (int32_t)pos;
    for (int t = 0; t < T; t++) {
      const int32_t c = th_[t].tokCount[b];
      th_[t].tokCount[b] = (int32_t)pos;
      pos += c;
    }
  }
  D.rowPtr[B] = (int32_t)nnz;
  pool().run([&](int t) {
    Thread& h = th_[t];
    const int j0 = (int)((int64_t)F * t / T), j1 = (int)((int64_t)F * (t + 1) / T);
    for (int j = j0; j < j1; j++) {
      const EntB* e = ftmp_.data() + fgoff_[j];
      const int n = fgcnt_[j];
      for (int i = 0; i < n; i++) {
        const int32_t p = h.tokCount[e[i].b]++;
        D.index[p] = j;
        D.value[p] = e[i].v;
      }
    }
  });
  return nnz;
}

int64_t Instance::finalizeRelu(int B, const Out& out, Result& r, bool& written) {
  const int T = T_;
  int64_t nnz = 0;
  for (int t = 0; t < T; t++) {
    th_[t].total = th_[t].rn;
    nnz += (int64_t)th_[t].rn;
  }
  if (nnz > INT32_MAX) fail("too many selected entries for Int32 indices");
  const Dest D = dest(out, r, nnz, B, written);
  pool().run([&](int t) {
    Thread& h = th_[t];
    int32_t* cur = rowCursors(h, t, D);
    for (size_t i = 0; i < h.rn; i++) {
      const ReluEnt& e = h.rl[i];
      const int32_t p = cur[e.tl]++;
      D.index[p] = e.j;
      D.value[p] = e.v;
    }
  });
  D.rowPtr[B] = (int32_t)nnz;
  return nnz;
}

}  // namespace sae
