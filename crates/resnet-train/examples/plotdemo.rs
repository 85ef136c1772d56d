use resnet_train::plot::*;
fn main() {
    let s = |name: &str, c, bold, f: fn(f64) -> f64| Series {
        name: name.into(),
        points: (0..100).map(|i| (i as f64 * 10.0, f(i as f64))).collect(),
        color: c,
        bold,
    };
    let p1 = Panel {
        title: "loss".into(),
        x_label: "iteration".into(),
        y_label: "cross-entropy".into(),
        log_y: false,
        series: vec![
            s("train", 0, false, |x| 2.0 * (-x / 30.0).exp() + 0.2),
            s("test", 0, true, |x| 2.1 * (-x / 30.0).exp() + 0.3),
        ],
    };
    let p2 = Panel {
        title: "error".into(),
        x_label: "iteration".into(),
        y_label: "error (%)".into(),
        log_y: true,
        series: vec![
            s("train", 1, false, |x| 80.0 * (-x / 30.0).exp() + 5.0),
            s("test", 1, true, |x| 80.0 * (-x / 30.0).exp() + 8.0),
        ],
    };
    line_charts(std::path::Path::new("/tmp/pt/curves"), &[p1, p2]).unwrap();
    let labels: Vec<String> = resnet::labels::FASHION_MNIST.iter().map(|s| s.to_string()).collect();
    let m: Vec<Vec<u64>> =
        (0..10).map(|i| (0..10).map(|j| if i == j { 90 } else { (i * j % 7) as u64 }).collect()).collect();
    confusion_heatmap(std::path::Path::new("/tmp/pt/cm"), "confusion", &m, &labels).unwrap();
}
