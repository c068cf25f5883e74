#![no_main]
// See shardcast::fuzzing::engineio_packet for the input's layout and the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast::fuzzing::engineio_packet(data));
