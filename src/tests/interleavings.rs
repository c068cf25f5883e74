//! Deterministic tests of the shard runtime's ordering rules (the `shard`
//! module doc, README "Ordering"): real Socket.IO sessions on two to four
//! shards, all on this one thread, with the test choosing every step — apply
//! one message from some shard's inbox, read a client's next packet, or let
//! a waiting request resume. A seeded generator picks among them, so the bad
//! interleavings (a member's leave read before its shard applied the
//! announcement sent to it, a publish racing a join) are tried on purpose on
//! every run, and a failure names the seed that reproduces it.
//!
//! What is checked: clients run causal chains of requests — each request
//! sent only once the previous one's ack (or publish answer) arrived, like a
//! user reacting to what they saw. One socket.io process gives every client
//! the effects of such a chain exactly once and in chain order, if and only
//! if the client was concerned at that point of the chain; so must we.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Waker};

use serde_json::{json, Value};

use crate::app::auth::Authenticator;
use crate::app::namespace::Namespaces;
use crate::app::session::{AppContext, EngineSession};
use crate::broker::{BroadcastOptions, Broker, Scope};
use crate::config::Config;
use crate::protocol::socketio::{self, PacketType};
use crate::shard::{Router, Shard, Shared};
use crate::transport::engine::EngineHandler;

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Polls once; `true` when done. The test itself decides when to poll again.
fn poll_once(task: &mut Task) -> bool {
    task.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_ready()
}

/// What a client received, in order.
#[derive(Debug, Clone)]
enum Received {
    Event(String, Value),
    Ack(u64, Value),
}

struct Client {
    session: Rc<EngineSession>,
    socket_id: String,
    received: Vec<Received>,
}

/// A process's worth of shards, driven by hand.
struct World {
    shards: Vec<Rc<Shard>>,
    broker: Broker,
    clients: Vec<Client>,
    /// Socket id → client index.
    by_socket: HashMap<String, usize>,
    next_ack: u64,
}

impl World {
    fn new(shard_count: usize) -> World {
        let (router, inboxes) = Router::new(shard_count);
        let shared = Arc::new(Shared { max_connections: None, router, presence: None, connections: Default::default(), cluster: None });
        let shards = inboxes.into_iter().enumerate().map(|(i, inbox)| Rc::new(Shard::new(i, shared.clone(), inbox))).collect();
        World { shards, broker: Broker::new(shared, "/"), clients: Vec::new(), by_socket: HashMap::new(), next_ack: 1 }
    }

    /// A client on `shard`, connected as `user` (everything applied).
    fn connect(&mut self, shard: usize, user: &str) -> usize {
        let context = Arc::new(AppContext {
            auth: Authenticator::new(None),
            namespaces: Namespaces::builtin("/"),
            settings: crate::server::app_settings(&Config::defaults()),
        });
        let session = Rc::new(EngineSession::new(self.shards[shard].clone(), context));
        session.on_open("websocket");
        let index = self.clients.len();
        self.clients.push(Client { session, socket_id: String::new(), received: Vec::new() });
        let mut connect = self.packet_task(index, format!("0{}", json!({ "userId": user })));
        self.finish(&mut connect);
        let socket_id = self.clients[index].received.iter().find_map(|r| match r {
            Received::Event(name, data) if name == "connected" => data["socketId"].as_str().map(str::to_string),
            _ => None,
        });
        let socket_id = socket_id.expect("a connected event");
        self.by_socket.insert(socket_id.clone(), index);
        self.clients[index].socket_id = socket_id;
        index
    }

    /// The client's next packet, as its reader would hand it to the session.
    fn packet_task(&self, client: usize, packet: String) -> Task {
        let session = self.clients[client].session.clone();
        Box::pin(async move { session.on_message(&packet).await.expect("the session stays open") })
    }

    /// An event with an ack request; returns the task and the ack id.
    fn request(&mut self, client: usize, event: &str, payload: Value) -> (Task, u64) {
        let id = self.next_ack;
        self.next_ack += 1;
        (self.packet_task(client, format!("2{id}{}", json!([event, payload]))), id)
    }

    fn ack(&self, client: usize, id: u64) -> Option<&Value> {
        self.clients[client].received.iter().find_map(|r| match r {
            Received::Ack(ack, body) if *ack == id => Some(body),
            _ => None,
        })
    }

