#![no_main]
// See shardcast::fuzzing::client_event for the input's layout and the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast::fuzzing::client_event(data));
