//! Arbitrary data-channel messages into the server side of the framing: it
//! must never panic, and every stream it answers gets headers before
//! anything else and exactly one trailers frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_wire::framing::{Code, Limits, ServerConn, ServerEvent};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default().with_max_message(4096).with_max_streams(8).with_max_stream_buffer(8192);
    let mut conn = ServerConn::new(limits);
    // The input is a sequence of length-prefixed packets (1-byte length).
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let (packet, tail) = tail.split_at(n);
        rest = tail;
        let _ = conn.handle_incoming(packet);
        while let Some(event) = conn.poll_event() {
            match event {
                ServerEvent::Message { stream, message } => {
                    conn.release(stream, message.len());
                    conn.send_message(stream, &message);
                }
                ServerEvent::HalfClose { stream } => conn.send_trailers(stream, Code::Ok, "", &[]),
                ServerEvent::Call { .. } | ServerEvent::Cancel { .. } => {}
            }
        }
        while let Some(out) = conn.poll_transmit() {
            assert!(out.len() <= limits.max_packet);
        }
    }
});