    fn inbox_depths(&self) -> Vec<usize> {
        self.shards[0].shared.router.queue_depths()
    }

    /// Applies one message from `shard`'s inbox.
    fn apply_one(&self, shard: usize) {
        self.shards[shard].apply_inbox(1);
    }

    /// Runs `task` to the end, applying inboxes as needed, then everything left.
    fn finish(&mut self, task: &mut Task) {
        for _ in 0..10_000 {
            let done = poll_once(task);
            for shard in 0..self.shards.len() {
                self.shards[shard].apply_inbox(usize::MAX);
            }
            self.collect();
            if done && self.inbox_depths().iter().all(|d| *d == 0) {
                return;
            }
        }
        panic!("a task did not finish");
    }

    /// Moves what each client's outbox holds into its `received` log.
    fn collect(&mut self) {
        for client in &mut self.clients {
            let (frames, _) = client.session.outbox().take_all();
            for frame in frames {
                let payload = frame.payload();
                let text = std::str::from_utf8(&payload).expect("text frames");
                let text = text.strip_prefix('4').expect("Engine.IO message packets");
                let packet = socketio::decode(text).expect("valid Socket.IO packets");
                match packet.kind {
                    PacketType::Event => {
                        let (name, args) = socketio::parse_event(packet.data).expect("valid events");
                        let data = args.first().map_or(Value::Null, |raw| serde_json::from_str(raw.get()).unwrap());
                        client.received.push(Received::Event(name, data));
                    }
                    PacketType::Ack => {
                        let body: Vec<Value> = serde_json::from_str(packet.data).unwrap();
                        client.received.push(Received::Ack(packet.ack_id.unwrap(), body[0].clone()));
                    }
                    _ => {}
                }
            }
        }
    }

    /// A room name whose home is `shard`.
    fn room_homed_on(&self, shard: usize, prefix: &str) -> String {
        (0..).map(|i| format!("{prefix}-{i}")).find(|name| self.shards[0].shared.router.home_of(name) == shard).unwrap()
    }

    /// What a client saw of other clients' doings, as comparable lines (its
    /// own acks and replies left out).
    fn observed(&self, client: usize) -> Vec<String> {
        let who = |data: &Value| self.by_socket[data["socketId"].as_str().unwrap()];
        self.clients[client]
            .received
            .iter()
            .filter_map(|r| match r {
                Received::Event(name, d) => match name.as_str() {
                    "user-joined" => Some(format!("joined {} c{}", d["roomName"].as_str().unwrap(), who(d))),
                    "user-left" => Some(format!("left {} c{}", d["roomName"].as_str().unwrap(), who(d))),
                    "note" | "news" => Some(format!("{name} {} #{}", d["room"].as_str().unwrap(), d["seq"])),
                    "private-message" => Some(format!("pm #{}", d["message"]["seq"])),
                    _ => None,
                },
                Received::Ack(..) => None,
            })
            .collect()
    }
}

// ---- one hand-picked schedule ------------------------------------------------

/// The interleaving of the bug report, step by step: A's leave is answered
/// while the home's `user-left` for B still waits in B's shard's inbox, and
/// B's own leave is read right then.
#[test]
fn a_member_leaving_right_after_another_still_hears_of_the_first_leave() {
    let mut world = World::new(3);
    let room = world.room_homed_on(0, "chain");
    let a = world.connect(1, "alice");
    let b = world.connect(2, "bob");
    for client in [a, b] {
        let (mut join, _) = world.request(client, "join-room", json!({ "roomName": room }));
        world.finish(&mut join);
    }

    let (mut a_leaves, a_ack) = world.request(a, "leave-room", json!({ "roomName": room }));
    assert!(!poll_once(&mut a_leaves), "the leave waits for the room's home");
    world.apply_one(0); // the home: counts the leave, sends user-left to shards 1 and 2, replies
    assert!(poll_once(&mut a_leaves));
    world.collect();
    assert_eq!(world.ack(a, a_ack).unwrap()["success"], true, "A holds its ack");
    assert_eq!(world.inbox_depths()[2], 1, "user-left is still on its way to B's shard");

    // B reacts to A's ack: its leave is read before shard 2 ran its inbox.
    let (mut b_leaves, b_ack) = world.request(b, "leave-room", json!({ "roomName": room }));
    world.finish(&mut b_leaves);
    let seen = &world.clients[b].received;
    let left = seen.iter().position(|r| matches!(r, Received::Event(name, _) if name == "user-left"));
    let acked = seen.iter().position(|r| matches!(r, Received::Ack(id, _) if *id == b_ack));
    assert!(left.is_some(), "B never heard that A left: {seen:?}");
    assert!(left < acked, "B heard of A's leave after its own leave's ack: {seen:?}");
}

