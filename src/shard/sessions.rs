//! The life of this shard's Engine.IO sessions: the one place a session is
//! opened and the one place it is closed, for both transports and whatever
//! handler it has (Socket.IO's `EngineSession` or a bare Engine.IO app), and
//! the registry of every live session ([`Sessions`]), which is how polling
//! requests find theirs by sid and how shutdown reaches each one.
//!
//! A session is live from its open until its transport has let go of it:
//! a WebSocket session until the connection ends; a polling session until
//! its owner task has seen it end and the last reader is done (see
//! `PollingSession::released`).

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::{Map, Shard, SocketId};
use crate::transport::engine::{EngineHandler, Settings};
use crate::transport::outbox::Outbox;
use crate::transport::polling::{PollingEndpoint, PollingSession};
use crate::transport::{websocket, CloseReason};

/// One live session, as the registry holds it.
struct Live {
    /// What every transport drains: closing it ends the session cleanly.
    outbox: Rc<Outbox>,
    /// The session's polling side, if it began on polling.
    polling: Option<Rc<dyn PollingEndpoint>>,
}

/// Every live Engine.IO session of one shard, by sid. Plain table, no I/O.
#[derive(Default)]
pub(super) struct Sessions {
    live: Map<SocketId, Live>,
    /// Set once the shard shuts down: every session is closed for it, and
    /// so is one that opens afterwards (its request was already accepted).
    closing: Option<CloseReason>,
}

impl Sessions {
    /// Adds a session that has just opened.
    fn insert(&mut self, sid: SocketId, outbox: Rc<Outbox>, polling: Option<Rc<dyn PollingEndpoint>>) {
        if let Some(reason) = &self.closing {
            outbox.close_for(reason.clone());
        }
        self.live.insert(sid, Live { outbox, polling });
    }

    fn remove(&mut self, sid: SocketId) {
        self.live.remove(&sid);
    }

    /// The polling session `sid` names, if it is live (sessions that began
    /// on WebSocket have none).
    fn polling(&self, sid: SocketId) -> Option<Rc<dyn PollingEndpoint>> {
        self.live.get(&sid).and_then(|live| live.polling.clone())
    }

    pub(super) fn len(&self) -> usize {
        self.live.len()
    }

    /// Closes every live session for `reason`, and any that opens from now
    /// on: each gets what is queued, then its end (a WebSocket close frame,
    /// or the close packet on its pending or next poll).
    pub(super) fn close_all(&mut self, reason: CloseReason) {
        for live in self.live.values() {
            live.outbox.close_for(reason.clone());
        }
        self.closing = Some(reason);
    }
}

impl Shard {
    /// Serves a session that starts on WebSocket (no sid: a new one) until
    /// it ends. `preamble`: the 101 response when the listener answered the
    /// upgrade, else empty (see `websocket::run`).
    /// `connection` is held until the session ends (the connection's place
    /// in the open-connection count).
    ///
    /// Not an `async fn`, for the reason `websocket::run` gives: this future
    /// is what an idle WebSocket connection is.
    #[allow(clippy::manual_async_fn)]
    pub fn serve_websocket<H: EngineHandler, C>(
        self: Rc<Self>,
        handler: H,
        settings: Arc<Settings>,
        opening: Box<websocket::Opening>,
        connection: C,
    ) -> impl Future<Output = ()> {
        async move {
            let sid = self.open_session(&handler, "websocket", None);
            let reason = websocket::run(opening, &sid, &settings, &self.counters.traffic, &handler).await;
            self.close_session(sid, &handler, &reason);
            // The connection has ended: nothing more to wait for (and no
            // await here, so the future keeps no room for one).
            self.release_session(sid);
            drop(connection);
        }
    }

