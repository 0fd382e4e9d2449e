//! rst-trace: every TCP reset a Linux host sends or receives, with the process, socket and cause.
//!
//! Data flows one way: kernel programs (`rst-trace-ebpf`) -> ring buffer -> [`decode`] ->
//! [`attribute`] (process, container, [`cause`]) -> [`filter`] -> sinks ([`output`]). [`sources`] settles, once at start-up, everything that
//! differs between kernels; [`loader`] hands its answers to the kernel programs.

pub mod attribute;
pub mod backlog;
pub mod bench_reference;
pub mod cause;
pub mod cli;
pub mod container;
pub mod decode;
pub mod enrich;
pub mod escape;
pub mod event;
pub mod filter;
pub mod generate;
pub mod kernel_btf;
pub mod layout;
pub mod listeners;
pub mod loader;
pub mod metrics;
pub mod names;
pub mod output;
pub mod privileges;
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
