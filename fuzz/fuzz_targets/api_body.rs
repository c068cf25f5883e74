#![no_main]
// See shardcast::fuzzing::api_body for the input's layout and the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast::fuzzing::api_body(data));
