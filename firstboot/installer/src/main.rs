//! `ciab-installer`: the USB installer's init. See the library (`src/lib.rs`).

fn main() {
    ciab_installer::main()
}
