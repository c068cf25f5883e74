//! The WebSocket side of an upgrade from long-polling (`2probe` → `3probe`,
//! then `5`), as a plain state machine: it is told each packet and the time,
//! and says what to do. No clock and no socket; `websocket::run_upgrade` is
//! the shell that reads, writes and waits.

use std::time::{Duration, Instant};

use super::CloseReason;
use crate::protocol::engineio::{self, PacketError};

/// What the upgrading connection must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeStep {
    /// Answer `3probe` on the WebSocket, and release the client's pending
    /// poll with a noop (it pauses polling before it upgrades).
    AnswerProbe,
    /// The client switched: the session now runs on this WebSocket.
    Upgraded,
    /// The upgrade failed; end this connection.
    Fail(CloseReason),
}

/// An upgrade in progress: it must complete before its deadline.
#[derive(Debug, Clone)]
pub struct UpgradeProbe {
    deadline: Instant,
}

impl UpgradeProbe {
    /// An upgrade whose WebSocket opened at `now`; it has `timeout` to finish.
    pub fn new(now: Instant, timeout: Duration) -> UpgradeProbe {
        UpgradeProbe { deadline: now + timeout }
    }

    /// When the upgrade fails if it is not done.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A text packet from the client arrived at `now`.
    pub fn on_packet(&mut self, now: Instant, packet: Result<engineio::Packet<'_>, PacketError>) -> ProbeStep {
        if now >= self.deadline {
            return self.on_deadline();
        }
        match packet {
            Ok(engineio::Packet::Ping("probe")) => ProbeStep::AnswerProbe,
            Ok(engineio::Packet::Upgrade) => ProbeStep::Upgraded,
            _ => ProbeStep::Fail(CloseReason::ProtocolError("expected 2probe or 5 during the upgrade".into())),
        }
    }

    /// The deadline passed with the upgrade unfinished.
    pub fn on_deadline(&self) -> ProbeStep {
        ProbeStep::Fail(CloseReason::ProtocolError("upgrade not completed in time".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(200);

    #[test]
    fn probe_then_upgrade() {
        let t0 = Instant::now();
        let mut probe = UpgradeProbe::new(t0, TIMEOUT);
        assert_eq!(probe.deadline(), t0 + TIMEOUT);
        assert_eq!(probe.on_packet(t0, engineio::decode("2probe")), ProbeStep::AnswerProbe);
        assert_eq!(probe.on_packet(t0 + Duration::from_millis(199), engineio::decode("5")), ProbeStep::Upgraded);
    }

    #[test]
    fn anything_else_or_too_late_fails() {
        let t0 = Instant::now();
        let mut probe = UpgradeProbe::new(t0, TIMEOUT);
        for wrong in ["2", "2other", "4hello", "3probe", "1", ""] {
            assert!(matches!(probe.on_packet(t0, engineio::decode(wrong)), ProbeStep::Fail(_)), "{wrong:?}");
        }
        assert_eq!(
            probe.on_packet(t0 + TIMEOUT, engineio::decode("5")),
            ProbeStep::Fail(CloseReason::ProtocolError("upgrade not completed in time".into()))
        );
    }
}
