//! Unit tests of JWT client keys.