// ---- random schedules of random causal chains ---------------------------------

/// One request of a chain (client indices are the world's).
#[derive(Debug, Clone)]
enum Op {
    Join(usize),
    Leave(usize),
    /// `custom-event` "note" to the room.
    Relay(usize, u32),
    /// `Broker` publish ("news") to the room: what `POST /api/rooms/{room}/broadcast` does.
    Publish(u32),
    PrivateMessage { from: usize, to: String, seq: u32 },
    /// The client's Socket.IO DISCONNECT: no ack, so nothing after it in
    /// the chain waits for its effects.
    Disconnect(usize),
}

/// One causal chain over its own room and clients, with the model of what
/// one socket.io process would deliver.
struct Chain {
    room: String,
    ops: Vec<Op>,
    /// Expected `observed()` lines per client, in order.
    expected: HashMap<usize, Vec<String>>,
    /// Expected ack `memberCount` of each join, publish `delivered` counts.
    member_counts: Vec<usize>,
    /// Clients whose disconnect announces `user-left` at no fixed point of
    /// the chain, with the members that stay to the end (they must hear it once).
    disconnects: Vec<(usize, Vec<usize>)>,
    next: usize,
    task: Option<Started>,
}

impl Chain {
    /// A random valid chain of `length` requests over `clients` (each pair
    /// `clients[i]`, `clients[i + n/2]` is one user's two connections).
    fn generate(rng: &mut fastrand::Rng, room: String, clients: &[usize], users: &[String], members: &[bool], length: usize) -> Chain {
        let mut member = members.to_vec();
        let mut connected = vec![true; clients.len()];
        let mut expected: HashMap<usize, Vec<String>> = clients.iter().map(|c| (*c, Vec::new())).collect();
        let mut ops = Vec::new();
        let mut member_counts = Vec::new();
        let mut disconnected: Vec<(usize, Vec<usize>)> = Vec::new();
        let user_of = |i: usize| &users[i % users.len()];
        for seq in 0..length as u32 {
            let pick = |rng: &mut fastrand::Rng, wanted: &dyn Fn(usize) -> bool| {
                let candidates: Vec<usize> = (0..clients.len()).filter(|i| wanted(*i)).collect();
                (!candidates.is_empty()).then(|| candidates[rng.usize(..candidates.len())])
            };
            let tell = |expected: &mut HashMap<usize, Vec<String>>, member: &[bool], except: Option<usize>, line: String| {
                for i in (0..clients.len()).filter(|i| member[*i] && Some(*i) != except) {
                    expected.get_mut(&clients[i]).unwrap().push(line.clone());
                }
            };
            let live = connected.iter().filter(|c| **c).count();
            match rng.u8(..100) {
                0..=19 => {
                    let Some(i) = pick(rng, &|i| connected[i] && !member[i]) else { continue };
                    member[i] = true;
                    tell(&mut expected, &member, Some(i), format!("joined {room} c{}", clients[i]));
                    member_counts.push(member.iter().filter(|m| **m).count());
                    ops.push(Op::Join(clients[i]));
                }
                20..=39 => {
                    let Some(i) = pick(rng, &|i| member[i]) else { continue };
                    member[i] = false;
                    disconnected.iter_mut().for_each(|(_, stay): &mut (usize, Vec<usize>)| stay.retain(|m| *m != i));
                    tell(&mut expected, &member, Some(i), format!("left {room} c{}", clients[i]));
                    ops.push(Op::Leave(clients[i]));
                }
                40..=59 => {
                    let Some(i) = pick(rng, &|i| member[i]) else { continue };
                    tell(&mut expected, &member, Some(i), format!("note {room} #{seq}"));
                    ops.push(Op::Relay(clients[i], seq));
                }
                60..=74 => {
                    tell(&mut expected, &member, None, format!("news {room} #{seq}"));
                    member_counts.push(member.iter().filter(|m| **m).count());
                    ops.push(Op::Publish(seq));
                }
                75..=94 => {
                    let Some(from) = pick(rng, &|i| connected[i]) else { continue };
                    let Some(to) = pick(rng, &|i| connected[i] && user_of(i) != user_of(from)) else { continue };
                    let to = user_of(to).clone();
                    for i in (0..clients.len()).filter(|i| connected[*i] && *user_of(*i) == to) {
                        expected.get_mut(&clients[i]).unwrap().push(format!("pm #{seq}"));
                    }
                    ops.push(Op::PrivateMessage { from: clients[from], to, seq });
                }
                _ if live > 3 => {
                    let Some(i) = pick(rng, &|i| connected[i]) else { continue };
                    connected[i] = false;
                    disconnected.iter_mut().for_each(|(_, stay)| stay.retain(|m| *m != i));
                    if std::mem::replace(&mut member[i], false) {
                        disconnected.push((i, (0..clients.len()).filter(|m| member[*m]).collect()));
                    }
                    ops.push(Op::Disconnect(clients[i]));
                }
                _ => {}
            }
        }
        // A disconnect's `user-left` must reach, once, the members who were
        // there and stayed to the end; others may hear it once or not at all.
        let disconnects =
            disconnected.into_iter().map(|(i, stay)| (clients[i], stay.into_iter().map(|m| clients[m]).collect())).collect();
        Chain { room, ops, expected, member_counts, disconnects, next: 0, task: None }
    }
}

