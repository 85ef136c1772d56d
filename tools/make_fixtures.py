#!/usr/bin/env python3
"""Writes the golden fixtures under tests/fixtures/ with PyTorch and Pillow.

Run from the repository root (CI never runs this; it only reads the output):

    python3 -m venv /tmp/venv
    /tmp/venv/bin/pip install -r tools/requirements.txt
    /tmp/venv/bin/python tools/make_fixtures.py

Everything is seeded or computed by formula, so a rerun reproduces the files.
Large networks get their weights from `formula()` below, which the Rust side
computes bit for bit (`resnet::model::init::formula_value`), so the fixture
holds only expected logits.
"""

import io
import json
import math
import os
import shutil
import struct
import sys
import zlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

# --------------------------------------------------------------------------------------
# The deterministic weight formula (mirrors crates/resnet/src/model/init.rs).


def formula_u(key, n):
    """SplitMix64 of (element index + key hash): uniform in [-0.5, 0.5)."""
    h = sum(key.encode())
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64(h) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 9007199254740992.0 - 0.5


def formula(key, shape):
    n = int(np.prod(shape)) if len(shape) else 1
    u = formula_u(key, n)
    fan_in = max(int(np.prod(shape[1:])) if len(shape) > 1 else 1, 1)
    if len(shape) == 4:
        v = u * math.sqrt(24.0 / fan_in)
    elif len(shape) == 2:
        v = u * math.sqrt(12.0 / fan_in)
    elif key.endswith("running_var"):
        v = 1.0 + 0.5 * u
    elif key.endswith("weight"):
        v = 0.5 + 0.5 * u
    else:
        v = 0.2 * u
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def formula_input(shape):
    """Test input: uniform with unit variance (mirrors tests/common)."""
    n = int(np.prod(shape))
    return torch.from_numpy((formula_u("input", n) * 3.4641016151377544).astype(np.float32).reshape(shape))


def apply_formula(model):
    sd = model.state_dict()
    new = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            new[k] = v
        else:
            new[k] = formula(k, list(v.shape))
    model.load_state_dict(new)


# --------------------------------------------------------------------------------------
# The CIFAR and pre-activation families, with torchvision-style names.


