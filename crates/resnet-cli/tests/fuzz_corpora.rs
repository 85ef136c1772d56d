//! The fuzz targets' smoke pass: every input of the committed, minimised
//! fuzz corpora (`fuzz/corpora/<target>.bin.gz`, grown by `tools/fuzz.sh`,
//! packed by `tools/fuzz_corpus.py`) run
//! through its target on stable Rust, as CI can. An input that panics fails
//! the test, and so does a peak over 100 MB.

#[path = "../../../fuzz/src/lib.rs"]
mod targets;

use std::path::PathBuf;
use std::time::Instant;

/// The inputs packed in `<target>.bin.gz`: records of a u32 length and the bytes.
fn inputs(target: &str) -> Vec<Vec<u8>> {
    use std::io::Read;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../fuzz/corpora/{target}.bin.gz"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(file).read_to_end(&mut data).unwrap();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < data.len() {
        let n = u32::from_le_bytes(data[i..i + 4].try_into().unwrap()) as usize;
        out.push(data[i + 4..i + 4 + n].to_vec());
        i += 4 + n;
    }
    out
}

#[test]
fn every_corpus_input_runs_cleanly() {
    for &(name, target) in targets::TARGETS {
        let inputs = inputs(name);
        assert!(!inputs.is_empty(), "the {name} corpus is empty");
        let t = Instant::now();
        for (i, data) in inputs.iter().enumerate() {
            let r = std::panic::catch_unwind(|| target(data));
            assert!(r.is_ok(), "{name}: input {i} of the corpus panics");
        }
        eprintln!("{name}: {} inputs in {:.1} s", inputs.len(), t.elapsed().as_secs_f64());
    }
    // No input took the process (this test alone) past 100 MB at its peak.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        eprintln!("peak resident memory: {:.1} MB", kb as f64 / 1024.0);
        assert!(kb < 100 * 1024, "peak {kb} kB");
    }
}
