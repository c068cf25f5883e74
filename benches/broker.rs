//! Micro-benchmarks of the hot paths (`cargo bench --bench broker`):
//! codecs, the encode-once room broadcast, and the cross-shard hand-off.
//! They print figures; nothing here asserts a speed.

use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardcast::protocol::wsframe::FrameDecoder;
use shardcast::protocol::{engineio, socketio};
use shardcast::shard::{run_inbox, Conn, Delivery, Router, Shard, Shared, SocketId, Target};
use shardcast::transport::outbox::Outbox;
use shardcast::Config;

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
    group.bench_function("encode_event_frame", |b| {
        b.iter(|| black_box(socketio::event_frame("/", "user-joined", black_box(&data))))
    });
    let frame = client_frame(br#"42["custom-event",{"event":"typing","data":{"x":1},"roomName":"general"}]"#);
    group.bench_function("decode_client_event", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&frame[..]);
            let message = FrameDecoder::new(1 << 20).decode(&mut buf).unwrap().unwrap();
            let shardcast::protocol::wsframe::Message::Text(text) = message else { unreachable!() };
            let text = std::str::from_utf8(&text).unwrap();
            let engineio::Packet::Message(data) = engineio::decode(text).unwrap() else { unreachable!() };
            let packet = socketio::decode(data).unwrap();
            black_box(socketio::parse_event(packet.data).unwrap());
        })
    });
    group.finish();
}

fn shard_with_members(members: usize, room: &Arc<str>) -> (Rc<Shard>, Vec<Rc<Conn>>) {
    let (router, mut inboxes) = Router::new(1);
    let mut config = Config::defaults();
    config.shards = std::num::NonZeroUsize::new(1);
    let shared = Arc::new(Shared { config: Arc::new(config), router, presence: None, connections: Default::default() });
    let shard = Rc::new(Shard::new(0, shared, inboxes.pop().unwrap()));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let conns: Vec<Rc<Conn>> = (0..members)
        .map(|_| {
            let conn = Rc::new(Conn::new(SocketId::generate(0), Rc::new(Outbox::new(1 << 20)), "websocket"));
            shard.add_conn(conn.clone());
            runtime.block_on(shard.join_room(&conn, room.clone(), None));
            conn
        })
        .collect();
    (shard, conns)
}

/// One publish to a room of 10,000 spread over 4 shards: encoded once, then
/// the same frame pushed to every member's queue on each shard (the queues
/// are drained after each publish, as writers would).
fn room_broadcast(c: &mut Criterion) {
    let room: Arc<str> = Arc::from("general");
    let shards: Vec<(Rc<Shard>, Vec<Rc<Conn>>)> = (0..4).map(|_| shard_with_members(2500, &room)).collect();
    let mut group = c.benchmark_group("broadcast");
    group.throughput(Throughput::Elements(10_000));
    group.measurement_time(Duration::from_secs(5));
    let data = serde_json::json!({ "message": "hello", "timestamp": "2026-11-26T05:17:52.455Z" });
    group.bench_function("room_10k_recipients_4_shards", |b| {
        b.iter(|| {
            let frame = socketio::event_frame("/", "notification", &data);
            let delivery = Delivery::new(Target::Room(room.clone()), frame);
            let mut delivered = 0;
            for (shard, _) in &shards {
                delivered += shard.deliver_local(&delivery);
            }
            assert_eq!(delivered, 10_000);
            for (_, conns) in &shards {
                for conn in conns {
                    black_box(conn.outbox.take_all());
                }
            }
        })
    });
    group.finish();
}

/// Messages from one thread to a shard thread over its channel and `Notify`,
/// handled there (a delivery to an empty shard: the hand-off is what costs).
fn cross_shard_handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("cross_shard");
    const BATCH: u64 = 10_000;
    group.throughput(Throughput::Elements(BATCH));
    let (router, mut inboxes) = Router::new(2);
    let shared = Arc::new(Shared { config: Arc::new(Config::defaults()), router, presence: None, connections: Default::default() });
    let inbox = inboxes.pop().unwrap();
    let receiver_shared = shared.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let receiver = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let shard = Rc::new(Shard::new(1, receiver_shared, inbox));
            tokio::task::spawn_local(run_inbox(shard));
            let _ = stop_rx.await;
        });
    });
    let frame = socketio::event_frame("/", "x", &1);
    group.bench_function("handoff_10k_messages", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                shared.router.deliver(1, Delivery::new(Target::All, frame.clone()));
            }
            // Channels are FIFO: once this runs, every delivery before it was handled.
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            shared.router.run_on(1, move |_| done_tx.send(()).unwrap());
            done_rx.recv().unwrap();
        })
    });
    group.finish();
    let _ = stop_tx.send(());
    receiver.join().unwrap();
}

criterion_group!(benches, codecs, room_broadcast, cross_shard_handoff);
criterion_main!(benches);