class PadShortcut(nn.Module):
    """Option A: subsample, zero-pad channels (half before, half after)."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride

    def forward(self, x):
        p = (self.c_out - self.c_in) // 2
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, p, self.c_out - self.c_in - p))


def shortcut_for(kind, c_in, c_out, stride, preact=False):
    reshape = stride != 1 or c_in != c_out
    if kind == "none":
        return None, None
    if kind == "A":
        return (None, PadShortcut(c_in, c_out, stride)) if reshape else (None, "identity")
    if kind == "B" and not reshape:
        return None, "identity"
    conv = nn.Conv2d(c_in, c_out, 1, stride, bias=False)
    if preact:
        return nn.Sequential(conv), None
    return nn.Sequential(conv, nn.BatchNorm2d(c_out)), None


class Basic(nn.Module):
    expansion = 1

    def __init__(self, c_in, planes, stride, kind, groups=1, width=None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample, self.other = shortcut_for(kind, c_in, planes, stride)
        if isinstance(self.other, nn.Module):
            self.shortcut = self.other

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            out = out + self.downsample(x)
        elif self.other == "identity":
            out = out + x
        elif self.other is not None:
            out = out + self.other(x)
        return F.relu(out)


class PreActBasic(nn.Module):
    def __init__(self, c_in, planes, stride, kind, groups=1, width=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.downsample, self.other = shortcut_for(kind, c_in, planes, stride, preact=True)
        if isinstance(self.other, nn.Module):
            self.shortcut = self.other

    def branch(self, p):
        return self.conv2(F.relu(self.bn2(self.conv1(p))))

    def forward(self, x):
        p = F.relu(self.bn1(x))
        out = self.branch(p)
        if self.downsample is not None:
            return out + self.downsample(p)
        if self.other == "identity":
            return out + x
        if self.other is not None:
            return out + self.other(x)
        return out


class PreActBottleneck(PreActBasic):
    def __init__(self, c_in, planes, stride, kind, groups=1, width=None):
        nn.Module.__init__(self)
        c_out = planes * 4
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.downsample, self.other = shortcut_for(kind, c_in, c_out, stride, preact=True)
        if isinstance(self.other, nn.Module):
            self.shortcut = self.other

    def branch(self, p):
        h = self.conv2(F.relu(self.bn2(self.conv1(p))))
        return self.conv3(F.relu(self.bn3(h)))


class CifarNet(nn.Module):
    def __init__(self, block, n, kind, num_classes=10, in_channels=3, widths=(16, 32, 64)):
        super().__init__()
        preact = block in (PreActBasic, PreActBottleneck)
        expansion = 4 if block is PreActBottleneck else 1
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        if not preact:
            self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        for s, planes in enumerate(widths):
            units = []
            for i in range(n):
                stride = 2 if (i == 0 and s > 0) else 1
                units.append(block(c, planes, stride, kind))
                c = planes * expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*units))
        self.nstages = len(widths)
        if preact:
            self.bn_final = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        if not self.preact:
            x = F.relu(self.bn1(x))
        for s in range(self.nstages):
            x = getattr(self, f"layer{s + 1}")(x)
        if self.preact:
            x = F.relu(self.bn_final(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class PlainImageNet(torchvision.models.ResNet):
    """torchvision's ResNet with the shortcuts removed (plain18, plain34)."""

    def __init__(self, layers, num_classes=1000):
        super().__init__(torchvision.models.resnet.BasicBlock, layers, num_classes=num_classes)
        for m in self.modules():
            if isinstance(m, torchvision.models.resnet.BasicBlock):
                m.downsample = None
                m.forward = plain_forward.__get__(m)


def plain_forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(out)))


