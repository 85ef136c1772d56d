#!/usr/bin/env python3
"""Writes assets/fashion-mnist-demo/: a class-balanced subset of Fashion-MNIST
(the first 600 training and the first 100 test images of each class) for
`resnet demo`, in the standard IDX file names, gzipped.

Source: Debian's `dataset-fashion-mnist` package (Fashion-MNIST, MIT license,
Zalando Research). Standard library only:

    apt-get download dataset-fashion-mnist
    dpkg -x dataset-fashion-mnist_*.deb /tmp/fm
    python3 tools/make_demo_data.py /tmp/fm/usr/share/datasets/fashion-mnist
"""

import gzip
import os
import struct
import sys

TRAIN_PER_CLASS, TEST_PER_CLASS = 600, 100


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def write_idx(path, dims, payload):
    header = bytes([0, 0, 8, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims)
    # mtime=0: the same bytes on every run.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(header + payload)


def subset(src, dst, prefix, per_class):
    (n, h, w), images = read_idx(os.path.join(src, f"{prefix}-images-idx3-ubyte.gz"))
    _, labels = read_idx(os.path.join(src, f"{prefix}-labels-idx1-ubyte.gz"))
    taken, keep = [0] * 10, []
    for i in range(n):
        if taken[labels[i]] < per_class:
            taken[labels[i]] += 1
            keep.append(i)
    size = h * w
    write_idx(os.path.join(dst, f"{prefix}-images-idx3-ubyte.gz"), (len(keep), h, w),
              b"".join(images[i * size:(i + 1) * size] for i in keep))
    write_idx(os.path.join(dst, f"{prefix}-labels-idx1-ubyte.gz"), (len(keep),), bytes(labels[i] for i in keep))
    print(f"{prefix}: {len(keep)} images")


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    dst = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "fashion-mnist-demo")
    os.makedirs(dst, exist_ok=True)
    subset(src, dst, "train", TRAIN_PER_CLASS)
    subset(src, dst, "t10k", TEST_PER_CLASS)


if __name__ == "__main__":
    main()
