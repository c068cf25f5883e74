//! Micro-benchmarks of the hot paths (`cargo bench --bench broker`):
//! codecs, the encode-once room broadcast, and the cross-shard hand-off.
//! They print figures; nothing here asserts a speed.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardcast::bench::{decode_client_event, encode_event, CrossShard, RoomBroadcast};

/// A client text frame, masked as browsers send it.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn codecs(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    let data = serde_json::json!({ "roomName": "general", "userId": "user123", "timestamp": "2026-11-26T05:17:52.455Z" });
    group.bench_function("encode_event_frame", |b| b.iter(|| black_box(encode_event("user-joined", black_box(&data)))));
    let frame = client_frame(br#"42["custom-event",{"event":"typing","data":{"x":1},"roomName":"general"}]"#);
    group.bench_function("decode_client_event", |b| b.iter(|| black_box(decode_client_event(black_box(&frame)))));
    group.finish();
}

/// One publish to a room of 10,000 spread over 4 shards: encoded once, then
/// the same frame pushed to every member's queue on each shard (the queues
/// are drained after each publish, as writers would).
fn room_broadcast(c: &mut Criterion) {
    let room = RoomBroadcast::new(4, 2500);
    let mut group = c.benchmark_group("broadcast");
    group.throughput(Throughput::Elements(10_000));
    group.measurement_time(Duration::from_secs(5));
    let data = serde_json::json!({ "message": "hello", "timestamp": "2026-11-26T05:17:52.455Z" });
    group.bench_function("room_10k_recipients_4_shards", |b| b.iter(|| assert_eq!(room.publish(&data), 10_000)));
    group.finish();
}

/// Messages from one thread to a shard thread over its channel and `Notify`,
/// handled there (a delivery to an empty shard: the hand-off is what costs).
fn cross_shard_handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("cross_shard");
    const BATCH: u64 = 10_000;
    group.throughput(Throughput::Elements(BATCH));
    let receiver = CrossShard::new();
    group.bench_function("handoff_10k_messages", |b| b.iter(|| receiver.hand_off(BATCH)));
    group.finish();
}

criterion_group!(benches, codecs, room_broadcast, cross_shard_handoff);
criterion_main!(benches);
