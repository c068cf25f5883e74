//! What an idle WebSocket connection costs is mostly one heap block: the
//! future of `Shard::serve_websocket` (boxed by `engine_http`). mimalloc
//! serves it from size classes 256 bytes apart here (1,280, 1,536, …), so a
//! few bytes over a class boundary cost a whole step per connection: this
//! keeps it inside the 1,280-byte class (README "Capacity": 4 KiB per idle
//! connection). If a change must grow it past that, say so there.

use std::rc::Rc;
use std::sync::Arc;

use crate::app::session::EngineSession;
use crate::limits::ConnectionSlot;
use crate::shard::Shard;
use crate::transport::engine::Settings;
use crate::transport::websocket::Opening;

fn returned_size<A, B, C, D, E, R>(_: fn(A, B, C, D, E) -> R) -> usize {
    std::mem::size_of::<R>()
}

#[test]
fn an_idle_websocket_session_fits_the_1280_byte_size_class() {
    let serve: fn(Rc<Shard>, EngineSession, Arc<Settings>, Box<Opening>, ConnectionSlot) -> _ =
        Shard::serve_websocket::<EngineSession, ConnectionSlot>;
    let size = returned_size(serve);
    assert!(size <= 1280, "a WebSocket session's future is {size} bytes, over the 1,280-byte size class");
}
