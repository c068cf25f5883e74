//! Entry points for the micro-benchmarks in `benches/`: the hot paths set up
//! as the server runs them, with no sockets. Not a stable API.

use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use serde_json::Value;

use crate::protocol::wsframe::{FrameDecoder, Message};
use crate::protocol::{engineio, socketio};
use crate::shard::{run_inbox, Conn, Delivery, Router, Shard, Shared, SocketId, Target};
use crate::transport::outbox::Outbox;

/// Encodes a server event (`42["event",data]` in its WebSocket frame);
/// returns the frame's length.
pub fn encode_event(event: &str, data: &Value) -> usize {
    socketio::event_frame("/", event, data).wire().len()
}

/// Decodes a client's masked WebSocket text frame down to the Socket.IO
/// event's name and arguments, as the reader does; returns the argument count.
pub fn decode_client_event(frame: &[u8]) -> usize {
    let mut buf = BytesMut::from(frame);
    let Ok(Some(Message::Text(text))) = FrameDecoder::new(1 << 20).decode(&mut buf) else { panic!("a text frame") };
    let text = std::str::from_utf8(&text).expect("UTF-8");
    let Ok(engineio::Packet::Message(data)) = engineio::decode(text) else { panic!("an Engine.IO message") };
    let packet = socketio::decode(data).expect("a Socket.IO packet");
    socketio::parse_event(packet.data).expect("an event").1.len()
}

fn shared(shards: usize) -> (Arc<Shared>, Vec<crate::shard::ShardInbox>) {
    let (router, inboxes) = Router::new(shards);
    (Arc::new(Shared { max_connections: None, router, presence: None, connections: Default::default(), cluster: None }), inboxes)
}

/// A room whose members are spread over several shards (single-shard
/// processes, so each shard is its own room's home), with in-memory queues.
pub struct RoomBroadcast {
    room: Arc<str>,
    shards: Vec<(Rc<Shard>, Vec<Rc<Conn>>)>,
}

impl RoomBroadcast {
    /// `shards` shards of `members_per_shard` members each.
    pub fn new(shards: usize, members_per_shard: usize) -> RoomBroadcast {
        let room: Arc<str> = Arc::from("general");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let shards = (0..shards)
            .map(|_| {
                let (shared, mut inboxes) = shared(1);
                let shard = Rc::new(Shard::new(0, shared, inboxes.pop().expect("one inbox")));
                let conns = (0..members_per_shard)
                    .map(|_| {
                        let conn = Rc::new(Conn::new(SocketId::generate(0), Rc::new(Outbox::new(1 << 20)), "websocket"));
                        shard.add_conn(conn.clone());
                        runtime.block_on(shard.join_room(&conn, room.clone(), None));
                        conn
                    })
                    .collect();
                (shard, conns)
            })
            .collect();
        RoomBroadcast { room, shards }
    }

    /// One publish: encoded once, the same frame pushed to every member's
    /// queue on each shard; then the queues are emptied as writers would.
    /// Returns how many members got it.
    pub fn publish(&self, data: &Value) -> usize {
        let frame = socketio::event_frame("/", "notification", data);
        let delivery = Delivery::new(Target::Room(self.room.clone()), frame);
        let delivered = self.shards.iter().map(|(shard, _)| shard.deliver_local(&delivery)).sum();
        for (_, conns) in &self.shards {
            for conn in conns {
                std::hint::black_box(conn.outbox.take_all());
            }
        }
        delivered
    }
}

/// A shard on a thread of its own, fed from the calling thread.
pub struct CrossShard {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CrossShard {
    /// Starts the receiving shard's thread.
    pub fn new() -> CrossShard {
        let (shared, mut inboxes) = shared(2);
        let inbox = inboxes.pop().expect("two inboxes");
        let receiver_shared = shared.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let shard = Rc::new(Shard::new(1, receiver_shared, inbox));
                tokio::task::spawn_local(run_inbox(shard));
                let _ = stopped.await;
            });
        });
        CrossShard { shared, stop: Some(stop), thread: Some(thread) }
    }

    /// Sends `count` deliveries (to a shard with no connections: the
    /// hand-off is what costs) and waits until the shard has handled them.
    pub fn hand_off(&self, count: u64) {
        let frame = socketio::event_frame("/", "x", &1);
        for _ in 0..count {
            self.shared.router.deliver(1, Delivery::new(Target::All, frame.clone()));
        }
        // Channels are FIFO: once this runs, every delivery before it was handled.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.shared.router.run_on(1, move |_| done_tx.send(()).expect("the bench waits"));
        done_rx.recv().expect("the shard runs");
    }
}

impl Default for CrossShard {
    fn default() -> CrossShard {
        CrossShard::new()
    }
}

impl Drop for CrossShard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
