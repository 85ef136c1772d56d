//! Training memory on the command line: `--checkpoint-segments`,
//! `--memory-budget`, the up-front check against the machine's memory, and
//! the plan's table (`summary --train`).

use anyhow::{Result, bail};
use resnet::backend::Backend;
use resnet::model::{MemoryPlan, Network};

/// The memory flags of `train`, `bench --mode train` and `experiment`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct MemoryFlags {
    /// Recompute the forward pass of K segments of residual units in the backward pass instead of keeping
    /// their activations (least memory near sqrt(units); one more forward pass; results bit-identical).
    #[arg(long, value_name = "K")]
    pub checkpoint_segments: Option<usize>,
    /// Train within this much memory (e.g. 4G, 512M): recompute segments only if the plan needs it.
    #[arg(long, value_name = "SIZE", conflicts_with = "checkpoint_segments", value_parser = parse_size)]
    pub memory_budget: Option<u64>,
}

/// `4G`, `4GB`, `4GiB`, `512M`, `1.5g`, `1048576`: binary units (as `docker -m` and `ulimit` read them).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size like 4G or 512M"))?;
    let shift = match unit.to_ascii_lowercase().trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    let bytes = v * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?} is not a positive size"));
    }
    Ok(bytes as u64)
}

/// `9.1 GiB`, `412 MiB`.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    match () {
        _ if n >= (1u64 << 30) as f64 => format!("{:.2} GiB", n / (1u64 << 30) as f64),
        _ if n >= (1u64 << 20) as f64 => format!("{:.0} MiB", n / (1u64 << 20) as f64),
        _ => format!("{:.0} KiB", n / 1024.0),
    }
}

/// Memory the system can give this process now (`MemAvailable`, and a
/// cgroup's limit where one is lower); `None` where it cannot be read.
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
    let used = std::fs::read_to_string("/sys/fs/cgroup/memory.current").ok().and_then(|s| s.trim().parse::<u64>().ok());
    let cgroup_left = cgroup.map(|max| max.saturating_sub(used.unwrap_or(0)));
    Some(cgroup_left.map_or(kb * 1024, |c| c.min(kb * 1024)))
}

/// What a run will do about memory: the number of recomputed segments and its plan.
pub struct Choice {
    /// Recomputed segments (0: none).
    pub segments: usize,
    /// The plan with them.
    pub plan: MemoryPlan,
}

/// Chooses the number of recomputed segments for training `net` on `batch`
/// images of `input`, from the flags, and refuses up front a plan that cannot
/// fit the budget or the machine's available memory, naming the flag that would.
pub fn choose<B: Backend>(
    net: &Network<B>,
    batch: usize,
    input: (usize, usize),
    momentum: bool,
    flags: &MemoryFlags,
) -> Result<Choice> {
    let plan = |k| MemoryPlan::new(net, batch, input, k, momentum);
    let what = format!("training {} at batch {batch} ({}x{})", net.spec.name, input.0, input.1);
    let segments = match (flags.checkpoint_segments, flags.memory_budget) {
        (Some(k), _) => k,
        (None, Some(budget)) => match MemoryPlan::segments_for(net, batch, input, momentum, budget)? {
            Some(k) => k,
            None => bail!(
                "{what} cannot fit in {}: the least it needs is {} (a smaller --batch would)",
                bytes(budget),
                bytes(least(net, batch, input, momentum)?.1)
            ),
        },
        (None, None) => 0,
    };
    let chosen = plan(segments)?;
    if let Some(avail) = available()
        && chosen.total() > avail
    {
        let hint = match MemoryPlan::segments_for(net, batch, input, momentum, avail)? {
            Some(k) => format!("--checkpoint-segments {k} would need {}", bytes(plan(k)?.total())),
            None => format!(
                "even recomputing segments it needs {} (a smaller --batch would fit)",
                bytes(least(net, batch, input, momentum)?.1)
            ),
        };
        bail!(
            "{what} is planned to need {}, more than the {} this machine has available: {hint}",
            bytes(chosen.total()),
            bytes(avail)
        );
    }
    Ok(Choice { segments, plan: chosen })
}

/// The number of segments with the least planned memory, and that memory.
fn least<B: Backend>(net: &Network<B>, batch: usize, input: (usize, usize), momentum: bool) -> Result<(usize, u64)> {
    let mut best = (0, MemoryPlan::new(net, batch, input, 0, momentum)?.total());
    for k in 1..=net.blocks.len() {
        let t = MemoryPlan::new(net, batch, input, k, momentum)?.total();
        if t < best.1 {
            best = (k, t);
        }
    }
    Ok(best)
}

/// The plan as a table: kept activations per part, then the rest and the total.
pub fn print_plan(plan: &MemoryPlan) {
    let (h, w) = plan.input;
    let how = match plan.segments {
        0 => "no recomputation".to_string(),
        k => format!("{k} recomputed segments"),
    };
    println!("training memory plan, batch {} at {h}x{w}, {how}:", plan.batch);
    for (part, b) in &plan.kept {
        println!("  {:<34} {:>12}", format!("{part} activations kept"), bytes(*b));
    }
    println!("  {:<34} {:>12}", "parameters, gradients, momentum", bytes(plan.params));
    println!("  {:<34} {:>12}", "prepared filter (one at a time)", bytes(plan.filters));
    let working = if plan.segments > 0 { "working set (one unit, one segment)" } else { "working set (one unit)" };
    println!("  {:<34} {:>12}", working, bytes(plan.working));
    println!("  {:<34} {:>12}", "total (planned peak)", bytes(plan.total()));
}
