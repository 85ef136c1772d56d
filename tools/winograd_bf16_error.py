"""Error of Winograd convolution with its transformed input and filter rounded to bf16.

Why the bf16 inference plans keep 3x3 stride-1 layers in f32 Winograd (docs/BENCHMARKS.md,
"bf16 inference"): for ResNet-50's 3x3 shapes, random inputs after a ReLU and He-initialised
filters, prints the relative L2 error against an f64 convolution of

* a direct convolution of bf16-rounded input and filter (what our bf16 kernels compute),
* Winograd F(m, 3) with V = B^T d B and U = G g G^T rounded to bf16 (sums in f64), for several
  sets of interpolation points,
* the same with only the positions whose error is smallest in bf16, counting how many of the
  36 positions of F(4, 3) fit within the direct convolution's error.

    python tools/winograd_bf16_error.py      (needs torch and numpy: tools/requirements.txt)
"""

import numpy as np
import torch


def bf16(t):
    return t.to(torch.bfloat16).to(t.dtype)


def cook_toom(points, m):
    """B^T, G, A^T of F(m, 3) from finite points plus infinity."""
    p = np.array(points, dtype=np.float64)
    a = len(p) + 1
    at = np.zeros((m, a))
    for j, x in enumerate(p):
        at[:, j] = [x**i for i in range(m)]
    at[m - 1, a - 1] = 1
    n = [np.prod([x - y for y in p if y != x]) for x in p]
    g = np.zeros((a, 3))
    for j, x in enumerate(p):
        g[j] = [x**i / n[j] for i in range(3)]
    g[a - 1, 2] = 1
    bt = np.zeros((a, a))
    poly = np.poly(p)
    for j, x in enumerate(p):
        bt[j, : a - 1] = np.polydiv(poly, [1, -x])[0][::-1]
    bt[a - 1, :] = poly[::-1]
    return [torch.tensor(v) for v in (bt, g, at)]


def winograd(x, w, mats, m, rounded):
    """3x3 convolution, padding 1, by F(m, 3); `rounded` is a bool mask of the a x a positions in bf16."""
    bt, g, at = mats
    a = m + 2
    n, c, h, wd = x.shape
    th, tw = -(-h // m), -(-wd // m)
    xp = torch.nn.functional.pad(x, (1, tw * m + a - m - 1 - wd, 1, th * m + a - m - 1 - h))
    d = xp.unfold(2, a, m).unfold(3, a, m)
    v = torch.einsum("ij,nctwjk,lk->nctwil", bt, d, bt)
    u = torch.einsum("ij,kcjl,ml->kcim", g, w, g)
    mask = torch.tensor(rounded)
    v, u = torch.where(mask, bf16(v), v), torch.where(mask, bf16(u), u)
    mm = torch.einsum("nctwij,kcij->nktwij", v, u)
    y = torch.einsum("ij,nktwjl,ml->nktwim", at, mm, at)
    return y.permute(0, 1, 2, 4, 3, 5).reshape(n, -1, th * m, tw * m)[:, :, :h, :wd]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    torch.manual_seed(0)
    sets = {
        "F(2,3) 0,+-1": ([0, 1, -1], 2),
        "F(3,3) 0,+-1,2": ([0, 1, -1, 2], 3),
        "F(4,3) 0,+-1,+-2": ([0, 1, -1, 2, -2], 4),
        "F(4,3) 0,+-1,+-1/2": ([0, 1, -1, 0.5, -0.5], 4),
        "F(4,3) 0,+-1,2,-1/2": ([0, 1, -1, 2, -0.5], 4),
    }
    for c, side in [(64, 56), (128, 28), (256, 14), (512, 7)]:
        x = torch.relu(torch.randn(2, c, side, side, dtype=torch.float64))
        w = torch.randn(c, c, 3, 3, dtype=torch.float64) * np.sqrt(2 / (9 * c))
        ref = torch.nn.functional.conv2d(x, w, padding=1)
        direct = rel(torch.nn.functional.conv2d(bf16(x), bf16(w), padding=1), ref)
        row = [f"{c}x{side}x{side}: direct bf16 {direct:.2e}"]
        for name, (points, m) in sets.items():
            full = np.ones((m + 2, m + 2), bool)
            row.append(f"{name} {rel(winograd(x, w, cook_toom(points, m), m, full), ref):.2e}")
        print("; ".join(row))
    # Positions of F(4, 3) in bf16, best first, until the direct error is reached.
    c, side = 128, 28
    x = torch.relu(torch.randn(2, c, side, side, dtype=torch.float64))
    w = torch.randn(c, c, 3, 3, dtype=torch.float64) * np.sqrt(2 / (9 * c))
    ref = torch.nn.functional.conv2d(x, w, padding=1)
    direct = rel(torch.nn.functional.conv2d(bf16(x), bf16(w), padding=1), ref)
    mats = cook_toom([0, 1, -1, 2, -2], 4)
    alone = []
    for p in range(36):
        one = np.zeros(36, bool)
        one[p] = True
        alone.append(rel(winograd(x, w, mats, 4, one.reshape(6, 6)), ref))
    mask = np.zeros(36, bool)
    for k, p in enumerate(np.argsort(alone)):
        mask[p] = True
        err = rel(winograd(x, w, mats, 4, mask.reshape(6, 6)), ref)
        if err > direct:
            print(f"F(4,3), {c}x{side}x{side}: {k} of 36 positions in bf16 stay within the direct error {direct:.2e}")
            break


if __name__ == "__main__":
    main()
