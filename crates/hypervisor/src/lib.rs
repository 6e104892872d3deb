//! The only crate that talks to KVM.
