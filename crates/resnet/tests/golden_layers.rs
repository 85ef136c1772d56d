//! Each layer against PyTorch's functional op on random data (fixture from
//! tools/make_fixtures.py): convolutions with groups, stride, dilation and
//! padding; batch norm (eval, with and without fused ReLU); pooling; linear;
//! the option-A shortcut.

mod common;

use common::*;
use resnet::backend::Cpu;
use resnet::backend::reference::{nchw_to_nhwc, nhwc_to_nchw};
use resnet::model::Mode;
use resnet::model::layers::{BatchNorm2d, Conv2d, GlobalAvgPool, Linear, MaxPool2d, PadShortcut};
use resnet::tensor::Tensor;

fn nchw(cpu: &Cpu, v: &[f32], s: &[usize]) -> Tensor<Cpu> {
    Tensor::from_nchw(cpu, s[0], s[1], s[2], s[3], v)
}

fn to_nchw(cpu: &Cpu, t: &Tensor<Cpu>) -> Vec<f32> {
    let [n, h, w, c] = t.shape;
    nhwc_to_nchw(&t.to_host(cpu), n, c, h, w)
}

#[derive(serde::Deserialize)]
struct ConvCase {
    cin: usize,
    cout: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
    g: usize,
}

#[test]
fn convolutions_match_pytorch() {
    let cpu = Cpu::new(Some(2)).unwrap();
    let (sd, meta) = load("layers.safetensors");
    let names: Vec<&String> = meta.keys().filter(|k| k.starts_with("conv")).collect();
    assert_eq!(names.len(), 7);
    for name in names {
        let c: ConvCase = serde_json::from_str(&meta[name]).unwrap();
        let mut conv = Conv2d::with_dilation(&cpu, c.cin, c.cout, [c.k; 2], [c.s; 2], [c.p; 2], [c.d; 2], c.g);
        let (w, _) = get(&sd, &format!("{name}.w"));
        conv.weight.set_from_torch(&cpu, &w);
        let (x, xs) = get(&sd, &format!("{name}.x"));
        let (want, _) = get(&sd, &format!("{name}.y"));
        let y = conv.forward(&cpu, &nchw(&cpu, &x, &xs));
        assert_close(name, &to_nchw(&cpu, y), &want, 1e-5);
    }
}

#[test]
fn batch_norm_pooling_linear_and_shortcut_match_pytorch() {
    let cpu = Cpu::new(Some(2)).unwrap();
    let (sd, _) = load("layers.safetensors");
    let (x, xs) = get(&sd, "bn.x");
    let x = nchw(&cpu, &x, &xs);
    for (relu, key) in [(false, "bn.y"), (true, "bn.y_relu")] {
        let mut bn = BatchNorm2d::new(&cpu, 6, relu);
        bn.weight.set_from_torch(&cpu, &get(&sd, "bn.weight").0);
        bn.bias.set_from_torch(&cpu, &get(&sd, "bn.bias").0);
        bn.running_mean = get(&sd, "bn.running_mean").0;
        bn.running_var = get(&sd, "bn.running_var").0;
        let y = bn.forward(&cpu, &x, None, Mode::Eval);
        assert_close(key, &to_nchw(&cpu, y), &get(&sd, key).0, 1e-5);
    }
    for name in ["maxpool", "maxpool_even"] {
        let (x, xs) = get(&sd, &format!("{name}.x"));
        let mut pool = MaxPool2d::new(&cpu, 3, 2, 1);
        let y = pool.forward(&cpu, &nchw(&cpu, &x, &xs));
        assert_close(name, &to_nchw(&cpu, y), &get(&sd, &format!("{name}.y")).0, 0.0);
    }
    let (x, xs) = get(&sd, "gap.x");
    let mut gap = GlobalAvgPool::new(&cpu);
    let y = gap.forward(&cpu, &nchw(&cpu, &x, &xs));
    assert_close("gap", &y.to_host(&cpu), &get(&sd, "gap.y").0, 1e-6);

    let (x, xs) = get(&sd, "linear.x");
    let mut fc = Linear::new(&cpu, 10, 4);
    fc.weight.set_from_torch(&cpu, &get(&sd, "linear.w").0);
    fc.bias.set_from_torch(&cpu, &get(&sd, "linear.b").0);
    let y = fc.forward(&cpu, &Tensor::from_host(&cpu, [xs[0], 1, 1, xs[1]], &x));
    assert_close("linear", &y.to_host(&cpu), &get(&sd, "linear.y").0, 1e-5);

    let (x, xs) = get(&sd, "pad_shortcut.x");
    let mut sc = PadShortcut::new(&cpu, 4, 8, 2);
    let y = sc.forward(&cpu, &nchw(&cpu, &x, &xs));
    assert_close("pad_shortcut", &to_nchw(&cpu, y), &get(&sd, "pad_shortcut.y").0, 0.0);
    let _ = nchw_to_nhwc;
}
