"""An independent PyTorch SASRec+ trainer with K&V's published setup (RecSys 2023), used to check that
seqjax's SASRec learns as fast per epoch on the same data. Written from their paper and code's settings:
the SASRec authors' block wiring (queries from LN(x), keys/values from x, residual from the normalised
stream, FFN residual from its LN output), dropout 0.1 (embeddings, attention weights, FFN), N(0, 0.02)
init except the attention in_proj (torch's Xavier), LayerNorm eps 1e-8, tied output embedding, full
softmax CE averaged over a batch's real positions, plain Adam lr 1e-3, batch 128, right padding to the
batch's longest sequence, every user once per epoch in random order.

Validation each epoch: NDCG@10 / HR@10 on every user's second-last item, full catalogue, seen items
removed; test at the best validation epoch.

    python sasrec_kv_torch.py SEQUENCES.npz [--epochs 100] [--patience 10] [--seed 0] [--threads 2]

SEQUENCES.npz comes from `experiments/sasrec_quality_vs_torch.py` (train sequences + targets).
"""

import argparse
import copy
import math
import time

import numpy as np
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout), nn.ReLU(),
                                 nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x, causal, real):
        q = self.attn_norm(x)
        a, _ = self.attn(q, x, x, attn_mask=causal, need_weights=False)
        h = self.ffn_norm(q + a)
        return (h + self.ffn(h)) * real


class SASRec(nn.Module):
    def __init__(self, num_items, max_len, dim=64, heads=1, blocks=2, dropout=0.1):
        super().__init__()
        self.items = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim, eps=1e-8)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):  # MHA's in_proj is a bare Parameter: Xavier stays
                nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq):
        t = seq.shape[1]
        real = (seq != 0).unsqueeze(-1).float()
        x = self.items(seq) * math.sqrt(self.items.embedding_dim) + self.pos.weight[None, :t]
        x = self.drop(x) * real
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        for b in self.blocks:
            x = b(x, causal, real)
        return self.norm(x)


def pad_right(seqs):
    out = np.zeros((len(seqs), max(len(s) for s in seqs)), np.int64)
    for r, s in enumerate(seqs):
        out[r, :len(s)] = s
    return torch.from_numpy(out)


@torch.no_grad()
def ranking(model, histories, targets, max_len, batch=256):
    """NDCG@10, HR@10 over users: full catalogue, the user's history removed, padding never ranked."""
    model.eval()
    ndcg = hits = 0.0
    for i in range(0, len(histories), batch):
        hist = histories[i:i + batch]
        seq = pad_right([h[-max_len:] for h in hist])
        h = model(seq)
        last = h[torch.arange(len(hist)), (seq != 0).sum(1) - 1]
        scores = last @ model.items.weight.T
        scores[:, 0] = -torch.inf
        for r, past in enumerate(hist):
            scores[r, torch.from_numpy(past.astype(np.int64))] = -torch.inf
        tgt = torch.from_numpy(targets[i:i + batch].astype(np.int64))
        rank = (scores > scores[torch.arange(len(hist)), tgt][:, None]).sum(1)  # 0-based
        hit = rank < 10
        hits += hit.sum().item()
        ndcg += (hit.float() / torch.log2(rank.float() + 2)).sum().item()
    model.train()
    return ndcg / len(histories), hits / len(histories)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sequences")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    z = np.load(args.sequences)
    flat, offsets = z["items"], z["offsets"]
    train = [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    valid_t, test_t = z["valid_target"], z["test_target"]
    test_hist = [np.append(s, v) for s, v in zip(train, valid_t)]
    windows = [s[-(args.max_len + 1):] for s in train if len(s) > 1]
    model = SASRec(int(z["num_items"]), args.max_len)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    rng = np.random.default_rng(args.seed)
    best, best_epoch, best_state = -1.0, -1, None
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(len(windows))
        for i in range(0, len(order), args.batch_size):
            rows = [windows[j] for j in order[i:i + args.batch_size]]
            x = pad_right([w[:-1] for w in rows])
            y = pad_right([w[1:] for w in rows])
            y[x == 0] = -100
            logits = model(x) @ model.items.weight.T  # K&V's head: padding class 0 included
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_s = time.perf_counter() - t0
        ndcg, hr = ranking(model, train, valid_t, args.max_len)
        print(f"epoch {epoch} train_s {train_s:.1f} loss {loss.item():.4f} valid NDCG@10 {ndcg:.4f} HR@10 {hr:.4f}",
              flush=True)
        if ndcg > best:
            best, best_epoch, best_state = ndcg, epoch, copy.deepcopy(model.state_dict())
        elif args.patience and epoch - best_epoch >= args.patience:  # 0 = never stop early
            break
    model.load_state_dict(best_state)
    ndcg, hr = ranking(model, test_hist, test_t, args.max_len)
    print(f"test at best epoch {best_epoch} (valid NDCG@10 {best:.4f}): NDCG@10 {ndcg:.4f} HR@10 {hr:.4f}", flush=True)


if __name__ == "__main__":
    main()
