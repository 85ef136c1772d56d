//! Shared CLI plumbing: errors, thread and batch arguments, number formatting.

use anyhow::{Result, bail};
use resnet::backend::{Backend, Precision};

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
            eprintln!("error: {} (see --help)", one_line(&e.render().to_string()));
            std::process::exit(2);
        }
    }
}

/// clap's error text in one line, keeping what helps: the message, the
/// missing arguments, the possible values and the "similar argument" tip;
/// the usage block and the pointer to --help are dropped.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(str::trim).take_while(|l| !l.starts_with("Usage:")) {
        let line = line.strip_prefix("error: ").unwrap_or(line);
        if line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        if !out.is_empty() {
            out += if line.starts_with("tip:") { "; " } else { " " };
        }
        out += line;
    }
    if out.is_empty() { "invalid arguments".into() } else { out }
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

/// Where the arithmetic runs (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend.
    Cpu,
    /// An NVIDIA GPU by index (`cuda`, `cuda:N`).
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(format!("`{s}` is not a device (expected cpu, cuda or cuda:N)")),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Where and on how many threads to compute: shared by every command that computes.
#[derive(clap::Args, Clone, Debug)]
pub struct Compute {
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device: cpu (this build's only backend; cuda and cuda:N need a build with CUDA support).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: Device,
}

impl Compute {
    /// The backend for these flags.
    pub fn backend(&self) -> Result<resnet::backend::Cpu> {
        match self.device {
            Device::Cpu => {
                let cpu = resnet::backend::Cpu::new(self.threads)?;
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                if let Some(t) = self.threads.filter(|&t| t > cores) {
                    eprintln!(
                        "warning: --threads {t} is more than the {cores} cores here: the threads will wait on \
                         each other and run much slower than --threads {cores}"
                    );
                }
                Ok(cpu)
            }
            Device::Cuda(_) => bail!(
                "--device {}: this build of resnet has no CUDA backend (it runs on the cpu only); drop --device or pass --device cpu",
                self.device
            ),
        }
    }
}

/// The arithmetic of inference (`--precision`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrecisionArg {
    /// f32 throughout.
    #[default]
    F32,
    /// Convolutions on bf16 weights and inputs with f32 sums (needs AVX-512 BF16, else runs f32).
    Bf16,
    /// Convolutions on int8 weights and u8 activations (weights from `resnet quantize`; fast with AVX-512 VNNI).
    Int8,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::Int8 => Precision::Int8,
        }
    }
}

/// The `--precision` flag of the commands that infer.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct PrecisionFlag {
    /// Arithmetic of inference.
    #[arg(long, value_enum, default_value_t)]
    pub precision: PrecisionArg,
}

/// The precision to run in on `cpu`: bf16 runs in f32 where the CPU lacks
/// AVX-512 BF16 (a note on stderr says so), as emulated bf16 would be far
/// slower than f32.
pub fn precision(arg: PrecisionArg, cpu: &resnet::backend::Cpu) -> Precision {
    let p = Precision::from(arg);
    if p == Precision::Int8 && !resnet::backend::cpu::int8_native() {
        eprintln!("note: this CPU has no AVX-512 VNNI; int8 runs in portable code, slower than f32");
    }
    if !cpu.supports(p) {
        eprintln!("note: this CPU has no AVX-512 BF16; running in f32");
        return Precision::F32;
    }
    p
}

/// The preprocessing flags of the commands that read images.
#[derive(clap::Args, Clone, Debug)]
pub struct TransformFlags {
    /// Preprocessing preset (torchvision's evaluation transforms; default: the
    /// weights' own, or v1).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Resize the shorter side to this (overrides the preset).
    #[arg(long)]
    pub resize: Option<usize>,
    /// Centre crop size (overrides the preset).
    #[arg(long)]
    pub crop: Option<usize>,
}

impl TransformFlags {
    /// Applies the flags to `t`, the model's own preprocessing; `named` is the
    /// preset of named weights (`torchvision:resnet50.v2` comes with `v2`).
    pub fn apply(&self, t: &mut resnet::preprocess::Transform, named: Option<&str>) -> Result<()> {
        use resnet::preprocess::Transform;
        if let Some(p) = self.preset.map(Preset::name).or(named) {
            let preset = Transform::preset(p)?;
            (t.resize, t.crop) = (preset.resize, preset.crop);
        }
        t.resize = self.resize.unwrap_or(t.resize);
        t.crop = self.crop.unwrap_or(t.crop);
        let max = resnet::preprocess::MAX_TRANSFORM_SIDE;
        for (name, v) in [("--resize", t.resize), ("--crop", t.crop)] {
            if v == 0 || v > max {
                bail!("{name} must be between 1 and {max}, got {v}");
            }
        }
        Ok(())
    }
}

/// torchvision's evaluation transforms.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Preset {
    /// Resize 256, centre crop 224 (IMAGENET1K_V1 weights).
    V1,
    /// Resize 232, centre crop 224 (IMAGENET1K_V2 weights).
    V2,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Preset::V1 => "v1",
            Preset::V2 => "v2",
        }
    }
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

/// `1 epoch`, `2 epochs`.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
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
