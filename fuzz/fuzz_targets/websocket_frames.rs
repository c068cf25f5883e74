#![no_main]
// See shardcast::fuzzing::websocket_frames for the input's layout and the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast::fuzzing::websocket_frames(data));
