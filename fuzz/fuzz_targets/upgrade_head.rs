#![no_main]
// See shardcast::fuzzing::upgrade_head for the input's layout and the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast::fuzzing::upgrade_head(data));
