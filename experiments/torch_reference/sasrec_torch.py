"""A plain PyTorch SASRec epoch, written the way common PyTorch implementations do it (SASRec.pytorch,
RecBole): every sequence padded to max_len, nn.TransformerEncoder-style pre-LN blocks, and full
cross-entropy from one [B, T, V] logits tensor. Used only to time an epoch next to seqjax.

    python sasrec_torch.py SEQUENCES.npz [--epochs 1] [--threads 2]
"""

import argparse
import time

import numpy as np
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        x = x + self.drop(a)
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRec(nn.Module):
    def __init__(self, num_items, max_len, dim=64, heads=1, blocks=2, dropout=0.2):
        super().__init__()
        self.items = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1))

    def forward(self, seq):
        x = self.items(seq) * self.items.embedding_dim ** 0.5 + self.pos.weight[None, : seq.shape[1]]
        x = self.drop(x)
        for b in self.blocks:
            x = b(x, self.mask[: seq.shape[1], : seq.shape[1]])
        return self.norm(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sequences")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    z = np.load(args.sequences)
    flat, offsets, num_items = z["items"], z["offsets"], int(z["num_items"])
    seqs = [flat[offsets[i]:offsets[i + 1]][-(args.max_len + 1):] for i in range(len(offsets) - 1)]
    seqs = [s for s in seqs if len(s) > 1]
    inputs = np.zeros((len(seqs), args.max_len), np.int64)
    targets = np.zeros((len(seqs), args.max_len), np.int64)
    for r, s in enumerate(seqs):  # left padding, as SASRec.pytorch does
        n = len(s) - 1
        inputs[r, -n:], targets[r, -n:] = s[:-1], s[1:]
    model = SASRec(num_items, args.max_len)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    loss_fn = nn.CrossEntropyLoss(ignore_index=0)
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        order = np.random.default_rng(epoch).permutation(len(seqs))
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            x, y = torch.from_numpy(inputs[idx]), torch.from_numpy(targets[idx])
            h = model(x)
            logits = h @ model.items.weight.T  # [B, T, V+1]
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"torch epoch {epoch}: {time.perf_counter() - t0:.1f} s, loss {loss.item():.3f}", flush=True)


if __name__ == "__main__":
    main()
