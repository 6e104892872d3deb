//! thinvmd.
