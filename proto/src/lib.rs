//! Mast protos.
