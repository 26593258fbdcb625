//! Writers of the file formats the stages and the guest images produce, one
//! module per format, independent of the spec and the cache: each takes its
//! inputs and writes its bytes, the same inputs giving the same bytes.

pub mod bios_disk;
pub mod bmap;
pub mod cpio;
pub mod ext4;
pub mod gpt;
pub mod grub_bios;
pub mod iso;
pub mod qcow2;
pub mod spdx;
pub mod uki;
