//! A policy that misbehaves on demand. The request's `mode` tag (the
//! `x-switchyard-mode` header), else the requested model, picks the
//! behaviour; anything else routes to the first backend with the label
//! `fixture=hostile`.
//!
//! Config: `"refuse"` anywhere in it makes `init` refuse; `"loop-in-init"`
//! makes `init` loop forever; `"noisy"` makes `init` print to stdout and
//! stderr.

use switchyard_policy::prelude::*;
use switchyard_policy::{Route, Target};

struct Hostile;

impl Policy for Hostile {
    fn init(config: &str, _backends: &[Backend]) -> Result<Self, String> {
        if config.contains("loop-in-init") {
            spin_forever();
        }
        if config.contains("noisy") {
            println!("hostile init on stdout");
            eprintln!("hostile init on stderr");
        }
        if config.contains("refuse") {
            return Err(format!("this policy refuses the config {config}"));
        }
        Ok(Hostile)
    }

    fn route(&self, request: &Request, backends: &[Backend]) -> Decision {
        match request.tag("mode").unwrap_or(request.model.as_str()) {
            "loop" => spin_forever(),
            // Waits in the host, where fuel is not spent: short sleeps
            // forever, or one sleep longer than any backstop.
            "sleep" => loop {
                std::thread::sleep(std::time::Duration::from_millis(20));
            },
            "sleep-long" => {
                std::thread::sleep(std::time::Duration::from_secs(600));
                route(backends.first()).into()
            }
            "bomb" => {
                // Grows memory without touching it, so the cap (not the fuel) stops it.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(Vec::with_capacity(1 << 20));
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("the hostile policy panics on purpose"),
            "abort" => std::process::abort(),
            "stderr" => {
                eprintln!("an earlier call's stderr line");
                route(backends.first()).label("fixture", "hostile").into()
            }
            "print" => {
                println!("hostile route on stdout");
                eprintln!("hostile route on stderr");
                route(backends.first()).label("fixture", "hostile").into()
            }
            "print-trap" => {
                println!("hostile prints before it traps");
                std::process::abort()
            }
            "unknown" => targets(vec!["no-such-backend".into()]),
            "huge" => targets((0..1_000).map(|i| format!("backend-{i}")).collect()),
            "empty" => targets(vec![]),
            "bad-status" => reject(200, "a rejection that says OK"),
            "log-spam" => {
                for i in 0..1000 {
                    log(LogLevel::Info, &format!("log line {i}"));
                    println!("stdout line {i}");
                }
                route(backends.first()).label("fixture", "hostile").into()
            }
            "sandbox" => {
                // What a guest can reach of the host: the test expects nothing.
                let env = std::env::vars().count().to_string();
                let args = std::env::args().count().to_string();
                let root = if std::fs::read_dir("/").is_ok() { "readable" } else { "denied" };
                let cwd = if std::fs::read_dir(".").is_ok() { "readable" } else { "denied" };
                route(backends.first())
                    .label("fixture", "hostile")
                    .label("env", &env)
                    .label("args", &args)
                    .label("root", root)
                    .label("cwd", cwd)
                    .into()
            }
            _ => route(backends.first()).label("fixture", "hostile").into(),
        }
    }
}

fn spin_forever() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn targets(names: Vec<String>) -> Decision {
    Decision::Route(Route { targets: names.into_iter().map(|backend| Target { backend, model: None }).collect(), labels: vec![] })
}

switchyard_policy::export_policy!(Hostile);
