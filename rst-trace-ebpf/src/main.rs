//! The kernel side of rst-trace: small and boring on purpose.
//!
//! Each program filters early (the `--pid` filter), reserves a ring buffer record, fills the common
//! header, copies the tracepoint's raw record verbatim and submits. Decoding the record (whose layout
//! differs between kernels), naming reasons and states, and every decision that needs a table live in
//! userspace. A record that does not fit in the ring buffer is counted in `LOST`, never dropped
//! silently.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel as bpf_probe_read_kernel_value, generated::bpf_probe_read_kernel,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use rst_trace_common::{
    MAX_PID_FILTER, NO_OFFSET, NO_SK_STATE, RAW_LEN, RawTracepoint, RecordKind,
};

/// Every event, in order. Userspace sizes it at load time (`--ring-buffer-kib`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Records that found the ring buffer full, per CPU.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Process ids (tgids) kept when `FILTER_BY_PID` is set.
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PID_FILTER, 0);

/// Set by userspace when `--pid` is given.
#[unsafe(no_mangle)]
static FILTER_BY_PID: Global<u8> = Global::new(0);

// Offsets resolved by userspace at start-up: of `skaddr` in each tracepoint's record (from the
// tracefs format files) and of fields in `struct sock_common` (from BTF). NO_OFFSET skips a read.
#[unsafe(no_mangle)]
static SEND_RESET_SKADDR: Global<u32> = Global::new(NO_OFFSET);
#[unsafe(no_mangle)]
static RECEIVE_RESET_SKADDR: Global<u32> = Global::new(NO_OFFSET);
#[unsafe(no_mangle)]
static SK_STATE: Global<u32> = Global::new(NO_OFFSET);
#[unsafe(no_mangle)]
static SK_COOKIE: Global<u32> = Global::new(NO_OFFSET);

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    emit(&ctx, RecordKind::ResetSent, SEND_RESET_SKADDR.load());
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    emit(&ctx, RecordKind::ResetReceived, RECEIVE_RESET_SKADDR.load());
    0
}

#[inline(always)]
fn emit(ctx: &TracePointContext, kind: RecordKind, skaddr_offset: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if FILTER_BY_PID.load() != 0 {
        let tgid = (pid_tgid >> 32) as u32;
        // SAFETY: the value is only tested for presence.
        if unsafe { PIDS.get(tgid) }.is_none() {
            return;
        }
    }

    let Some(mut entry) = EVENTS.reserve::<RawTracepoint>(0) else {
        count_lost();
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, writable ring buffer slot of the right size; every
    // field is written before submit.
    unsafe {
        let header = &mut (*record).header;
        header.kind = kind as u8;
        header._pad = [0; 3];
        header.cpu = bpf_get_smp_processor_id();
        header.ktime_ns = bpf_ktime_get_ns();
        header.pid_tgid = pid_tgid;
        header.cgroup_id = bpf_get_current_cgroup_id();
        header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
        // The tracepoint record sits at the start of a per-CPU buffer of several KiB, so reading
        // RAW_LEN bytes never runs past it even when the record itself is shorter.
        let raw = &mut (*record).raw;
        if bpf_probe_read_kernel(raw.as_mut_ptr().cast(), RAW_LEN as u32, ctx.as_ptr().cast()) != 0
        {
            *raw = [0; RAW_LEN];
            warn!(ctx, "rst-trace: could not copy a tracepoint record");
        }
        (*record)._pad = [0; 7];
        (*record).sk_state = NO_SK_STATE;
        (*record).sk_cookie = 0;
        let sk = if skaddr_offset == NO_OFFSET {
            0
        } else {
            ctx.read_at::<u64>(skaddr_offset as usize).unwrap_or(0)
        };
        if sk != 0 {
            let state_offset = SK_STATE.load();
            if state_offset != NO_OFFSET {
                let state = (sk + u64::from(state_offset)) as *const u8;
                (*record).sk_state = bpf_probe_read_kernel_value(state).unwrap_or(NO_SK_STATE);
            }
            let cookie_offset = SK_COOKIE.load();
            if cookie_offset != NO_OFFSET {
                let cookie = (sk + u64::from(cookie_offset)) as *const u64;
                (*record).sk_cookie = bpf_probe_read_kernel_value(cookie).unwrap_or(0);
            }
        }
    }
    entry.submit(0);
}

#[inline(always)]
fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *lost += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
