//! Loading a Linux kernel into guest memory.
