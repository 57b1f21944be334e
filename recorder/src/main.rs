//! `fanout-recorder`: see the crate documentation.

fn main() {
    eprintln!("fanout-recorder: not built yet (issue 10)");
    std::process::exit(2);
}
