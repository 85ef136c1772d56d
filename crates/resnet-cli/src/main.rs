//! `resnet`: define, train, evaluate and run deep residual networks.
//!
//! A thin layer over the `resnet` library: argument parsing, human and JSON
//! output, and error reporting (one line on stderr, non-zero exit, never a
//! panic for bad input).

mod archs;
mod bench;
mod classify;
mod demo;
mod embed;
mod eval;
mod experiment;
mod export;
mod inspect;
mod memory;
mod quantize;
mod serve;
mod summary;
mod train;
mod util;
mod weights;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Deep residual networks (He et al. 2015, 2016): the ResNet family on CPU.
#[derive(Parser)]
#[command(name = "resnet", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every architecture with its parameters and multiply-accumulates.
    Archs(archs::Args),
    /// Per-layer table of an architecture: output shapes, parameters, MACs.
    Summary(summary::Args),
    /// Classify images with a trained network.
    Classify(classify::Args),
    /// The outputs of one layer (pooled features by default) for images or a data set, as safetensors or .npy.
    Embed(embed::Args),
    /// Export a network and its weights as an ONNX model (input `input`, NCHW float32; output `logits`).
    Export(export::Args),
    /// Quantize weights to int8 (per-channel weights with batch norm folded, activation scales from calibration images).
    Quantize(quantize::Args),
    /// Train a ResNet-20 on a bundled Fashion-MNIST subset in about a minute and show the results.
    Demo(demo::Args),
    /// The residual-learning lab: experiments that reproduce the papers' findings.
    Experiment(experiment::Args),
    /// What a weights file holds: tensors, the architecture (recognised from keys and shapes), parameters.
    Inspect(inspect::Args),
    /// Write freshly initialised weights for an architecture.
    Init(bench::InitArgs),
    /// Measure speed: images/s, latency and peak memory of inference or training steps.
    Bench(bench::Args),
    /// Evaluate a network on a data set: top-1/top-5, per-class accuracy, confusion matrix.
    Eval(eval::Args),
    /// Train a network (SGD, the papers' recipes, checkpoints, metrics, plots).
    Train(Box<train::Args>),
    /// Serve a network over HTTP: classify, embed, KServe v2, Prometheus metrics, dynamic batching.
    Serve(serve::Args),
    /// Pretrained weights by name (torchvision:ARCH[.v1|.v2]): list, fetch into the cache, show the path.
    Weights(weights::Args),
}

fn main() {
    util::install_panic_hook();
    let matches = Cli::command().try_get_matches().unwrap_or_else(|e| util::exit_on_clap_error(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| util::exit_on_clap_error(e));
    let result = match cli.command {
        Command::Archs(a) => archs::run(a),
        Command::Summary(a) => summary::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Train(a) => train::run(*a, matches.subcommand_matches("train").expect("the train subcommand")),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Init(a) => bench::init(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Export(a) => export::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Weights(a) => weights::run(a),
    };
    if let Err(e) = result {
        util::fail(&e);
    }
}