def build(name, num_classes=None, in_channels=3):
    tv = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
          "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"]
    if name in tv:
        m = torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000)
        if in_channels != 3:
            m.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return m
    if name in ("plain18", "plain34"):
        return PlainImageNet([2, 2, 2, 2] if name == "plain18" else [3, 4, 6, 3], num_classes or 1000)
    classes = num_classes or 10
    if name.startswith("preact_resnet"):
        d = int(name[len("preact_resnet"):])
        if d >= 164:
            return CifarNet(PreActBottleneck, (d - 2) // 9, "B", classes, in_channels)
        return CifarNet(PreActBasic, (d - 2) // 6, "B", classes, in_channels)
    for prefix, kind in (("resnet", "A"), ("plain", "none")):
        if name.startswith(prefix):
            d = int(name[len(prefix):])
            return CifarNet(Basic, (d - 2) // 6, kind, classes, in_channels)
    raise ValueError(name)


IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
            "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "plain18", "plain34"]
CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202", "plain20", "plain32", "plain44",
         "plain56", "preact_resnet110", "preact_resnet164", "preact_resnet1001"]


def network_logits():
    """Logits of every architecture with formula weights, computed in float64.

    Evaluation mode (running statistics from the formula) for every
    architecture. Training mode (batch statistics) for those where it is well
    conditioned at this batch size: with 2 images of 64x64, the last stage of
    the deep ImageNet bottleneck nets normalises 8 values per channel, and
    PyTorch's own float32 result then differs from float64 by up to 1e-3, so
    they would test nothing but luck.
    """
    out, meta = {}, {}
    evals = [(n, [2, 3, 64, 64]) for n in IMAGENET] + [(n, [2, 3, 32, 32]) for n in CIFAR]
    evals += [("resnet18", [1, 3, 224, 224]), ("resnet50", [1, 3, 224, 224]), ("resnet20", [2, 1, 28, 28])]
    train = [(n, [2, 3, 64, 64]) for n in ["resnet18", "resnet34", "plain18"]]
    train += [(n, [2, 3, 32, 32]) for n in ["resnet20", "resnet56", "resnet110", "resnet1202", "plain20",
                                            "preact_resnet110"]]
    for mode, cases in (("eval", evals), ("train", train)):
        for arch, shape in cases:
            model = build(arch, in_channels=shape[1])
            apply_formula(model)
            model.double().train(mode == "train")
            x = formula_input(shape).double()
            with torch.no_grad():
                y = model(x).float()
            key = f"{arch}@{shape[1]}x{shape[2]}:{mode}"
            out[key] = y.contiguous()
            meta[key] = json.dumps({"arch": arch, "input": shape, "mode": mode})
            print(f"  {key:36s} logits |max| {y.abs().max().item():10.3g}", flush=True)
    save_file(out, os.path.join(OUT, "logits.safetensors"), metadata=meta)


# --------------------------------------------------------------------------------------
# Any ResNetSpec (mirrors crates/resnet/src/model/network.rs), for the training golden test.


class SpecBlock(nn.Module):
    """Post-activation basic or bottleneck unit with any shortcut option."""

    def __init__(self, kind, shortcut, c_in, planes, inner, groups, stride):
        super().__init__()
        self.bottleneck = kind == "bottleneck"
        c_out = planes * (4 if self.bottleneck else 1)
        if self.bottleneck:
            self.conv1 = nn.Conv2d(c_in, inner, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(inner)
            self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, groups=groups, bias=False)
            self.bn2 = nn.BatchNorm2d(inner)
            self.conv3 = nn.Conv2d(inner, c_out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(c_out)
        else:
            self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
        reshape = stride != 1 or c_in != c_out
        self.mode = "none" if shortcut == "none" else "identity"
        if (shortcut == "b" and reshape) or shortcut == "c":
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            self.mode = "projection"
        elif shortcut == "a" and reshape:
            self.pad = PadShortcut(c_in, c_out, stride)
            self.mode = "pad"

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        if self.bottleneck:
            h = F.relu(self.bn2(self.conv2(h)))
            h = self.bn3(self.conv3(h))
        else:
            h = self.bn2(self.conv2(h))
        if self.mode == "identity":
            h = h + x
        elif self.mode == "projection":
            h = h + self.downsample(x)
        elif self.mode == "pad":
            h = h + self.pad(x)
        return F.relu(h)


class SpecPreAct(nn.Module):
    """Pre-activation unit (basic or bottleneck) with any shortcut option."""

    def __init__(self, kind, shortcut, c_in, planes, inner, groups, stride):
        super().__init__()
        bottleneck = kind == "preact_bottleneck"
        c_out = planes * (4 if bottleneck else 1)
        if bottleneck:
            dims = [(c_in, inner, 1, 1, 1), (inner, inner, 3, stride, groups), (inner, c_out, 1, 1, 1)]
        else:
            dims = [(c_in, planes, 3, stride, 1), (planes, planes, 3, 1, 1)]
        self.n = len(dims)
        for i, (ci, co, k, s, g) in enumerate(dims):
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(ci))
            setattr(self, f"conv{i + 1}", nn.Conv2d(ci, co, k, s, k // 2, groups=g, bias=False))
        reshape = stride != 1 or c_in != c_out
        self.mode = "none" if shortcut == "none" else "identity"
        if (shortcut == "b" and reshape) or shortcut == "c":
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False))
            self.mode = "projection"
        elif shortcut == "a" and reshape:
            self.pad = PadShortcut(c_in, c_out, stride)
            self.mode = "pad"

    def forward(self, x):
        h, p1 = x, None
        for i in range(self.n):
            p = F.relu(getattr(self, f"bn{i + 1}")(h))
            p1 = p if i == 0 else p1
            h = getattr(self, f"conv{i + 1}")(p)
        if self.mode == "identity":
            h = h + x
        elif self.mode == "projection":
            h = h + self.downsample(p1)
        elif self.mode == "pad":
            h = h + self.pad(x)
        return h


class SpecNet(nn.Module):
    def __init__(self, spec):
        super().__init__()
        stem, sw, kind = spec["stem"], spec["stem_width"], spec["block"]
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(spec["in_channels"], sw, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(spec["in_channels"], sw, 3, 1, 1, bias=False)
        if stem != "cifar_preact":
            self.bn1 = nn.BatchNorm2d(sw)
        preact = kind.startswith("preact")
        expansion = 4 if kind in ("bottleneck", "preact_bottleneck") else 1
        c = sw
        for s, (depth, planes) in enumerate(zip(spec["depths"], spec["widths"])):
            units = []
            for i in range(depth):
                stride = 2 if (i == 0 and s > 0) else 1
                inner = planes * spec["width_per_group"] // 64 * spec["groups"]
                cls = SpecPreAct if preact else SpecBlock
                units.append(cls(kind, spec["shortcut"], c, planes, inner, spec["groups"], stride))
                c = planes * expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*units))
        self.nstages = len(spec["depths"])
        if preact:
            self.bn_final = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, spec["num_classes"])

    def forward(self, x):
        x = self.conv1(x)
        if self.stem != "cifar_preact":
            x = F.relu(self.bn1(x))
        if self.stem == "imagenet":
            x = F.max_pool2d(x, 3, 2, 1)
        for s in range(self.nstages):
            x = getattr(self, f"layer{s + 1}")(x)
        if hasattr(self, "bn_final"):
            x = F.relu(self.bn_final(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def tiny_spec(name, stem, block, widths, shortcut, groups=1, wpg=64, in_channels=3, stem_width=4, classes=5):
    return {"name": name, "stem": stem, "stem_width": stem_width, "block": block, "depths": [1, 1],
            "widths": widths, "groups": groups, "width_per_group": wpg, "shortcut": shortcut,
            "num_classes": classes, "in_channels": in_channels}


def training_fixtures():
    """One and then three SGD steps on tiny nets covering every unit and shortcut."""
    cases = [
        (tiny_spec("basic_a", "cifar", "basic", [4, 8], "a"), [6, 3, 8, 8], 0.1),
        (tiny_spec("bottleneck_grouped_b", "imagenet", "bottleneck", [4, 8], "b", groups=2, wpg=32, stem_width=8),
         [4, 3, 16, 16], 0.0),
        (tiny_spec("preact_basic_b", "cifar_preact", "preact_basic", [4, 8], "b"), [6, 3, 8, 8], 0.0),
        (tiny_spec("preact_bottleneck_c", "cifar_preact", "preact_bottleneck", [2, 4], "c"), [6, 3, 8, 8], 0.0),
        (tiny_spec("basic_c_gray", "cifar", "basic", [4, 8], "c", in_channels=1), [6, 1, 8, 8], 0.0),
        (tiny_spec("plain", "cifar", "basic", [4, 8], "none"), [6, 3, 8, 8], 0.0),
    ]
    out, meta = {}, {}
    g = torch.Generator().manual_seed(99)
    for spec, shape, smoothing in cases:
        name = spec["name"]
        model = SpecNet(spec)
        apply_formula(model)
        model.double().train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
        batches = [(torch.randn(*shape, generator=g).double(), torch.randint(0, spec["num_classes"], (shape[0],), generator=g))
                   for _ in range(3)]
        for k, (x, y) in enumerate(batches):
            out[f"{name}.x{k}"] = x.float()
            out[f"{name}.y{k}"] = y.float()
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            if k in (0, 2):
                out[f"{name}.step{k + 1}.loss"] = loss.detach().float().reshape(1)
                for pn, p in model.named_parameters():
                    out[f"{name}.step{k + 1}.grad.{pn}"] = p.grad.detach().float().clone()
            opt.step()
            if k in (0, 2):
                for sn, v in model.state_dict().items():
                    out[f"{name}.step{k + 1}.state.{sn}"] = v.detach().float().clone() if v.is_floating_point() else v.clone()
        meta[name] = json.dumps({"spec": spec, "input": shape, "label_smoothing": smoothing, "lr": 0.1,
                                 "momentum": 0.9, "weight_decay": 5e-4})
        print(f"  {name}: loss {out[f'{name}.step1.loss'].item():.4f} -> {out[f'{name}.step3.loss'].item():.4f}")
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "training.safetensors"), metadata=meta)


