//! A run's files: checkpoints (weights, sidecar, momentum buffers) written
//! atomically, the metrics log and table, and the curves.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::optim::SgdConfig;
use crate::plot::{self, Panel, Series};
use resnet::backend::Backend;
use resnet::classify::ModelCard;
use resnet::error::{Error, Result};
use resnet::io::{self, HostTensor, StateDict, TensorData};
use resnet::model::StateEntry;

use super::{TestPoint, TrainConfig, TrainPoint, TrainState, Trainer};

/// The checkpoint sidecar (`last.json`, `best.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sidecar {
    /// Format tag.
    pub format: String,
    /// What `classify` and `eval` need.
    pub model: ModelCard,
    /// The run's configuration.
    pub config: TrainConfig,
    /// Progress.
    pub state: TrainState,
    /// Optimiser: kind, hyper-parameters, steps and the momentum file.
    pub optimizer: OptimizerState,
    /// The random stream: a pure function of these (see the module docs).
    pub rng: RngState,
}

/// Optimiser state in the sidecar.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OptimizerState {
    /// `sgd`.
    pub kind: String,
    /// Hyper-parameters.
    pub config: SgdConfig,
    /// Updates taken.
    pub steps: u64,
    /// Momentum buffers (`momentum.<parameter>` tensors), if saved.
    pub buffers: Option<String>,
}

/// Random-stream position in the sidecar.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RngState {
    /// Seed.
    pub seed: u64,
    /// Epoch whose shuffle is in use.
    pub epoch: usize,
    /// Samples of that epoch consumed.
    pub position: usize,
}

pub(super) const FORMAT: &str = "resnet-checkpoint/1";

impl<B: Backend> Trainer<B> {
    /// Appends one line to `metrics.jsonl` in a single write (a kill leaves at
    /// most a torn last line, which resuming drops).
    pub(super) fn log(&self, v: &serde_json::Value) -> Result<()> {
        use std::io::Write;
        let p = self.out.join("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&p).map_err(|e| Error::io(&p, e))?;
        f.write_all(format!("{v}\n").as_bytes()).map_err(|e| Error::io(&p, e))
    }

    pub(super) fn write_metrics_jsonl(&self) -> Result<()> {
        let mut text = String::new();
        for p in &self.train_points {
            text += &format!("{}\n", serde_json::json!({"kind": "train", "point": p}));
        }
        for p in &self.test_points {
            text += &format!("{}\n", serde_json::json!({"kind": "test", "point": p}));
        }
        io::atomic::write(&self.out.join("metrics.jsonl"), text.as_bytes())
    }

    pub(super) fn write_csv(&self) -> Result<()> {
        let mut s = String::from(
            "epoch,iteration,lr,train_loss,train_error,test_loss,test_error,test_top5_error,images_per_second\n",
        );
        for t in &self.test_points {
            let lr = self.train_points.iter().rev().find(|p| p.iteration <= t.iteration).map_or(0.0, |p| p.lr);
            s += &format!(
                "{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.1}\n",
                t.epoch,
                t.iteration,
                lr,
                t.train_loss,
                t.train_error,
                t.loss,
                t.error,
                t.top5_error,
                t.images_per_second
            );
        }
        io::atomic::write(&self.out.join("metrics.csv"), s.as_bytes())
    }

    pub(super) fn plot(&self) -> Result<()> {
        let train = |f: fn(&TrainPoint) -> f64| self.train_points.iter().map(|p| (p.iteration as f64, f(p))).collect();
        let test = |f: fn(&TestPoint) -> f64| self.test_points.iter().map(|p| (p.iteration as f64, f(p))).collect();
        let series = |name: &str, points, bold| Series { name: name.into(), points, color: 0, bold };
        let title = format!("{} on {}", self.config.spec.name, self.config.data.kind_name());
        let loss = Panel {
            title: format!("{title}: loss"),
            x_label: "iteration".into(),
            y_label: "cross-entropy".into(),
            log_y: false,
            series: vec![series("train", train(|p| p.loss), false), series("test", test(|p| p.loss), true)],
        };
        let mut err = Panel {
            title: format!("{title}: error"),
            x_label: "iteration".into(),
            y_label: "top-1 error (%)".into(),
            log_y: false,
            series: vec![
                series("train", train(|p| 100.0 * p.error), false),
                series("test", test(|p| 100.0 * p.error), true),
            ],
        };
        err.series[0].color = 1;
        err.series[1].color = 1;
        plot::line_charts(&self.out.join("curves"), &[loss, err])
    }

    /// Writes `name.safetensors` and `name.json` (and the momentum buffers when
    /// `with_optimizer`) as one atomic group: a crash at any moment leaves the
    /// previous checkpoint or this one, whole.
    pub fn save(&mut self, name: &str, with_optimizer: bool) -> Result<()> {
        let sd = io::state_dict(&mut self.net)?;
        if let Some(key) = sd.iter().find_map(|(k, t)| match &t.data {
            TensorData::F32(v) if v.iter().any(|x| !x.is_finite()) => Some(k),
            _ => None,
        }) {
            // Batch norm can keep the loss finite while weights overflow: never save those.
            return Err(Error::Diverged(format!(
                "`{key}` became non-finite by iteration {} (epoch {}): stopping; try a lower --lr. \
                 The last checkpoint in {} is intact",
                self.state.iteration,
                self.state.epoch,
                self.out.display()
            )));
        }
        let meta: HashMap<String, String> = [
            ("iteration".to_string(), self.state.iteration.to_string()),
            ("arch".to_string(), self.config.spec.name.clone()),
        ]
        .into();
        let mut files = Vec::new();
        let buffers = if with_optimizer && !self.sgd.buffers.is_empty() {
            let file = format!("{name}.optim.safetensors");
            let b = self.net.backend().clone();
            let mut sd = StateDict::new();
            let mut i = 0;
            let bufs = &self.sgd.buffers;
            self.net.try_visit(&mut |key, e| {
                let StateEntry::Param(p) = e else { return Ok(()) };
                let v = resnet::tensor::to_torch(p.layout, &p.shape, &b.download(&bufs[i])?);
                sd.insert(format!("momentum.{key}"), HostTensor { shape: p.shape.clone(), data: TensorData::F32(v) });
                i += 1;
                Ok(())
            })?;
            files.push((self.out.join(&file), io::safetensors::to_bytes(&sd, Some(meta.clone()))?));
            Some(file)
        } else {
            None
        };
        files.push((self.out.join(format!("{name}.safetensors")), io::safetensors::to_bytes(&sd, Some(meta))?));
        let side = Sidecar {
            format: FORMAT.into(),
            model: self.card(),
            config: self.config.clone(),
            state: self.state.clone(),
            optimizer: OptimizerState {
                kind: "sgd".into(),
                config: self.sgd.config.clone(),
                steps: self.sgd.steps,
                buffers,
            },
            rng: RngState {
                seed: self.config.seed,
                epoch: self.state.epoch,
                position: self.state.step_in_epoch * self.config.batch,
            },
        };
        let text = serde_json::to_string_pretty(&side).map_err(|e| Error::Invalid(e.to_string()))?;
        files.push((self.out.join(format!("{name}.json")), text.into_bytes()));
        io::atomic::write_group(&journal(&self.out, name), &files)
    }
}

/// The journal that makes checkpoint `name`'s files one atomic group.
fn journal(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!(".{name}.commit"))
}

