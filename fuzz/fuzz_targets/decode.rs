//! Ring buffer records -> `Decoder::decode`, with the decoders of the two kernels whose tracefs
//! formats were captured (6.18: sockaddr layout and reasons; 6.1: split layout, no reason). A
//! record is whatever the kernel programs wrote; a bug in them, or a layout rst-trace misread,
//! must give an error or a wrong event, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rst_trace::{
    decode::{Decoder, WallClock},
    tracefs::EventFormat,
};

/// The captured format files of one kernel, as `tests/fixtures/tracefs/<kernel>/` holds them.
macro_rules! fixtures {
    ($kernel:literal) => {
        [
            include_str!(concat!(
                "../../rst-trace/tests/fixtures/tracefs/",
                $kernel,
                "/tcp__tcp_send_reset.format"
            )),
            include_str!(concat!(
                "../../rst-trace/tests/fixtures/tracefs/",
                $kernel,
                "/tcp__tcp_receive_reset.format"
            )),
            include_str!(concat!(
                "../../rst-trace/tests/fixtures/tracefs/",
                $kernel,
                "/sock__inet_sock_set_state.format"
            )),
            include_str!(concat!(
                "../../rst-trace/tests/fixtures/tracefs/",
                $kernel,
                "/skb__kfree_skb.format"
            )),
        ]
    };
}

fn decoder(files: [&str; 4]) -> Decoder {
    let [send, receive, set_state, kfree_skb] = files.map(|text| {
        EventFormat::parse(text).expect("the captured fixtures parse (unit tests check it)")
    });
    Decoder::from_formats(
        Some(&send),
        Some(&receive),
        Some(&set_state),
        Some(&kfree_skb),
        WallClock::with_offset(1_763_776_800_000_000_000),
    )
}

thread_local! {
    static DECODERS: [Decoder; 2] = [decoder(fixtures!("6.18")), decoder(fixtures!("6.1"))];
}

fuzz_target!(|record: &[u8]| {
    DECODERS.with(|decoders| {
        for decoder in decoders {
            if let Ok(decoded) = decoder.decode(record) {
                // Formatting walks every field the later stages read.
                std::hint::black_box(format!("{decoded:?}"));
            }
        }
    });
});
