#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| resnet_fuzz::load_weights(data));
