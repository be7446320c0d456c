//! Model file formats: parsing headers into the regions of a file (header, one per tensor).
//! Every parser treats its input as hostile: sizes are checked against the file before
//! anything is allocated, and a malformed header is an error, never a panic.

pub mod safetensors;