# --------------------------------------------------------------------------------------
# Layer fixtures.


def layer_fixtures():
    g = torch.Generator().manual_seed(1234)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    out, meta = {}, {}
    convs = {
        "conv3x3": dict(n=2, cin=5, cout=7, h=9, w=11, k=3, s=1, p=1, d=1, g=1),
        "conv_stride_dilation": dict(n=2, cin=4, cout=6, h=13, w=12, k=3, s=2, p=2, d=2, g=1),
        "conv_grouped": dict(n=2, cin=8, cout=12, h=10, w=10, k=3, s=2, p=1, d=1, g=4),
        "conv_depthwise": dict(n=1, cin=6, cout=6, h=7, w=7, k=3, s=1, p=1, d=1, g=6),
        "conv7x7": dict(n=2, cin=3, cout=8, h=20, w=20, k=7, s=2, p=3, d=1, g=1),
        "conv1x1_s2": dict(n=2, cin=16, cout=32, h=8, w=8, k=1, s=2, p=0, d=1, g=1),
        "conv5x5_nopad": dict(n=1, cin=3, cout=4, h=9, w=7, k=5, s=1, p=0, d=1, g=1),
    }
    for name, c in convs.items():
        x = rnd(c["n"], c["cin"], c["h"], c["w"])
        w = rnd(c["cout"], c["cin"] // c["g"], c["k"], c["k"]) * 0.3
        y = F.conv2d(x, w, None, c["s"], c["p"], c["d"], c["g"])
        out[f"{name}.x"], out[f"{name}.w"], out[f"{name}.y"] = x, w, y
        meta[name] = json.dumps(c)
    # Batch norm in eval mode, with a fused ReLU variant.
    x = rnd(2, 6, 5, 5)
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.weight.copy_(rnd(6))
        bn.bias.copy_(rnd(6))
        bn.running_mean.copy_(rnd(6))
        bn.running_var.copy_(rnd(6).abs() + 0.5)
        y = bn(x)
    for k in ["weight", "bias", "running_mean", "running_var"]:
        out[f"bn.{k}"] = getattr(bn, k).detach().clone()
    out["bn.x"], out["bn.y"], out["bn.y_relu"] = x, y, F.relu(y)
    meta["bn"] = json.dumps({"eps": 1e-5})
    x = rnd(2, 4, 9, 9)
    out["maxpool.x"], out["maxpool.y"] = x, F.max_pool2d(x, 3, 2, 1)
    x = rnd(2, 4, 10, 10)
    out["maxpool_even.x"], out["maxpool_even.y"] = x, F.max_pool2d(x, 3, 2, 1)
    x = rnd(3, 5, 4, 6)
    out["gap.x"], out["gap.y"] = x, F.adaptive_avg_pool2d(x, 1).flatten(1)
    x, w, b = rnd(3, 10), rnd(4, 10), rnd(4)
    out["linear.x"], out["linear.w"], out["linear.b"], out["linear.y"] = x, w, b, F.linear(x, w, b)
    x = rnd(2, 4, 6, 6)
    out["pad_shortcut.x"], out["pad_shortcut.y"] = x, PadShortcut(4, 8, 2)(x)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "layers.safetensors"), metadata=meta)


