//! One VM.
