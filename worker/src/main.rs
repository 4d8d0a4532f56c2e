//! `ih-worker` binary.

fn main() {}