/// Runs chains side by side under a seeded schedule and checks every
/// client's view against the model.
fn run_random_schedule(seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let shard_count = 2 + rng.usize(..3);
    let mut world = World::new(shard_count);
    let mut chains = Vec::new();
    for c in 0..2 {
        let room = world.room_homed_on(rng.usize(..shard_count), &format!("room{c}"));
        let per_chain = 6;
        let users: Vec<String> = (0..per_chain / 2).map(|u| format!("c{c}-user{u}")).collect();
        let clients: Vec<usize> = (0..per_chain).map(|i| world.connect(rng.usize(..shard_count), &users[i % users.len()])).collect();
        let members: Vec<bool> = (0..per_chain).map(|_| rng.bool()).collect();
        for (i, is_member) in members.iter().enumerate() {
            if *is_member {
                let (mut join, _) = world.request(clients[i], "join-room", json!({ "roomName": room }));
                world.finish(&mut join);
            }
        }
        let length = 12 + rng.usize(..20);
        chains.push(Chain::generate(&mut rng, room, &clients, &users, &members, length));
    }
    for client in 0..world.clients.len() {
        world.clients[client].received.clear();
    }

    let mut joins_checked = vec![0usize; chains.len()];
    for _tick in 0..200_000 {
        // Every step the world could take next.
        let depths = world.inbox_depths();
        let mut steps: Vec<(u8, usize)> = Vec::new();
        for (i, chain) in chains.iter().enumerate() {
            if chain.task.is_some() {
                steps.push((0, i)); // a waiting request resumes (or finds it must wait on)
            } else if chain.next < chain.ops.len() {
                steps.push((1, i)); // the next request of the chain is read
            }
        }
        steps.extend(depths.iter().enumerate().filter(|(_, d)| **d > 0).map(|(s, _)| (2, s)));
        if steps.is_empty() {
            break;
        }
        let (kind, i) = steps[rng.usize(..steps.len())];
        match kind {
            0 => {
                let chain = &mut chains[i];
                let (task, _, _) = chain.task.as_mut().unwrap();
                if poll_once(task) {
                    let (_, acked, delivered) = chain.task.take().unwrap();
                    check_answer(&mut world, &chains[i], acked, delivered, &mut joins_checked[i], seed);
                    chains[i].next += 1;
                }
            }
            1 => {
                let room = chains[i].room.clone();
                let op = chains[i].ops[chains[i].next].clone();
                let (mut task, acked, delivered) = start(&mut world, &room, &op);
                if poll_once(&mut task) {
                    world.collect();
                    check_answer(&mut world, &chains[i], acked, delivered, &mut joins_checked[i], seed);
                    chains[i].next += 1;
                } else {
                    chains[i].task = Some((task, acked, delivered));
                }
            }
            _ => world.apply_one(i),
        }
        world.collect();
    }
    assert!(chains.iter().all(|c| c.next == c.ops.len()), "seed {seed}: the chains did not finish");
    assert!(world.inbox_depths().iter().all(|d| *d == 0));

    for chain in &chains {
        let unordered: Vec<(String, &Vec<usize>)> =
            chain.disconnects.iter().map(|(c, stay)| (format!("left {} c{c}", chain.room), stay)).collect();
        for (client, expected) in &chain.expected {
            let mut observed = world.observed(*client);
            // A disconnect comes after everything before it in the chain, so
            // its `user-left` is the last line about that client; only its
            // place among later effects is free.
            for (line, stay) in &unordered {
                let heard = observed.iter().filter(|l| *l == line).count();
                let extra = heard.saturating_sub(expected.iter().filter(|l| *l == line).count());
                let wanted = if stay.contains(client) { 1 } else { extra.min(1) };
                assert_eq!(extra, wanted, "seed {seed}: c{client} heard the disconnect's `{line}` {extra} times");
                if extra == 1 {
                    let last = observed.iter().rposition(|l| l == line).unwrap();
                    observed.remove(last);
                }
            }
            assert_eq!(
                &observed, expected,
                "seed {seed}: client c{client} saw the chain's effects out of order, twice or not at all (ops: {:?})",
                chain.ops
            );
        }
    }
}

