//! Shared CLI plumbing: errors, thread and batch arguments, number formatting.

use anyhow::{Result, bail};

/// Prints `error: ...` as one line and exits with status 1.
pub fn fail(e: &anyhow::Error) -> ! {
    let msg = format!("{e:#}").replace('\n', " ");
    eprintln!("error: {msg}");
    std::process::exit(1);
}

/// Help and version go to stdout with status 0; a usage error is one line
/// on stderr with status 2.
pub fn exit_on_clap_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            std::process::exit(if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand { 2 } else { 0 });
        }
        _ => {
            let text = e.render().to_string();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {first} (see --help)");
            std::process::exit(2);
        }
    }
}

/// A panic is a bug, not bad input: say so in one line.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        // `resnet archs | head` closes stdout early: that is not an error.
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error: {msg}{at} (this is a bug; please report it)");
    }));
}

/// The CPU backend for `--threads` (None: all cores).
pub fn cpu(threads: Option<usize>) -> Result<resnet::backend::Cpu> {
    Ok(resnet::backend::Cpu::new(threads)?)
}

/// Parses `--precision`. bf16 runs in f32 where the CPU lacks AVX-512 BF16
/// (a note on stderr says so): emulated bf16 would be far slower than f32.
pub fn precision(arg: &str, cpu: &resnet::backend::Cpu) -> Result<resnet::backend::Precision> {
    use resnet::backend::{Backend, Precision};
    let p: Precision = arg.parse()?;
    if !cpu.supports(p) {
        eprintln!("note: this CPU has no AVX-512 BF16; running in f32");
        return Ok(Precision::F32);
    }
    Ok(p)
}

/// Largest `--batch` accepted.
pub const MAX_BATCH: usize = 65536;

/// Checks a `--batch` value.
pub fn check_batch(batch: usize) -> Result<usize> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    if batch > MAX_BATCH {
        bail!("--batch {batch} is larger than the supported {MAX_BATCH}");
    }
    Ok(batch)
}

/// `11689512` -> `11.69 M`.
pub fn human(n: f64) -> String {
    let (v, unit) = if n >= 1e9 {
        (n / 1e9, "G")
    } else if n >= 1e6 {
        (n / 1e6, "M")
    } else if n >= 1e3 {
        (n / 1e3, "K")
    } else {
        (n, "")
    };
    format!("{v:.2} {unit}")
}

/// `11689512` -> `11,689,512`.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
