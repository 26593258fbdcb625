//! `ciab-installer`: the USB installer's init. See `ciab_firstboot::installer`.

fn main() {
    ciab_firstboot::installer::main()
}
