//! Standalone fault proxy for benchmarks and shell tests:
//! `faultproxy LISTEN UPSTREAM` (e.g. `faultproxy 127.0.0.1:5601 127.0.0.1:5600`), controlled over HTTP.

#[path = "proxy.rs"]
mod proxy;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: faultproxy LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let upstream = match upstream.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("faultproxy: upstream {upstream}: {e}");
            std::process::exit(2);
        }
    };
    match proxy::Proxy::start(listen, upstream) {
        Ok(p) => {
            eprintln!("faultproxy: listening on {}", p.addr);
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("faultproxy: {listen}: {e}");
            std::process::exit(1);
        }
    }
}
