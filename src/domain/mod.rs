//! The pure domain: value types, commands, events and the rules between them. No I/O here.

pub mod audit;
pub mod message_id;
pub mod payload;
pub mod tenant;
