//! Each layer against PyTorch's functional op on random data (fixture from
//! tools/make_fixtures.py), on every backend: convolutions with groups,
//! stride, dilation and padding; batch norm (eval, with and without fused
//! ReLU); pooling; linear; the option-A shortcut.

mod common;

use common::*;
use resnet::backend::Backend;
use resnet::backend::reference::nhwc_to_nchw;
use resnet::model::Mode;
use resnet::model::graph::Conv;
use resnet::model::layers::{BatchNorm2d, Conv2d, GlobalAvgPool, Linear, MaxPool2d, PadShortcut};
use resnet::tensor::Tensor;

fn nchw<B: Backend>(b: &B, v: &[f32], s: &[usize]) -> Tensor<B> {
    Tensor::from_nchw(b, s[0], s[1], s[2], s[3], v).unwrap()
}

fn to_nchw<B: Backend>(b: &B, t: &Tensor<B>) -> Vec<f32> {
    let [n, h, w, c] = t.shape;
    nhwc_to_nchw(&host(b, t), n, c, h, w)
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

fn convolutions_match_pytorch<B: Backend>(b: &B, _: Scale) {
    let (sd, meta) = load("layers.safetensors");
    let names: Vec<&String> = meta.keys().filter(|k| k.starts_with("conv")).collect();
    assert_eq!(names.len(), 7);
    for name in names {
        let c: ConvCase = serde_json::from_str(&meta[name]).unwrap();
        let geometry = Conv { dilation: [c.d; 2], ..Conv::square(c.cin, c.cout, c.k, c.s, c.p, c.g) };
        let mut conv = Conv2d::with_geometry(b, geometry).unwrap();
        let (w, _) = get(&sd, &format!("{name}.w"));
        conv.weight.set_from_torch(b, &w).unwrap();
        let (x, xs) = get(&sd, &format!("{name}.x"));
        let (want, _) = get(&sd, &format!("{name}.y"));
        let y = conv.forward(b, &nchw(b, &x, &xs)).unwrap();
        assert_close(name, &to_nchw(b, y), &want, 1e-5);
    }
}

fn batch_norm_pooling_linear_and_shortcut_match_pytorch<B: Backend>(b: &B, _: Scale) {
    let (sd, _) = load("layers.safetensors");
    let (x, xs) = get(&sd, "bn.x");
    let x = nchw(b, &x, &xs);
    for (relu, key) in [(false, "bn.y"), (true, "bn.y_relu")] {
        let mut bn = BatchNorm2d::new(b, 6, relu).unwrap();
        bn.weight.set_from_torch(b, &get(&sd, "bn.weight").0).unwrap();
        bn.bias.set_from_torch(b, &get(&sd, "bn.bias").0).unwrap();
        bn.running_mean = b.upload(&get(&sd, "bn.running_mean").0).unwrap();
        bn.running_var = b.upload(&get(&sd, "bn.running_var").0).unwrap();
        let y = bn.forward(b, &x, None, Mode::Eval).unwrap();
        assert_close(key, &to_nchw(b, y), &get(&sd, key).0, 1e-5);
    }
    for name in ["maxpool", "maxpool_even"] {
        let (x, xs) = get(&sd, &format!("{name}.x"));
        let mut pool = MaxPool2d::new(3, 2, 1);
        let y = pool.forward(b, &nchw(b, &x, &xs)).unwrap();
        assert_close(name, &to_nchw(b, y), &get(&sd, &format!("{name}.y")).0, 0.0);
    }
    let (x, xs) = get(&sd, "gap.x");
    let mut gap = GlobalAvgPool::new();
    let y = gap.forward(b, &nchw(b, &x, &xs)).unwrap();
    assert_close("gap", &host(b, y), &get(&sd, "gap.y").0, 1e-6);

    let (x, xs) = get(&sd, "linear.x");
    let mut fc = Linear::new(b, 10, 4).unwrap();
    fc.weight.set_from_torch(b, &get(&sd, "linear.w").0).unwrap();
    fc.bias.set_from_torch(b, &get(&sd, "linear.b").0).unwrap();
    let y = fc.forward(b, &Tensor::from_host(b, [xs[0], 1, 1, xs[1]], &x).unwrap()).unwrap();
    assert_close("linear", &host(b, y), &get(&sd, "linear.y").0, 1e-5);

    let (x, xs) = get(&sd, "pad_shortcut.x");
    let mut sc = PadShortcut::new(4, 8, 2);
    let y = sc.forward(b, &nchw(b, &x, &xs)).unwrap();
    assert_close("pad_shortcut", &to_nchw(b, y), &get(&sd, "pad_shortcut.y").0, 0.0);
}

resnet::for_each_backend!(convolutions_match_pytorch, batch_norm_pooling_linear_and_shortcut_match_pytorch);
