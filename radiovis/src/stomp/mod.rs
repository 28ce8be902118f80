//! STOMP 1.0/1.1/1.2 frames and their incremental codec.

pub mod codec;
pub mod frame;

pub use codec::{CodecError, Decoder, Limits};
pub use frame::{v10_safe, Command, Frame, Version};