# --------------------------------------------------------------------------------------
# Checkpoints written by PyTorch.


def checkpoint_fixtures():
    torch.manual_seed(7)
    model = build("resnet8").eval()
    # Non-trivial BN statistics: a few training-mode batches.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    model.eval()
    x = formula_input([2, 3, 32, 32])
    with torch.no_grad():
        y = model(x)
    sd = model.state_dict()
    torch.save(sd, os.path.join(OUT, "resnet8.pth"))
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(OUT, "resnet8.safetensors"))
    # A training checkpoint dict, DataParallel-style keys, half precision.
    half = {("module." + k): (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    torch.save({"epoch": 3, "arch": "resnet8", "best_acc1": torch.tensor(0.5), "state_dict": half,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]}},
               os.path.join(OUT, "resnet8_checkpoint_f16.pth"))
    model_h = build("resnet8").eval()
    model_h.load_state_dict({k[len("module."):]: v.float() for k, v in half.items()})
    with torch.no_grad():
        yh = model_h(x)
    # A legacy (pre-zip) file, for the error message.
    torch.save({"w": torch.zeros(2)}, os.path.join(OUT, "legacy.pth"), _use_new_zipfile_serialization=False)
    save_file({"logits": y.contiguous(), "logits_f16": yh.contiguous()}, os.path.join(OUT, "resnet8_logits.safetensors"))


