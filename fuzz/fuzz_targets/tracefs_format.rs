//! tracefs format files -> `EventFormat::parse`, the layouts and name tables built from them, and
//! a decoder built from nothing but that one file (as send, receive, set_state and kfree_skb
//! format at once) decoding a record of every kind. A kernel with an unexpected layout must be
//! refused or decoded as far as it goes, never crash rst-trace at start-up or on its first event.
#![no_main]

use std::mem::size_of;

use libfuzzer_sys::fuzz_target;
use rst_trace::{
    decode::{Decoder, WallClock},
    layout::ResetLayout,
    names::KernelNames,
    tracefs::EventFormat,
};
use rst_trace_common::RawTracepoint;

/// Record kinds tried: every kind the programs write, and a few they do not.
const KINDS: u8 = 8;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // read_format reads the file as UTF-8 and fails on anything else.
        return;
    };
    let Ok(format) = EventFormat::parse(text) else {
        return;
    };
    for field in &format.fields {
        std::hint::black_box(field.end());
    }
    for field in ["reason", "newstate", "state", "oldstate"] {
        std::hint::black_box(format.symbolic_names(field));
    }
    let mut names = KernelNames::from_kernel(Some(&format), Some(&format), None);
    names.add_drop_reasons(Some(&format), None);
    std::hint::black_box(&names);
    if let Ok(layout) = ResetLayout::from_format(&format) {
        std::hint::black_box(layout.decode(&[0xa5; rst_trace_common::RAW_LEN]));
    }
    let decoder = Decoder::from_formats(
        Some(&format),
        Some(&format),
        Some(&format),
        Some(&format),
        WallClock::with_offset(0),
    );
    // Records filled with the input's bytes, so that fields land on chosen values.
    let mut record: Vec<u8> = data
        .iter()
        .copied()
        .cycle()
        .take(size_of::<RawTracepoint>())
        .collect();
    record.resize(size_of::<RawTracepoint>(), 0xff);
    for kind in 0..=KINDS {
        record[0] = kind;
        if let Ok(decoded) = decoder.decode(&record) {
            std::hint::black_box(format!("{decoded:?}"));
        }
    }
});
