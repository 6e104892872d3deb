//! The nested testbed.