/// A started request: its task, the (client, ack id) its answer comes as,
/// and the count a publish fills in when it is done.
type Started = (Task, Option<(usize, u64)>, Option<Rc<std::cell::Cell<usize>>>);

/// Starts one request of a chain: its packet is read now.
fn start(world: &mut World, room: &str, op: &Op) -> Started {
    let (client, event, payload) = match op {
        Op::Join(c) => (*c, "join-room", json!({ "roomName": room })),
        Op::Leave(c) => (*c, "leave-room", json!({ "roomName": room })),
        Op::Relay(c, seq) => (*c, "custom-event", json!({ "event": "note", "roomName": room, "data": { "room": room, "seq": seq } })),
        Op::PrivateMessage { from, to, seq } => {
            // A rich message object, as chat clients send: delivered as is.
            (*from, "private-message", json!({ "targetUserId": to, "message": { "seq": seq, "attachments": [{ "url": "x" }] } }))
        }
        Op::Publish(seq) => {
            let publication = world
                .broker
                .prepare(Scope::Room(room), "news", &json!({ "room": room, "seq": seq }), BroadcastOptions::default())
                .unwrap();
            let broker = world.broker.clone();
            let delivered = Rc::new(std::cell::Cell::new(usize::MAX));
            let out = delivered.clone();
            return (Box::pin(async move { out.set(broker.send(publication).await) }), None, Some(delivered));
        }
        Op::Disconnect(c) => return (world.packet_task(*c, "1".to_string()), None, None),
    };
    let (task, id) = world.request(client, event, payload);
    (task, Some((client, id)), None)
}

/// A finished request's answer: acks succeed, joins and publishes count
/// exactly the members the model has at that point.
fn check_answer(
    world: &mut World,
    chain: &Chain,
    acked: Option<(usize, u64)>,
    delivered: Option<Rc<std::cell::Cell<usize>>>,
    counts_checked: &mut usize,
    seed: u64,
) {
    world.collect();
    let op = &chain.ops[chain.next];
    if let Some((client, id)) = acked {
        let ack = world.ack(client, id).unwrap_or_else(|| panic!("seed {seed}: no ack for {op:?}"));
        assert_eq!(ack["success"], true, "seed {seed}: {op:?} failed: {ack}");
        if let Op::Join(_) = op {
            assert_eq!(ack["memberCount"], chain.member_counts[*counts_checked], "seed {seed}: memberCount of {op:?}");
            *counts_checked += 1;
        }
    }
    if let Some(delivered) = delivered {
        assert_eq!(delivered.get(), chain.member_counts[*counts_checked], "seed {seed}: delivered count of {op:?}");
        *counts_checked += 1;
    }
}

#[test]
fn causal_chains_under_random_schedules_reach_exactly_who_they_concern_in_order() {
    for seed in 0..400 {
        run_random_schedule(seed);
    }
}
