//! `ciab-core`: what the builder, the installer and the box all use, kept in
//! one small crate so that they can never disagree about it: the on-disk
//! contract between the builder and the box (`contract`), the engine that
//! writes a signed image to a disk (`flash`), block devices, the one command
//! wrapper (`exec`), sparse files, atomic writes, where a key is in a TOML
//! text (`toml_position`) and the one poll-until-ready loop (`wait`). It
//! knows nothing of clouds, TLS or FAT. The README's "Layout" section says
//! who uses what.

pub mod atomic;
pub mod blockdev;
pub mod contract;
pub mod exec;
pub mod flash;
pub mod sparse;
pub mod toml_position;
pub mod wait;
