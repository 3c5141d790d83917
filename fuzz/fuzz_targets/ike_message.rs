//! The IKEv2 message decoder (RFC 7296 section 3) on arbitrary bytes: never a panic, and a
//! message that parses encodes to bytes that parse to the same message.
#![no_main]
use ike::msg::{self, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let again = Message::parse(&m.encode()).expect("our own encoding parses");
        assert_eq!(again.payloads, m.payloads);
    }
    if let Some((&first, rest)) = data.split_first() {
        let _ = msg::parse_chain(first, rest);
    }
    let _ = msg::Header::parse(data);
});
