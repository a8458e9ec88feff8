//! Mast pilot.