    /// Opens a long-polling session on this shard and spawns its owner task
    /// (the heartbeat, then the close); returns the handshake body.
    pub fn open_polling<H: EngineHandler + 'static>(self: &Rc<Self>, handler: H, settings: Settings) -> Bytes {
        let session = Rc::new(PollingSession::new(handler, settings));
        let sid = self.open_session(&session.handler, "polling", Some(session.clone()));
        let open = session.open_packet(&sid.to_string());
        let shard = self.clone();
        tokio::task::spawn_local(async move {
            let reason = session.run().await;
            shard.close_session(sid, &session.handler, &reason);
            session.released(&reason).await;
            shard.release_session(sid);
        });
        open
    }

    /// The live polling session `sid` names on this shard.
    pub fn polling_session(&self, sid: &str) -> Option<Rc<dyn PollingEndpoint>> {
        self.sessions.borrow().polling(SocketId::parse(sid)?)
    }

    /// Engine.IO sessions live on this shard (connected to a namespace or not).
    pub fn session_count(&self) -> usize {
        self.sessions.borrow().len()
    }

    /// The one place a session opens: its sid, counted, its handler told,
    /// registered (and closed at once if the shard is already shutting down).
    fn open_session<H: EngineHandler>(
        &self,
        handler: &H,
        transport: &'static str,
        polling: Option<Rc<dyn PollingEndpoint>>,
    ) -> SocketId {
        let sid = SocketId::generate(self.index);
        self.counters.connection_opened();
        handler.on_open(transport);
        self.sessions.borrow_mut().insert(sid, handler.outbox().clone(), polling);
        sid
    }

    /// The one place a session closes: counted, logged, its handler told.
    /// It stays in the registry until [`release_session`](Self::release_session),
    /// once its transport has let go.
    fn close_session<H: EngineHandler>(&self, sid: SocketId, handler: &H, reason: &CloseReason) {
        self.counters.connection_closed(reason.label());
        log_close(sid, reason);
        handler.on_close(reason);
    }

    fn release_session(&self, sid: SocketId) {
        self.sessions.borrow_mut().remove(sid);
    }
}

