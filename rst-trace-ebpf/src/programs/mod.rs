//! The programs, one file per hook family, as the loader attaches them by name: resets sent and
//! received ([`reset`]), queue drops ([`drop`]), listener queues of every namespace
//! ([`listeners`], an iterator), the socket-owner bookkeeping ([`owner`]) and
//! the benchmark's reference program ([`bench`]). Each reads its hook's arguments and hands
//! them to [`crate::record`] or the owner maps; the shared reads are in the crate's other
//! modules.

mod bench;
mod drop;
mod listeners;
mod owner;
mod reset;
