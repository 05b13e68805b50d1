//! What the terminal sandbox adds to each command's start-up: `/usr/bin/true`
//! run directly, then through `dualtrust sandbox-exec` with no layers, each
//! layer alone, and all of them (what `terminal.execute` uses). Prints the
//! mean wall time per command over many runs; `cargo bench --bench sandbox`.

// A benchmark or test harness: a failed set-up step ends the run loudly.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use dualtrust::sandbox::{Layer, Limits, Plan};

const RUNS: u32 = 200;

fn mean_ms(mut run: impl FnMut()) -> f64 {
    for _ in 0..10 {
        run();
    }
    let started = Instant::now();
    for _ in 0..RUNS {
        run();
    }
    started.elapsed().as_secs_f64() * 1000.0 / f64::from(RUNS)
}

fn main() {
    let launcher = env!("CARGO_BIN_EXE_dualtrust");
    let root = tempfile::tempdir().expect("tempdir");
    let true_bin = PathBuf::from("/usr/bin/true");
    let mut execute = vec![true_bin.clone()];
    execute.extend(dualtrust::sandbox::interpreters(&true_bin));
    let plan = |layers: Vec<Layer>| Plan {
        limits: Limits {
            cpu_s: 10,
            memory_bytes: 1 << 31,
            file_bytes: 1 << 28,
            open_files: 256,
        },
        cgroup: None,
        layers,
        network: false,
        read_only: [
            "/usr",
            "/bin",
            "/lib",
            "/lib64",
            "/etc/ld.so.cache",
            "/etc/passwd",
            "/etc/group",
        ]
        .map(PathBuf::from)
        .into_iter()
        .filter(|p| p.exists())
        .collect(),
        writable: vec![root.path().to_path_buf()],
        pinned: Vec::new(),
        protected: Vec::new(),
        execute: execute.clone(),
        tmp_bytes: 1 << 20,
        cwd: root.path().to_path_buf(),
        program: true_bin.clone(),
        argv0: "true".into(),
        args: Vec::new(),
    };
    let direct = mean_ms(|| {
        let status = Command::new(&true_bin).status().expect("true");
        assert!(status.success());
    });
    println!("direct /usr/bin/true: {direct:.2} ms per command");
    let mut cases: Vec<(String, Vec<Layer>)> = vec![("no layers".into(), Vec::new())];
    cases.extend(Layer::ALL.iter().map(|l| (l.name().to_string(), vec![*l])));
    cases.push(("all layers (terminal.execute)".into(), Layer::ALL.to_vec()));
    for (name, layers) in cases {
        let json = serde_json::to_string(&plan(layers)).expect("plan");
        let ms = mean_ms(|| {
            let status = Command::new(launcher)
                .args(["sandbox-exec", "--plan", &json])
                .status()
                .expect("launcher");
            assert!(status.success(), "{name}");
        });
        println!(
            "sandbox-exec, {name}: {ms:.2} ms per command (+{:.2} ms over direct)",
            ms - direct
        );
    }
}
