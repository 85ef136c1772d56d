//! `resnet weights list | fetch | path`, and `--weights torchvision:NAME`
//! wherever weights are read: the file from the cache, downloaded first
//! when it is not there.
//!
//! A download goes to `FILE.part` in the cache and resumes it (an HTTP range
//! request) when a previous one was cut off; the file's SHA-256 must start
//! with the prefix its name carries before it is renamed into the cache, so
//! the cache never holds a corrupt or partial file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use resnet::pretrained::{self, Pretrained};
use sha2::{Digest, Sha256};

/// Arguments of `resnet weights`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Every pretrained weights file by name, with its size, published accuracy and whether it is cached.
    List {
        /// One JSON object per file.
        #[arg(long)]
        json: bool,
    },
    /// Download weights into the cache (resuming a cut-off download), checking the SHA-256.
    Fetch {
        /// `torchvision:ARCH`, `torchvision:ARCH.v1` or `torchvision:ARCH.v2`.
        name: String,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Print where the weights are (or will be) cached.
    Path {
        /// `torchvision:ARCH[.v1|.v2]`.
        name: String,
    },
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        Command::List { json } => list(json),
        Command::Fetch { name, quiet } => {
            let p = fetch(&pretrained::lookup(&name)?, quiet)?;
            println!("{}", p.display());
            Ok(())
        }
        Command::Path { name } => {
            let p = pretrained::lookup(&name)?;
            println!("{}", p.cached().map_or_else(|| p.cache_path(), Ok)?.display());
            Ok(())
        }
    }
}

fn list(json: bool) -> Result<()> {
    let table = pretrained::table()?;
    if json {
        for p in &table {
            let mut v = serde_json::to_value(p)?;
            v["cached"] = p.cached().map(|c| c.display().to_string()).into();
            v["url"] = p.url().into();
            println!("{v}");
        }
        return Ok(());
    }
    println!("{:<34} {:>9} {:>7} {:>7}  {:<6} cached", "name", "size", "top-1", "top-5", "preset");
    for p in &table {
        let name = format!("torchvision:{}{}", p.name, if p.default { " *" } else { "" });
        let cached = p.cached().map_or("-".to_string(), |c| c.display().to_string());
        println!("{name:<34} {:>6.1} MB {:>6.2}% {:>6.2}%  {:<6} {cached}", p.size_mb, p.acc1, p.acc5, p.preset);
    }
    println!(
        "\n* the default for torchvision:ARCH (torchvision's DEFAULT). ImageNet-1k accuracies as torchvision publishes them."
    );
    Ok(())
}

/// The file `--weights` means: a path as it is, or a pretrained name's
/// cached file (downloaded first when needed), with its entry.
pub fn resolve(weights: &Path) -> Result<(PathBuf, Option<Pretrained>)> {
    if !pretrained::is_name(weights) {
        return Ok((weights.to_path_buf(), None));
    }
    let p = pretrained::lookup(&weights.to_string_lossy())?;
    Ok((fetch(&p, false)?, Some(p)))
}

/// The cached file of `p`, downloaded and checked first when it is not cached.
pub fn fetch(p: &Pretrained, quiet: bool) -> Result<PathBuf> {
    if let Some(cached) = p.cached() {
        return Ok(cached);
    }
    let dest = p.cache_path()?;
    let dir = dest.parent().expect("a cache file has a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
    let part = dest.with_file_name(format!("{}.part", p.file));
    let url = p.url();
    download(&url, &part, p.size_mb, quiet).map_err(|e| {
        let torch = pretrained::torch_cache_dir().map(|d| format!(" (or into {})", d.display())).unwrap_or_default();
        anyhow::anyhow!(
            "{e:#}. Without internet access here, download {url} elsewhere and put it at {}{torch}",
            dest.display()
        )
    })?;
    let prefix = p.sha256_prefix().map_err(anyhow::Error::msg)?;
    let digest = sha256(&part)?;
    if !digest.starts_with(prefix) {
        let _ = std::fs::remove_file(&part);
        bail!(
            "{url}: the download's SHA-256 is {digest}, which does not start with {prefix} as its name says: it is \
             corrupt and was deleted; run the command again"
        );
    }
    std::fs::rename(&part, &dest).with_context(|| format!("cannot move the download to {}", dest.display()))?;
    Ok(dest)
}

/// Time allowed to connect and to start answering, and for the whole body
/// (at least 100 KB/s); `RESNET_DOWNLOAD_TIMEOUT` (seconds) sets both.
fn timeouts(size_mb: f64) -> Result<(Duration, Duration)> {
    match std::env::var("RESNET_DOWNLOAD_TIMEOUT") {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok((Duration::from_secs_f64(s), Duration::from_secs_f64(s))),
            _ => bail!("RESNET_DOWNLOAD_TIMEOUT={v:?} is not a number of seconds"),
        },
        Err(_) => Ok((Duration::from_secs(30), Duration::from_secs_f64((size_mb * 10.0).max(60.0)))),
    }
}

/// Fetches `url` into `part`, continuing what is already there.
fn download(url: &str, part: &Path, size_mb: f64, quiet: bool) -> Result<()> {
    let (wait, body) = timeouts(size_mb)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(wait))
        .timeout_recv_response(Some(wait))
        .timeout_recv_body(Some(body))
        .http_status_as_error(false)
        .user_agent(concat!("resnet/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let resp = req.call().with_context(|| format!("cannot download {url}"))?;
    let status = resp.status().as_u16();
    let append = match status {
        206 => true,
        200 => false,
        // The range starts at the end: the part is whole (it is checked next).
        416 if have > 0 => return Ok(()),
        _ => bail!("cannot download {url}: HTTP {status}"),
    };
    let rest: Option<u64> = resp.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse().ok());
    let start = if append { have } else { 0 };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .with_context(|| format!("cannot write {}", part.display()))?;
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(rest.map_or(0, |r| start + r)) };
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .expect("a valid template"),
    );
    bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
    bar.set_position(start);
    let mut reader = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = start;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                bar.abandon();
                bail!(
                    "the download of {url} stopped after {got} bytes ({e}); what arrived is kept in {}: run the \
                     command again to resume",
                    part.display()
                );
            }
        };
        file.write_all(&buf[..n]).with_context(|| format!("cannot write {}", part.display()))?;
        got += n as u64;
        bar.set_position(got);
    }
    file.sync_all().with_context(|| format!("cannot write {}", part.display()))?;
    bar.finish_and_clear();
    if let Some(r) = rest
        && got != start + r
    {
        bail!("the download of {url} ended after {got} of {} bytes: run the command again to resume", start + r);
    }
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
