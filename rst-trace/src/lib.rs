//! rst-trace: every TCP reset a Linux host sends or receives, with the process, socket and cause.
//!
//! One event's way through the code, in one direction:
//!
//! ```text
//! kernel programs (rst-trace-ebpf)    a hook fires; header + socket facts (+ raw tracepoint) -> ring buffer
//! run::Pipeline::take                 reads the ring buffer
//! decode::Decoder::decode             record -> decoded::Decoded: what the kernel said, with states and
//!                                     reasons as kernel_enums variants named by the running kernel (names)
//! stack::StackReader::read            with --stack: the Decoded's stack id -> symbolized frames
//! attribute::Attributor::push         pairs both ends on this host, holds received resets briefly
//!   cause::classify                   the cause, from the Decoded's variants and facts
//!   process_task, enrich, container   the process (socket owner first), cgroup, container
//!   container_names                   the container's and pod's names, from the runtime's state
//!   last_listener                     who last listened where a connection was refused, and
//!                                     whose listener holds a connection nobody accepted yet
//!   explain::event_line               the one line that says why
//!                                     -> event::Event, the printed shape
//! filter::Filter::keeps               --pid, --port, --comm, --cgroup, --container, --netns
//! output, summary, metrics, backlog,  the sinks
//!   pcap
//! ```
//!
//! Listener samples ([`listeners`]) enter at [`attribute::Attributor::listener_drop_event`] as a
//! `Decoded` built from kernel counters. At start-up, [`sources`] settles everything that differs
//! between kernels (which program serves each event, tracepoint layouts, offsets, names) and
//! [`loader`] hands its answers to the kernel programs.

pub mod attribute;
pub mod backlog;
pub mod bench_reference;
pub mod cause;
pub mod cli;
pub mod container;
pub mod container_names;
pub mod decode;
pub mod decoded;
pub mod enrich;
pub mod escape;
pub mod event;
pub mod explain;
pub mod filter;
pub mod fold;
pub mod generate;
pub mod kernel_btf;
pub mod kernel_enums;
pub mod last_listener;
pub mod layout;
pub mod listener_iter;
pub mod listeners;
pub mod loader;
pub mod metrics;
pub mod names;
pub mod output;
pub mod pcap;
pub mod privileges;
pub mod programs;
pub mod run;
pub mod sources;
pub mod stack;
pub mod summary;
pub mod tracefs;

/// Prints warnings from rst-trace and from the kernel programs (aya-log) to stderr.
pub struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            // Warnings can quote what other users named (paths, namespaces, kernel-side logs).
            let message = record.args().to_string();
            eprintln!(
                "rst-trace: {}: {}",
                record.level().as_str().to_lowercase(),
                escape::for_terminal(&message)
            );
        }
    }

    fn flush(&self) {}
}
