//! Confide signaling: who may join which consultation, the waiting room, and the
//! relay of opaque end-to-end encrypted material.
//!
//! Layering (see docs/architecture.md):
//! - sans-IO core, no tokio/axum/sqlx: [`proto`], [`room`], [`auth`], [`crypto`],
//!   [`model`], [`password`] (the rules for a new password), [`policy`] (who may act on an appointment), [`media`] (the trait only), [`audit`] (types only), [`mls_frame`]
//!   (the public MLS framing the delivery service orders commits by), [`blind_index`]
//!   (the search terms of a patient's name and date of birth);
//! - edge: [`store`] (sqlx), [`http`] (axum router, WebSocket handler), [`p2p`]
//!   (the stand-in media plane used until the SFU is wired).
//!
//! Every core type follows one loop shape: one `handle_*` call, then drain
//! `poll_output()` until it returns `None`. The edge passes `now` in.

pub mod audit;
pub mod auth;
pub mod blind_index;
pub mod crypto;
pub mod http;
pub mod media;
pub mod mls_frame;
pub mod ops;
pub mod p2p;
pub mod password;
pub mod policy;
pub mod room;
pub mod settings;
pub mod store;

// The protocol and its ids live in `confide-proto` (clients use it without this crate);
// re-exported under the old paths so `crate::proto::...` and `crate::model::...` stay.
pub use confide_proto as proto;
pub use confide_proto::model;
