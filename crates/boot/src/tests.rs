//! Tests of load().
