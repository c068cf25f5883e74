#![no_main]
// See shardcast::fuzzing::polling_body for the input's layout and the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast::fuzzing::polling_body(data));