/// Puts a run folder in order after a crash: finishes the checkpoints whose
/// writes were committed (`resume`) or forgets them (a run started over),
/// then removes the temporaries of killed writes.
pub(super) fn tidy(dir: &Path, resume: bool) -> Result<()> {
    for name in ["last", "best"] {
        let j = journal(dir, name);
        if resume {
            io::atomic::recover_group(&j)?;
        } else if j.exists() {
            std::fs::remove_file(&j).map_err(|e| Error::io(&j, e))?;
        }
    }
    io::atomic::remove_temporaries(dir).map(|_| ())
}

/// Checks that a checkpoint file belongs to iteration `it` (guards against a
/// crash between the writes of one checkpoint).
pub(super) fn check_iteration(path: &Path, it: u64) -> Result<()> {
    let meta = io::safetensors::read_metadata(path)?;
    match meta.get("iteration").and_then(|v| v.parse::<u64>().ok()) {
        Some(v) if v == it => Ok(()),
        Some(v) => Err(Error::format(
            path,
            format!("holds iteration {v}, its sidecar iteration {it}: inconsistent checkpoint"),
        )),
        None => Err(Error::format(path, "not written by `resnet train` (no iteration in its metadata)")),
    }
}

/// Reads logged points up to iteration `upto`.
pub(super) fn read_metrics(path: &Path, upto: u64) -> Result<(Vec<TrainPoint>, Vec<TestPoint>)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            // The last line torn by a kill mid-write: the resumed run rewrites the file without it.
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => return Err(Error::format(path, format!("line {}: {e}", i + 1))),
        };
        match v["kind"].as_str() {
            Some("train") => {
                let p: TrainPoint =
                    serde_json::from_value(v["point"].clone()).map_err(|e| Error::format(path, e.to_string()))?;
                if p.iteration <= upto {
                    train.push(p);
                }
            }
            Some("test") => {
                let p: TestPoint =
                    serde_json::from_value(v["point"].clone()).map_err(|e| Error::format(path, e.to_string()))?;
                if p.iteration <= upto {
                    test.push(p);
                }
            }
            _ => {}
        }
    }
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    /// A line torn by a kill mid-write is dropped; a bad line elsewhere is an error.
    #[test]
    fn a_torn_last_metrics_line_is_dropped() {
        let dir = std::env::temp_dir().join(format!("resnet-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("metrics.jsonl");
        let good = r#"{"kind":"train","point":{"epoch":0,"iteration":2,"lr":0.1,"loss":2.0,"error":0.5,"images_per_second":9.0}}"#;
        std::fs::write(&p, format!("{good}\n{}", &good[..40])).unwrap();
        let (train, test) = super::read_metrics(&p, 10).unwrap();
        assert_eq!((train.len(), test.len()), (1, 0));
        std::fs::write(&p, format!("{}\n{good}\n", &good[..40])).unwrap();
        assert!(super::read_metrics(&p, 10).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