# --------------------------------------------------------------------------------------
# Preprocessing: torchvision's PIL path on real photos and synthetic PNG variants.


def png16(arr, color_type):
    """Encodes an HxWxC uint16 array as a 16-bit PNG (Pillow cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def jpeg_variants(data, photos):
    """JPEGs of every kind Pillow reads, cut from the public-domain/CC0 photos
    (chelsea and coffee CC0, astronaut NASA public domain): baseline 4:4:4,
    4:2:2 and 4:2:0, progressive, gray, Adobe CMYK, YCCK and RGB (the last two
    written with imagecodecs' libjpeg-turbo, as Pillow cannot write them),
    restart markers with an EXIF orientation, and sizes that are not whole
    MCUs, and damaged files Pillow decodes anyway. The reference is Pillow's
    own decoding (preprocess_fixtures)."""
    import imagecodecs

    def cut(name, top, left, h, w):
        return Image.open(os.path.join(data, name)).convert("RGB").crop((left, top, left + w, top + h))

    def save(img, name, **kw):
        img.save(os.path.join(photos, name), "JPEG", **kw)

    save(cut("chelsea.png", 60, 100, 121, 161), "jpeg_444.jpg", quality=95, subsampling=0)
    save(cut("coffee.png", 100, 200, 123, 157), "jpeg_422.jpg", quality=90, subsampling=1)
    save(cut("astronaut.png", 40, 150, 125, 163), "jpeg_420.jpg", quality=85, subsampling=2)
    save(cut("chelsea.png", 150, 200, 119, 167), "jpeg_progressive.jpg", quality=90, progressive=True)
    save(cut("coffee.png", 250, 300, 117, 151), "jpeg_progressive_444.jpg", quality=92, subsampling=0,
         progressive=True, optimize=True)
    save(cut("astronaut.png", 200, 50, 127, 149).convert("L"), "jpeg_gray.jpg", quality=90)
    save(cut("chelsea.png", 20, 20, 113, 155).convert("L"), "jpeg_gray_progressive.jpg", quality=88,
         progressive=True)
    save(cut("coffee.png", 10, 350, 121, 159).convert("CMYK"), "jpeg_cmyk.jpg", quality=90)
    cmyk = np.array(cut("astronaut.png", 300, 250, 115, 147).convert("CMYK"))
    with open(os.path.join(photos, "jpeg_ycck.jpg"), "wb") as f:
        f.write(imagecodecs.jpeg8_encode(cmyk, level=90, colorspace="CMYK", outcolorspace="YCCK"))
    rgb = np.array(cut("chelsea.png", 200, 300, 111, 141))
    with open(os.path.join(photos, "jpeg_adobe_rgb.jpg"), "wb") as f:
        f.write(imagecodecs.jpeg8_encode(rgb, level=90, colorspace="RGB", outcolorspace="RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 (Pillow ignores it unless asked)
    save(cut("astronaut.png", 350, 350, 109, 139), "jpeg_restart_exif.jpg", quality=80, subsampling=2,
         restart_marker_blocks=5, exif=exif)
    save(cut("coffee.png", 5, 5, 13, 17), "jpeg_tiny.jpg", quality=75, subsampling=2)
    # Damaged files Pillow still decodes: a scan cut short by an end marker
    # (the rest is gray), and a baseline file without its end marker.
    for name, out in [("jpeg_progressive.jpg", "jpeg_cut_progressive.jpg"), ("jpeg_422.jpg", "jpeg_cut_baseline.jpg")]:
        b = open(os.path.join(photos, name), "rb").read()
        with open(os.path.join(photos, out), "wb") as f:
            f.write(b[: len(b) * 2 // 3] + b"\xff\xd9")
    b = open(os.path.join(photos, "jpeg_420.jpg"), "rb").read()
    assert b.endswith(b"\xff\xd9")
    with open(os.path.join(photos, "jpeg_no_end.jpg"), "wb") as f:
        f.write(b[:-2])


def feature_fixtures():
    """Outputs of named layers, from torchvision's create_feature_extractor
    (formula weights and input, float64, evaluation mode): our layer name ->
    the node torchvision returns for it (the stem's activation is `relu`, or
    `conv1` in pre-activation nets; our pooled `avgpool` is `flatten`)."""
    from torchvision.models.feature_extraction import create_feature_extractor

    cases = [
        ("resnet18", [2, 3, 32, 32], {"stem": "relu", "maxpool": "maxpool", "layer1": "layer1",
                                      "layer2.1": "layer2.1", "layer3": "layer3", "layer4": "layer4",
                                      "avgpool": "flatten", "fc": "fc"}),
        ("resnext50_32x4d", [1, 3, 32, 32], {"layer1": "layer1", "layer3": "layer3", "avgpool": "flatten"}),
        ("resnet20", [2, 3, 16, 16], {"stem": "relu", "layer1": "layer1", "layer2.1": "layer2.1",
                                      "layer3": "layer3", "avgpool": "flatten", "fc": "fc"}),
        ("preact_resnet110", [1, 3, 16, 16], {"stem": "conv1", "layer2": "layer2", "layer3": "layer3",
                                              "avgpool": "flatten"}),
    ]
    out, meta = {}, {}
    for arch, shape, layers in cases:
        model = build(arch)
        apply_formula(model)
        model.double().eval()
        fx = create_feature_extractor(model, return_nodes={tv: ours for ours, tv in layers.items()})
        with torch.no_grad():
            y = fx(formula_input(shape).double())
        key = f"{arch}@{shape[2]}x{shape[3]}"
        meta[key] = json.dumps({"arch": arch, "input": shape, "layers": list(layers)})
        for ours in layers:
            out[f"{key}:{ours}"] = y[ours].float().contiguous()
            print(f"  {key}:{ours:10s} {list(y[ours].shape)}", flush=True)
    save_file(out, os.path.join(OUT, "features.safetensors"), metadata=meta)


def jpeg_logits():
    """Logits and pooled features of ResNet-18 (formula weights, float64) on
    real JPEGs through torchvision's whole classification path: PIL decoding,
    Resize(256), CenterCrop(224), ToTensor, Normalize."""
    from torchvision import transforms as T

    t = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                   T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    model = build("resnet18")
    apply_formula(model)
    model.double().eval()
    photos = os.path.join(OUT, "images")
    names = ["rocket.jpg", "jpeg_420.jpg", "jpeg_progressive.jpg", "jpeg_gray.jpg", "jpeg_cmyk.jpg",
             "jpeg_ycck.jpg"]
    x = torch.stack([t(Image.open(os.path.join(photos, n)).convert("RGB")) for n in names]).double()
    from torchvision.models.feature_extraction import create_feature_extractor

    fx = create_feature_extractor(model, return_nodes={"flatten": "avgpool", "fc": "logits"})
    with torch.no_grad():
        out = fx(x)
    y, pooled = out["logits"].float(), out["avgpool"].float()
    save_file({"logits": y.contiguous(), "avgpool": pooled.contiguous()},
              os.path.join(OUT, "jpeg_logits.safetensors"), metadata={"images": json.dumps(names)})


def preprocess_fixtures():
    import skimage

    from torchvision.transforms import v2  # noqa: F401  (torchvision's current API)
    from torchvision import transforms as T

    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    photos = os.path.join(OUT, "images")
    os.makedirs(photos, exist_ok=True)
    for f in ["chelsea.png", "coffee.png", "rocket.jpg"]:
        shutil.copy(os.path.join(data, f), os.path.join(photos, f))
    # Synthetic variants cut from chelsea: gray, gray+alpha, RGBA, palette, 16-bit.
    base = np.array(Image.open(os.path.join(data, "chelsea.png")).convert("RGB"))[100:160, 150:230]
    Image.fromarray(base).convert("L").save(os.path.join(photos, "gray.png"))
    Image.fromarray(base).convert("LA").save(os.path.join(photos, "gray_alpha.png"))
    rgba = np.dstack([base, (np.arange(base.shape[1])[None, :] * 255 // base.shape[1]).repeat(base.shape[0], 0)])
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(os.path.join(photos, "rgba.png"))
    Image.fromarray(base).convert("P", palette=Image.ADAPTIVE, colors=64).save(os.path.join(photos, "palette.png"))
    b16 = base.astype(np.uint16) * 257 + np.arange(base.size, dtype=np.uint16).reshape(base.shape) % 251
    with open(os.path.join(photos, "rgb16.png"), "wb") as f:
        f.write(png16(b16, 2))
    g16 = (base[:, :, 0].astype(np.uint16) * 3)[:, :, None]  # values up to 765: Pillow clips at 255
    with open(os.path.join(photos, "gray16.png"), "wb") as f:
        f.write(png16(g16, 0))

    jpeg_variants(data, photos)

    out = {}
    presets = {"v1": (256, 224), "v2": (232, 224), "small": (40, 32)}
    photos_full = {"chelsea.png": ["v1", "v2"], "coffee.png": ["v1"], "rocket.jpg": ["v1"]}
    for f in sorted(os.listdir(photos)):
        img = Image.open(os.path.join(photos, f)).convert("RGB")
        for preset in ["small"] + photos_full.get(f, []):
            resize, crop = presets[preset]
            t = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(crop)])
            out[f"{f}:{preset}"] = torch.from_numpy(np.array(t(img)).copy())
        if f not in photos_full:
            # The decoded image itself, to check decoding apart from resizing.
            out[f"{f}:decoded"] = torch.from_numpy(np.array(img).copy())
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "preprocess.safetensors"),
              metadata={"presets": json.dumps(presets)})


def main():
    os.makedirs(OUT, exist_ok=True)
    which = sys.argv[1:] or ["layers", "checkpoints", "preprocess", "jpeg_logits", "features", "logits",
                             "training"]
    steps = {"layers": layer_fixtures, "checkpoints": checkpoint_fixtures, "preprocess": preprocess_fixtures,
             "jpeg_logits": jpeg_logits, "features": feature_fixtures, "logits": network_logits,
             "training": training_fixtures}
    for w in which:
        print(f"writing {w} fixtures", flush=True)
        steps[w]()


if __name__ == "__main__":
    main()
