//! Arbitrary server frames into the client side of the framing: no panics,
//! and every stream ends with exactly one trailers event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_wire::framing::{ClientConn, ClientEvent, Code, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default().with_max_message(4096).with_max_streams(4);
    let mut conn = ClientConn::new(limits);
    for _ in 0..4 {
        let _ = conn.start_call("/fuzz.Svc/Method", &[], None);
    }
    let mut ended = std::collections::HashSet::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let (packet, tail) = tail.split_at(n);
        rest = tail;
        let _ = conn.handle_incoming(packet);
        while let Some(event) = conn.poll_event() {
            if let ClientEvent::Trailers { stream, .. } = event {
                assert!(ended.insert(stream), "two trailers for stream {stream}");
            }
        }
        while conn.poll_transmit().is_some() {}
    }
    conn.close_all(Code::Unavailable, "closed");
    while let Some(event) = conn.poll_event() {
        if let ClientEvent::Trailers { stream, .. } = event {
            assert!(ended.insert(stream), "two trailers for stream {stream}");
        }
    }
    assert_eq!(conn.open_streams(), 0);
});
