#![no_main]
// See shardcast::fuzzing::socketio_binary for the input's layout and the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast::fuzzing::socketio_binary(data));
