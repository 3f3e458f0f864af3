//! Weight quantisation for QLoRA: the bitsandbytes NF4 codec ([`nf4`]).

pub mod nf4;

pub use nf4::{Nf4Options, Nf4Weight};