fn log_close(sid: SocketId, reason: &CloseReason) {
    match reason {
        CloseReason::ProtocolError(detail) => {
            tracing::info!(session = %sid, reason = reason.label(), %detail, "connection closed")
        }
        CloseReason::PayloadTooLarge | CloseReason::SlowConsumer | CloseReason::InvalidUtf8 | CloseReason::RateLimited => {
            tracing::info!(session = %sid, reason = reason.label(), "connection closed")
        }
        _ => tracing::debug!(session = %sid, reason = reason.label(), "connection closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wsframe::OutFrame;
    use crate::transport::engine::{AppSession, EngineApp, EngineSocket};
    use fastwebsockets::OpCode;

    fn settings() -> Settings {
        Settings {
            ping_interval: std::time::Duration::from_secs(25),
            ping_timeout: std::time::Duration::from_secs(20),
            connect_timeout: std::time::Duration::from_secs(45),
            max_payload: 1000,
            outbox_limit: 1024,
            upgrades: &["websocket"],
        }
    }

    struct Silent;

    impl EngineApp for Silent {
        fn on_text(&self, _: &EngineSocket<'_>, _: &str) {}
        fn on_binary(&self, _: &EngineSocket<'_>, _: Bytes) {}
    }

    fn polling_session() -> Rc<PollingSession<AppSession>> {
        Rc::new(PollingSession::new(AppSession::new(Box::new(Silent), 16), settings()))
    }

    fn queued_frame() -> OutFrame {
        OutFrame::new(OpCode::Text, b"42[\"queued\"]")
    }

    /// What is queued, as (first byte, close code if it is a close frame).
    fn frames(outbox: &Outbox) -> Vec<(u8, Option<u16>)> {
        let (frames, _) = outbox.take_all();
        frames
            .iter()
            .map(|frame| {
                let wire = frame.wire();
                (wire[0], (wire[0] == 0x88).then(|| u16::from_be_bytes([wire[2], wire[3]])))
            })
            .collect()
    }

    #[test]
    fn polling_sessions_are_found_by_sid_and_websocket_sessions_are_not() {
        let mut sessions = Sessions::default();
        let (websocket, polling) = (SocketId::generate(0), SocketId::generate(0));
        sessions.insert(websocket, Rc::new(Outbox::new(16)), None);
        let session = polling_session();
        sessions.insert(polling, session.handler.outbox().clone(), Some(session.clone()));
        assert_eq!(sessions.len(), 2);
        assert!(sessions.polling(websocket).is_none());
        let found = sessions.polling(polling).expect("the polling session");
        assert!(std::ptr::addr_eq(Rc::as_ptr(&found), Rc::as_ptr(&session)));
        assert!(sessions.polling(SocketId::generate(0)).is_none());
        sessions.remove(polling);
        assert!(sessions.polling(polling).is_none());
        assert_eq!(sessions.len(), 1);
    }

    /// Shutdown reaches every live session, whatever its transport: each
    /// gets what was queued, then the 1001 close frame (which a polling GET
    /// turns into the close packet). Closed sessions stay registered until
    /// their transport lets go.
    #[test]
    fn closing_all_closes_every_live_session_after_what_is_queued() {
        let mut sessions = Sessions::default();
        let websockets: Vec<Rc<Outbox>> = (0..3).map(|_| Rc::new(Outbox::new(16))).collect();
        for outbox in &websockets {
            outbox.push(queued_frame());
            sessions.insert(SocketId::generate(0), outbox.clone(), None);
        }
        let polling = polling_session();
        sessions.insert(SocketId::generate(0), polling.handler.outbox().clone(), Some(polling.clone()));
        sessions.close_all(CloseReason::ServerShutdown);
        for outbox in &websockets {
            assert_eq!(outbox.close_reason(), Some(CloseReason::ServerShutdown));
            assert_eq!(frames(outbox), [(0x81, None), (0x88, Some(1001))]);
        }
        assert_eq!(polling.handler.outbox().close_reason(), Some(CloseReason::ServerShutdown));
        assert_eq!(sessions.len(), 4);
    }

    /// A session whose request was accepted before the shutdown but which
    /// registers after it is closed as it opens.
    #[test]
    fn a_session_that_opens_after_shutdown_began_is_closed_at_once() {
        let mut sessions = Sessions::default();
        sessions.close_all(CloseReason::ServerShutdown);
        let late = Rc::new(Outbox::new(16));
        late.push(queued_frame());
        sessions.insert(SocketId::generate(0), late.clone(), None);
        assert_eq!(late.close_reason(), Some(CloseReason::ServerShutdown));
        assert_eq!(frames(&late), [(0x81, None), (0x88, Some(1001))]);
    }

    fn shard() -> Rc<Shard> {
        let (router, mut inboxes) = super::super::Router::new(1);
        let shared = super::super::Shared {
            max_connections: None,
            router,
            presence: None,
            connections: Default::default(),
            cluster: None,
        };
        Rc::new(Shard::new(0, std::sync::Arc::new(shared), inboxes.remove(0)))
    }

    fn sid_of(open: &Bytes) -> String {
        let info: serde_json::Value = serde_json::from_slice(&open[1..]).expect("an open packet");
        info["sid"].as_str().expect("a sid").to_string()
    }

    /// Lets every task that is ready run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Polling sessions that never sent anything end with the close packet
    /// at shutdown: a pending GET gets it at once; a session with no GET
    /// waiting stays registered until its next GET has it. Then they leave
    /// the shard's registry.
    #[test]
    fn shutdown_answers_the_pending_or_next_poll_with_the_close_packet() {
        use crate::transport::Traffic;
        use crate::transport::polling::PollError;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let shard = shard();
            let traffic = Traffic::default();
            let open = |shard: &Rc<Shard>| shard.open_polling(AppSession::new(Box::new(Silent), 16), settings());
            let waiting = shard.polling_session(&sid_of(&open(&shard))).expect("registered");
            let idle = shard.polling_session(&sid_of(&open(&shard))).expect("registered");
            assert_eq!(shard.session_count(), 2);
            let pending = tokio::task::spawn_local({
                let waiting = waiting.clone();
                async move { waiting.get(&Traffic::default()).await }
            });
            settle().await;
            assert!(!pending.is_finished(), "nothing to send yet");

            shard.begin_shutdown();
            assert_eq!(pending.await.unwrap(), Ok(Bytes::from_static(b"1")));
            settle().await;
            assert_eq!(shard.session_count(), 1, "the idle session waits for its next poll");
            assert_eq!(idle.get(&traffic).await, Ok(Bytes::from_static(b"1")));
            settle().await;
            assert_eq!(shard.session_count(), 0);
            assert_eq!(waiting.get(&traffic).await, Err(PollError::Closed));
        });
    }
}
