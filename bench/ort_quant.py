#!/usr/bin/env python3
"""ONNX Runtime's static int8 quantization (QDQ) of an f32 ONNX model, and the calibration inputs it needs.

    ort_quant.py F32.onnx OUT.onnx --images DIR [--count N]

quantizes F32.onnx calibrated on N images of DIR (default: all of them, spread evenly as `resnet quantize`
picks them) preprocessed as torchvision's v1 evaluation transform: resize the shorter side to 256 (PIL bilinear,
antialiased), centre crop 224, /255, ImageNet mean and std, NCHW. bench/compare.py uses it for the "ort-int8"
peer; bench/quant_accuracy.py imports quantize_qdq() and the Fashion-MNIST readers.

The settings: quant_pre_process, then quantize_static with QuantFormat.QDQ, per-channel QInt8 weights, QUInt8
activations, CalibrationMethod.MinMax.
"""

import argparse
import gzip
import os
import sys
import tempfile

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# --------------------------------------------------------------------------------------
# Calibration inputs.


def spread(n_total, n):
    """The indices i * n_total / n for i in 0..n (what `resnet quantize --images n` takes)."""
    n = min(n, n_total)
    return [i * n_total // n for i in range(n)]


def folder_images(folder, n=None):
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if n is not None:
        files = [files[i] for i in spread(len(files), n)]
    return [os.path.join(folder, f) for f in files]


def imagenet_v1(path, resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """torchvision's Resize(resize) + CenterCrop(crop) + ToTensor + Normalize on a PIL image, in PIL and numpy."""
    from PIL import Image, ImageFile

    try:
        img = Image.open(path).convert("RGB")
    except OSError:  # damaged files (a JPEG cut short) that torchvision's PIL path still decodes
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        img = Image.open(path).convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    if w < crop or h < crop:
        raise ValueError(f"{path}: {w}x{h} after resizing is smaller than the crop {crop}")
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def imagenet_calibration(folder, n=None):
    return np.stack([imagenet_v1(f) for f in folder_images(folder, n)])


def read_idx(path):
    """An idx file (gzip or not) as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(folder, split):
    """(images uint8 N x 28 x 28, labels int64) of the `train` or `test` split."""
    prefix = "train" if split == "train" else "t10k"

    def find(kind):
        for ext in (".gz", ""):
            p = os.path.join(folder, f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte{ext}")
            if os.path.exists(p):
                return p
        raise FileNotFoundError(f"no {prefix} {kind} idx file in {folder}")

    return read_idx(find("images")), read_idx(find("labels")).astype(np.int64)


def normalize_gray(images, mean, std):
    """x = (pixel / 255 - mean) / std, NCHW float32 with one channel, no resizing."""
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x[:, None, :, :])


# --------------------------------------------------------------------------------------
# Quantization and sessions.


def quantize_qdq(f32_onnx, out_onnx, calib, batch=32, exclude_ops=()):
    """quant_pre_process + quantize_static (QDQ, per-channel QInt8 weights, QUInt8 activations, MinMax) with
    the NCHW float32 array `calib` as the calibration data, fed in batches. Nodes whose type is in `exclude_ops`
    (e.g. ("Gemm",): the classifier, which our int8 path keeps in f32) stay f32."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnxruntime as ort

    name = ort.InferenceSession(f32_onnx, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([calib[i:i + batch] for i in range(0, len(calib), batch)])

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {name: x}

    out_dir = os.path.dirname(os.path.abspath(out_onnx))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(f32_onnx, pre)
        exclude = [n.name for n in onnx.load(pre).graph.node if n.op_type in exclude_ops]
        if exclude_ops and not exclude:
            raise ValueError(f"{f32_onnx}: no node of type {', '.join(exclude_ops)} to keep in f32")
        quantize_static(pre, out_onnx, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude or None)


def session(path, threads):
    """A CPU session set up as bench/peer.py's: intra-op threads, sequential, all graph optimizations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def predict(sess, x, batch=256):
    """Top-1 class of each row of x."""
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0].argmax(1) for i in range(0, len(x), batch)])


def main():
    p = argparse.ArgumentParser(description="ONNX Runtime static QDQ int8 quantization calibrated on a folder of "
                                            "images (torchvision v1 preprocessing)")
    p.add_argument("f32")
    p.add_argument("out")
    p.add_argument("--images", required=True, help="folder of calibration images")
    p.add_argument("--count", type=int, help="images to use, spread evenly (default: all)")
    p.add_argument("--batch", type=int, default=8, help="images per calibration pass")
    a = p.parse_args()
    calib = imagenet_calibration(a.images, a.count)
    quantize_qdq(a.f32, a.out, calib, batch=a.batch)
    print(f"wrote {a.out} (ONNX Runtime QDQ int8, calibrated on {len(calib)} images of {a.images})", file=sys.stderr)


if __name__ == "__main__":
    main()
