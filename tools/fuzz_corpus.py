"""Packs a fuzz target's minimised corpus into one committed file, and back.

    python3 tools/fuzz_corpus.py pack TARGET [--max-size 65536]
        fuzz/cmin/TARGET/* (from `cargo fuzz cmin`) -> fuzz/corpora/TARGET.bin.gz
    python3 tools/fuzz_corpus.py unpack TARGET
        fuzz/corpora/TARGET.bin.gz -> fuzz/corpus/TARGET/ (where tools/fuzz.sh grows it)

The packed format is gzip over records of a little-endian u32 length and the
input's bytes, in file-name order; `crates/resnet-cli/tests/fuzz_corpora.rs`
replays it. One file per target keeps the repository lean.
"""
import argparse, gzip, hashlib, pathlib, struct

root = pathlib.Path(__file__).resolve().parent.parent / "fuzz"
ap = argparse.ArgumentParser()
ap.add_argument("action", choices=["pack", "unpack"])
ap.add_argument("target")
ap.add_argument("--max-size", type=int, default=65536)
a = ap.parse_args()
packed = root / "corpora" / f"{a.target}.bin.gz"
if a.action == "pack":
    files = sorted(p for p in (root / "cmin" / a.target).iterdir() if p.is_file())
    inputs = [p.read_bytes() for p in files]
    kept = [b for b in inputs if len(b) <= a.max_size]
    packed.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(packed, "wb", mtime=0) as f:
        for b in kept:
            f.write(struct.pack("<I", len(b)) + b)
    print(f"{a.target}: {len(kept)} of {len(inputs)} inputs, {packed.stat().st_size} bytes in {packed}")
else:
    out = root / "corpus" / a.target
    out.mkdir(parents=True, exist_ok=True)
    data, i, n = gzip.decompress(packed.read_bytes()), 0, 0
    while i < len(data):
        (k,) = struct.unpack_from("<I", data, i)
        b = data[i + 4 : i + 4 + k]
        (out / hashlib.sha1(b).hexdigest()).write_bytes(b)
        i, n = i + 4 + k, n + 1
    print(f"{a.target}: {n} inputs into {out}")
