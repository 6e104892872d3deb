//! Storage benchmark without the rest of thinvm: `cargo run --release -p storage --example
//! bench -- [DIR] [SIZE_MIB] [ROUNDS]` (the same code as `thinvm image bench`).

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "target/bench-storage".into());
    let size_mib: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let cfg = storage::bench::BenchConfig {
        dir: dir.into(),
        size: size_mib << 20,
        rounds,
        qemu: true,
    };
    match storage::bench::run(&cfg) {
        Ok(r) => println!("{r}"),
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    }
}
