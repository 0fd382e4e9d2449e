#![no_std]
// Lets rst-trace name this crate as a build dependency, so cargo rebuilds the eBPF object when it changes.
