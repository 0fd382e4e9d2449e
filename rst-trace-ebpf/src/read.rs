//! How the programs read kernel memory: probe reads (`bpf_probe_read_kernel`) for classic
//! tracepoints and probes, plain loads for BTF tracepoints, chosen by the [`Access`] type
//! parameter so one body of code serves both; and the word-wise zeroing and copying that keep
//! the BPF backend from emitting its byte-at-a-time memset and memcpy.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated},
    programs::TracePointContext,
};
use rst_trace_common::NO_OFFSET;

/// How kernel memory is read. Classic tracepoints and probes see pointers as plain numbers, so
/// every read is a `bpf_probe_read_kernel` call. BTF tracepoints get typed pointers: the verifier
/// checks each load against the kernel's BTF (offsets from the read-only globals are constants
/// to it) and turns it into a fault-safe load, no call.
pub trait Access {
    const DIRECT: bool;
}

/// Every read is a `bpf_probe_read_kernel` call.
pub struct Probe;
impl Access for Probe {
    const DIRECT: bool = false;
}

/// Every read is a plain load the verifier checks against BTF.
pub struct Direct;
impl Access for Direct {
    const DIRECT: bool = true;
}

/// A struct member at a BTF offset, read the way `A` reads.
#[inline(always)]
pub fn load<A: Access, T: Copy>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == NO_OFFSET {
        return None;
    }
    let address = base + u64::from(offset);
    if A::DIRECT {
        // SAFETY: a typed kernel pointer (BTF tracepoint argument or a member read from one);
        // the verifier checks the access and makes the load fault-safe.
        Some(unsafe { core::ptr::read_volatile(address as *const T) })
    } else {
        read(address)
    }
}

/// A field of the tracepoint record at an offset from tracefs.
#[inline(always)]
pub fn ctx_field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == NO_OFFSET {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// A kernel struct member at an offset from BTF.
#[inline(always)]
pub fn field<T: Copy>(base: u64, offset: u32) -> Option<T> {
    load::<Probe, T>(base, offset)
}

#[inline(always)]
pub fn read<T>(address: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}

/// Reads `len` (at most 16) bytes of a struct member into `out`.
#[inline(always)]
pub fn read_into(base: u64, offset: u32, out: &mut [u8; 16], len: u32) -> bool {
    if base == 0 || offset == NO_OFFSET || len > 16 {
        return false;
    }
    // SAFETY: `out` has room for 16 bytes.
    unsafe { copy_in(out.as_mut_ptr(), len as usize, base + u64::from(offset)) }
}

/// Copies `len` bytes of kernel memory at `address` into `dst` with one probe read; true when
/// all could be read (the helper zeroes `dst` otherwise).
///
/// # Safety
/// `dst` must have room for `len` bytes.
#[inline(always)]
pub unsafe fn copy_in(dst: *mut u8, len: usize, address: u64) -> bool {
    // SAFETY: bpf_probe_read_kernel checks the source; the caller vouches for `dst`.
    unsafe {
        generated::bpf_probe_read_kernel(
            dst.cast(),
            len as u32,
            address as *const core::ffi::c_void,
        ) == 0
    }
}

/// Zeroes a record part with 8-byte stores. Plain assignment of a default value compiles to a
/// call of the byte-at-a-time memset that the BPF target links in, several hundred instructions
/// per record.
///
/// # Safety
/// `ptr` must be valid for writes and 8-byte aligned.
#[inline(always)]
pub unsafe fn zero<T>(ptr: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() <= 8) };
    let words = ptr.cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: within `*ptr`, per the caller.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// Copies a map value into a record with 8-byte loads and stores, for the same reason as `zero`.
///
/// # Safety
/// Both pointers must be valid, 8-byte aligned and not overlap.
#[inline(always)]
pub unsafe fn copy<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() == 8) };
    let (dst, src) = (dst.cast::<u64>(), src.cast::<u64>());
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: within both values, per the caller.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
}
