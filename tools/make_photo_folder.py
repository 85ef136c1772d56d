#!/usr/bin/env python3
"""A folder of real JPEG photos for the `embed` throughput benchmark.

    python3 tools/make_photo_folder.py OUT [N]

Writes N (default 256) JPEGs into OUT/photos/, made from scikit-image's
photographs (astronaut, chelsea, coffee, motorcycle, rocket, Hubble, retina,
IHC; public domain / CC0, shipped in its wheel) the way photos on the web
look: crops at random scales resized to about ImageNet's typical 500x375
(either orientation), quality 75-95, mostly 4:2:0, some progressive, a few
gray. Deterministic (seeded). Needs Pillow and scikit-image (tools/requirements.txt).
"""
import os
import random
import sys

import skimage
from PIL import Image

SOURCES = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
           "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "ihc.png"]


def main():
    out = os.path.join(sys.argv[1], "photos")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    os.makedirs(out, exist_ok=True)
    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    photos = [Image.open(os.path.join(data, f)).convert("RGB") for f in SOURCES]
    rng = random.Random(0)
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = (500, 375) if rng.random() < 0.75 else (375, 500)
        scale = rng.uniform(0.5, 1.0) * min(img.width / w, img.height / h)
        cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
        x, y = rng.randint(0, img.width - cw), rng.randint(0, img.height - ch)
        crop = img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
        if rng.random() < 0.05:
            crop = crop.convert("L")
        crop.save(os.path.join(out, f"{i:05d}.jpg"), quality=rng.randint(75, 95),
                  subsampling=2 if rng.random() < 0.85 else 0, progressive=rng.random() < 0.1)
    print(f"wrote {n} JPEGs to {out}")


if __name__ == "__main__":
    main()
