"""Writes the fuzz seed corpora (fuzz/seeds/<target>/) from the fixtures and
small files made here with PyTorch, PIL and safetensors: real files of every
kind each parser reads, kept small so that the fuzzer mutates them fast.

    bench/.venv/bin/python tools/fuzz_seeds.py

The fuzzer grows fuzz/corpus/<target>/ from these (see docs/RELIABILITY.md);
the minimised corpora committed in fuzz/corpora/ are what CI replays.
"""
import collections, gzip, io, json, os, pathlib, shutil, struct, zipfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as st_save

root = pathlib.Path(__file__).resolve().parent.parent
fx = root / "tests" / "fixtures"
out = root / "fuzz" / "seeds"
shutil.rmtree(out, ignore_errors=True)


def put(target, name, data):
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def torch_bytes(obj):
    b = io.BytesIO()
    torch.save(obj, b)
    return b.getvalue()


# Weights: tiny state dicts in every shape torch.save gives them.
tiny = collections.OrderedDict(
    [("conv.weight", torch.arange(8.0).reshape(2, 1, 2, 2)), ("bn.running_var", torch.ones(2)),
     ("bn.num_batches_tracked", torch.tensor(3))]
)
pths = {
    "state_dict.pth": torch_bytes(tiny),
    "f16.pth": torch_bytes({k: (v.half() if v.is_floating_point() else v) for k, v in tiny.items()}),
    "bf16_double.pth": torch_bytes({"a": torch.ones(3).bfloat16(), "b": torch.ones(2).double()}),
    "checkpoint.pth": torch_bytes({"epoch": 3, "state_dict": {"module." + k: v for k, v in tiny.items()}}),
    "view.pth": torch_bytes({"t": torch.arange(12.0).reshape(3, 4).t()}),
    "shared.pth": torch_bytes({"a": (s := torch.arange(6.0)), "b": s[2:4]}),
    "param.pth": torch_bytes({"p": torch.nn.Parameter(torch.ones(2))}),
    "legacy.pth": (fx / "legacy.pth").read_bytes(),
}
for name, b in pths.items():
    put("pth", name, b)
    put("load_weights", name, b)
    if not b.startswith(b"PK"):
        continue  # the legacy (pre-zip) file
    with zipfile.ZipFile(io.BytesIO(b)) as z:
        for n in z.namelist():
            if n.endswith("data.pkl"):
                put("pickle", name.replace(".pth", ".pkl"), z.read(n))
for name in ["resnet8_checkpoint_f16.pth"]:
    put("load_weights", name, (fx / name).read_bytes())
put("load_weights", "resnet8.safetensors", (fx / "resnet8.safetensors").read_bytes())
sts = {
    "tiny.safetensors": st_save(dict(tiny)),
    "dtypes.safetensors": st_save({"h": torch.ones(2).half(), "b": torch.ones(2).bfloat16(), "u": torch.ones(2, dtype=torch.uint8),
                                  "d": torch.ones(1).double(), "i": torch.ones(1, dtype=torch.int64)}),
    "meta.safetensors": st_save({"w": torch.zeros(1)}, metadata={"iteration": "7", "arch": "resnet8"}),
}
for name, b in sts.items():
    put("safetensors", name, b)
    put("load_weights", name, b)
put("safetensors", "resnet8_logits.safetensors", (fx / "resnet8_logits.safetensors").read_bytes())


# IDX: images and labels, raw and gzipped.
def idx(arr):
    return bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype(np.uint8).tobytes()


rng = np.random.default_rng(0)
imgs, labels = idx(rng.integers(0, 256, (2, 4, 4))), idx(np.array([3, 9]))
for name, b in [("images.idx", imgs), ("labels.idx", labels)]:
    put("idx", name, b)
    put("idx", name + ".gz", gzip.compress(b, mtime=0))

# CIFAR: one CIFAR-10 record and one CIFAR-100 record.
put("cifar", "cifar10.bin", bytes([7]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes())
put("cifar", "cifar100.bin", bytes([1, 42]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes())

# Images: small real-photo crops in each JPEG and PNG variant PIL writes.
photo = Image.open(fx / "images" / "chelsea.png").convert("RGB").resize((24, 16))
variants = {
    "baseline444.jpg": dict(format="JPEG", subsampling=0, quality=90),
    "baseline422.jpg": dict(format="JPEG", subsampling=1, quality=90),
    "baseline420.jpg": dict(format="JPEG", subsampling=2, quality=75),
    "progressive.jpg": dict(format="JPEG", progressive=True, quality=80),
    "rgb.png": dict(format="PNG"),
}
for name, kw in variants.items():
    b = io.BytesIO()
    photo.save(b, **kw)
    put("image", name, b.getvalue())
for mode, name in [("L", "gray.jpg"), ("CMYK", "cmyk.jpg"), ("L", "gray.png"), ("LA", "gray_alpha.png"),
                   ("P", "palette.png"), ("RGBA", "rgba.png"), ("1", "bilevel.png"), ("I;16", "gray16.png")]:
    b = io.BytesIO()
    photo.convert(mode if mode != "I;16" else "I").convert(mode).save(b, format=name.split(".")[1].replace("jpg", "JPEG"))
    put("image", name, b.getvalue())

# Model cards: the sidecars `resnet train` writes.
card = {
    "format": "resnet-checkpoint/1",
    "model": {
        "spec": {"name": "resnet8", "stem": "cifar", "stem_width": 16, "block": "basic", "depths": [1, 1, 1],
                 "widths": [16, 32, 64], "groups": 1, "width_per_group": 64, "shortcut": "a", "num_classes": 2,
                 "in_channels": 1},
        "transform": {"resize": 28, "crop": 28, "mean": [0.286], "std": [0.353], "grayscale": True, "pad_to": 32},
        "labels": ["a", "b"],
    },
}
put("card", "fashion.json", json.dumps(card).encode())
card["model"]["spec"].update(name="resnet18", stem="imagenet", stem_width=64, depths=[2, 2, 2, 2],
                             widths=[64, 128, 256, 512], shortcut="b", in_channels=3)
card["model"]["transform"] = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
card["model"]["labels"] = None
put("card", "imagenet.json", json.dumps(card).encode())
print("seeds in", out, sum(1 for _ in out.rglob("*") if _.is_file()), "files")
