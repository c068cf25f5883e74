//! The life of this shard's Engine.IO sessions: the one place a session is
//! opened and the one place it is closed, for both transports and whatever
//! handler it has (Socket.IO's `EngineSession` or a bare Engine.IO app), and
//! the registry of every live session ([`Sessions`]), which is how polling
//! requests find theirs by sid.
//!
//! A session is live from its open until its transport has let go of it:
//! a WebSocket session until the connection ends; a polling session until
//! its owner task has seen it end and the last reader is done (see
//! `PollingSession::released`).

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::{Map, Shard, SocketId};
use crate::transport::engine::{EngineHandler, Settings};
use crate::transport::polling::{PollingEndpoint, PollingSession};
use crate::transport::{websocket, CloseReason};

/// One live session, as the registry holds it.
struct Live {
    /// The session's polling side, if it began on polling.
    polling: Option<Rc<dyn PollingEndpoint>>,
}

/// Every live Engine.IO session of one shard, by sid. Plain table, no I/O.
#[derive(Default)]
pub(super) struct Sessions {
    live: Map<SocketId, Live>,
}

impl Sessions {
    /// Adds a session that has just opened.
    fn insert(&mut self, sid: SocketId, polling: Option<Rc<dyn PollingEndpoint>>) {
        self.live.insert(sid, Live { polling });
    }

    fn remove(&mut self, sid: SocketId) {
        self.live.remove(&sid);
    }

    /// The polling session `sid` names, if it is live (sessions that began
    /// on WebSocket have none).
    fn polling(&self, sid: SocketId) -> Option<Rc<dyn PollingEndpoint>> {
        self.live.get(&sid).and_then(|live| live.polling.clone())
    }
}

impl Shard {
    /// Serves a session that starts on WebSocket (no sid: a new one) until
    /// it ends. `preamble`: the 101 response when the listener answered the
    /// upgrade, else empty (see `websocket::run`).
    pub async fn serve_websocket<H: EngineHandler>(
        self: &Rc<Self>,
        handler: H,
        settings: Settings,
        stream: TcpStream,
        already_read: Bytes,
        preamble: Vec<u8>,
    ) {
        let sid = self.open_session(&handler, "websocket", None);
        let traffic = &self.counters.traffic;
        let reason = websocket::run(stream, already_read, preamble, &sid.to_string(), &settings, traffic, &handler).await;
        // The connection has ended: nothing more to let go of.
        self.close_session(sid, &handler, &reason, async {}).await;
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
            shard.close_session(sid, &session.handler, &reason, session.released(&reason)).await;
        });
        open
    }

    /// The live polling session `sid` names on this shard.
    pub fn polling_session(&self, sid: &str) -> Option<Rc<dyn PollingEndpoint>> {
        self.sessions.borrow().polling(SocketId::parse(sid)?)
    }

    /// The one place a session opens: its sid, counted, its handler told,
    /// registered.
    fn open_session<H: EngineHandler>(
        &self,
        handler: &H,
        transport: &'static str,
        polling: Option<Rc<dyn PollingEndpoint>>,
    ) -> SocketId {
        let sid = SocketId::generate(self.index);
        self.counters.connection_opened();
        handler.on_open(transport);
        self.sessions.borrow_mut().insert(sid, polling);
        sid
    }

    /// The one place a session closes: counted, logged, its handler told;
    /// it leaves the registry once `released` (its transport letting go).
    async fn close_session<H: EngineHandler>(
        &self,
        sid: SocketId,
        handler: &H,
        reason: &CloseReason,
        released: impl Future<Output = ()>,
    ) {
        self.counters.connection_closed(reason.label());
        log_close(sid, reason);
        handler.on_close(reason);
        released.await;
        self.sessions.borrow_mut().remove(sid);
    }
}

fn log_close(sid: SocketId, reason: &CloseReason) {
    match reason {
        CloseReason::ProtocolError(detail) => {
            tracing::info!(session = %sid, reason = reason.label(), %detail, "connection closed")
        }
        CloseReason::PayloadTooLarge | CloseReason::SlowConsumer => {
            tracing::info!(session = %sid, reason = reason.label(), "connection closed")
        }
        _ => tracing::debug!(session = %sid, reason = reason.label(), "connection closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::engine::{AppSession, EngineApp, EngineSocket};

    fn settings() -> Settings {
        Settings {
            ping_interval: std::time::Duration::from_secs(25),
            ping_timeout: std::time::Duration::from_secs(20),
            connect_timeout: std::time::Duration::from_secs(45),
            max_payload: 1000,
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

    #[test]
    fn polling_sessions_are_found_by_sid_and_websocket_sessions_are_not() {
        let mut sessions = Sessions::default();
        let (websocket, polling) = (SocketId::generate(0), SocketId::generate(0));
        sessions.insert(websocket, None);
        let session = polling_session();
        sessions.insert(polling, Some(session.clone()));
        assert_eq!(sessions.live.len(), 2);
        assert!(sessions.polling(websocket).is_none());
        let found = sessions.polling(polling).expect("the polling session");
        assert!(std::ptr::addr_eq(Rc::as_ptr(&found), Rc::as_ptr(&session)));
        assert!(sessions.polling(SocketId::generate(0)).is_none());
        sessions.remove(polling);
        assert!(sessions.polling(polling).is_none());
        assert_eq!(sessions.live.len(), 1);
    }
}
