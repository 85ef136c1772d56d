"""PyTorch reference for the lab's degradation recipe (docs/LAB.md).

Trains the CIFAR plain-N and ResNet-N nets (option-A shortcuts, 16/32/64 channels, one input channel) on a
class-balanced Fashion-MNIST subset with the recipe of `resnet experiment degradation`: SGD momentum 0.9, batch
128, lr 0.1 with a per-iteration cosine schedule, weight decay 1e-4 on every parameter, pad-4 random crops and
horizontal flips, torchvision's initialisation. It is an independent implementation of the same experiment,
used to tell the recipe's behaviour from ours; it is never part of CI.

    python tools/lab_reference.py --data DIR --depths 20,56 --epochs 8 --seeds 0,1 --out ref.jsonl

Prints and appends one JSON line per run: final training-set error (evaluation mode), test error, and the
training error (mean over the batches) every 40 iterations. Runs on CUDA when available.
"""

import argparse
import gzip
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def idx(path):
    b = gzip.decompress(open(path, "rb").read()) if path.endswith(".gz") else open(path, "rb").read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b[4 + 4 * nd :], np.uint8).reshape(dims)


def balanced(x, y, per_class):
    taken, keep = [0] * 10, []
    for i, c in enumerate(y):
        if taken[c] < per_class:
            taken[c] += 1
            keep.append(i)
    return x[keep], y[keep]


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride, residual):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.residual, self.stride, self.pad = residual, stride, c_out - c_in

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            s = x[:, :, :: self.stride, :: self.stride]
            if self.pad:
                s = F.pad(s, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            y = y + s
        return F.relu(y)


class CifarNet(nn.Module):
    def __init__(self, depth, residual):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c = [], 16
        for stage, w in enumerate([16, 32, 64]):
            for i in range(n):
                blocks.append(Block(c, w, 2 if stage > 0 and i == 0 else 1, residual))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def augment(x, gen):
    b = x.shape[0]
    xp = F.pad(x, (4, 4, 4, 4))
    oy = torch.randint(0, 9, (b,), generator=gen, device="cpu").to(x.device)
    ox = torch.randint(0, 9, (b,), generator=gen, device="cpu").to(x.device)
    ar = torch.arange(28, device=x.device)
    rows = (oy[:, None] + ar)[:, :, None]
    cols = (ox[:, None] + ar)[:, None, :]
    out = xp[torch.arange(b, device=x.device)[:, None, None], 0, rows, cols][:, None]
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@torch.no_grad()
def error(model, x, y):
    model.eval()
    wrong = sum((model(x[i : i + 1000]).argmax(1) != y[i : i + 1000]).sum().item() for i in range(0, len(x), 1000))
    model.train()
    return wrong / len(x)


def run(depth, residual, seed, xs, ys, xt, yt, epochs, batch=128):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = xs.device
    model = CifarNet(depth, residual).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    steps = math.ceil(len(xs) / batch)
    total = epochs * steps
    curve, acc_err, acc_n, it = [], 0.0, 0, 0
    t0 = time.time()
    for _ in range(epochs):
        perm = torch.randperm(len(xs), generator=gen).to(dev)
        for s in range(steps):
            lr = 0.05 * (1 + math.cos(math.pi * it / total))
            for g in opt.param_groups:
                g["lr"] = lr
            b = perm[s * batch : (s + 1) * batch]
            out = model(augment(xs[b], gen))
            loss = F.cross_entropy(out, ys[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc_err += (out.argmax(1) != ys[b]).sum().item()
            acc_n += len(b)
            it += 1
            if it % 40 == 0 or it == total:
                curve.append([it, acc_err / acc_n])
                acc_err, acc_n = 0.0, 0
    name = f"{'resnet' if residual else 'plain'}{depth}"
    return {
        "net": name,
        "seed": seed,
        "epochs": epochs,
        "iterations": total,
        "train_set_error": error(model, xs, ys),
        "test_error": error(model, xt, yt),
        "seconds": time.time() - t0,
        "curve": curve,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--depths", default="20,56")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--kinds", default="plain,resnet", help="which nets: plain, resnet or both")
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=500)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    sets = {}
    for split, n in [("train", a.train_per_class), ("t10k", a.test_per_class)]:
        x = idx(f"{a.data}/{split}-images-idx3-ubyte.gz")
        y = idx(f"{a.data}/{split}-labels-idx1-ubyte.gz")
        x, y = balanced(x, y, n)
        x = (torch.tensor(x, dtype=torch.float32)[:, None] / 255 - 0.286) / 0.353
        sets[split] = (x.to(dev), torch.tensor(y, dtype=torch.int64).to(dev))
    for seed in [int(s) for s in a.seeds.split(",")]:
        for residual in [k == "resnet" for k in a.kinds.split(",")]:
            for depth in [int(d) for d in a.depths.split(",")]:
                r = run(depth, residual, seed, *sets["train"], *sets["t10k"], a.epochs)
                line = json.dumps(r)
                print(
                    f"{r['net']} seed {seed} {r['iterations']} it: train-set {100 * r['train_set_error']:.2f}% "
                    f"test {100 * r['test_error']:.2f}% ({r['seconds']:.0f} s)",
                    flush=True,
                )
                with open(a.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
