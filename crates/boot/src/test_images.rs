//! Test kernel images.
