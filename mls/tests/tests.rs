//! Integration tests of the group key layer. The test plays the delivery service (and,
//! in `ghost`, a malicious one): it carries the bytes between devices the way the server
//! would, so every property here holds whatever the server does.

mod common;
mod ghost;
mod groups;
mod malformed;
mod seeds;
mod transparency;
