"""Splits a Fashion-MNIST folder for the fine-tuning comparison in docs/RESULTS.md:
classes 0-5 stay IDX files (the pretraining set), classes 6-9 become an image
folder (train/ and val/ of PNGs, the new task).

    python3 tools/make_finetune_data.py SRC_DIR OUT_DIR
"""
import gzip, pathlib, struct, sys, zlib

src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])


def read(name):
    raw = (src / name).read_bytes()
    raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return dims, raw[4 + 4 * ndim :]


def write_idx(path, dims, payload):
    path.write_bytes(bytes([0, 0, 8, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) + payload)


def png(path, w, h, pixels):
    rows = b"".join(b"\x00" + pixels[y * w : (y + 1) * w] for y in range(h))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


(out / "pretrain").mkdir(parents=True, exist_ok=True)
for split, folder in [("train", "train"), ("t10k", "val")]:
    (n, h, w), images = read(f"{split}-images-idx3-ubyte.gz")
    _, labels = read(f"{split}-labels-idx1-ubyte.gz")
    keep = [i for i in range(n) if labels[i] < 6]
    write_idx(out / "pretrain" / f"{split}-images-idx3-ubyte", (len(keep), h, w),
              b"".join(images[i * h * w : (i + 1) * h * w] for i in keep))
    write_idx(out / "pretrain" / f"{split}-labels-idx1-ubyte", (len(keep),), bytes(labels[i] for i in keep))
    names = ["shirt", "sneaker", "bag", "ankle_boot"]
    for i in range(n):
        if labels[i] >= 6:
            d = out / "newtask" / folder / names[labels[i] - 6]
            d.mkdir(parents=True, exist_ok=True)
            png(d / f"{i:05d}.png", w, h, images[i * h * w : (i + 1) * h * w])
print("done")
