#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kimi_proxy_fuzz::config(data));
