//! Ten husk pods started at once, as kubelet starts them: one husk-vmm each, nothing left.

use husk_tests::containerd::processes_with;
use husk_tests::cri::{self, husk_settings, pod_config, start};

use crate::HUSK;

pub fn ten_pods() {
    let mut settings = husk_settings();
    settings.memory_mib = 128;
    let (c, cri) = start(Some(&settings));
    let netns_before = cri::netns_names();
    let results: Vec<Result<(String, String), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let cri = cri.clone();
                let logs = c.base().join(format!("pods/p{i}"));
                s.spawn(move || {
                    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
                    let mut cfg = pod_config(&format!("p{i}"), &logs);
                    cri::start_pod_like_kubelet(&cri, &mut cfg, i, HUSK)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let pods: Vec<&(String, String)> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    if failures.is_empty() {
        let vmms: Vec<String> = processes_with(&format!("{}/", c.husk_state.display()))
            .into_iter()
            .filter(|(_, p)| p.contains("vm.json"))
            .map(|(_, p)| p)
            .collect();
        let without: Vec<&str> = pods
            .iter()
            .map(|(pod, _)| pod.as_str())
            .filter(|pod| !vmms.iter().any(|v| v.contains(pod)))
            .collect();
        let ends: Vec<String> = c
            .log_tail(4000)
            .lines()
            .filter(|l| l.contains("the sandbox VM ended") || l.contains("husk-vmm: vCPU"))
            .map(String::from)
            .collect();
        assert!(
            without.is_empty(),
            "one husk-vmm per pod: none for {without:?}; what the shims logged:\n{}",
            ends.join("\n")
        );
    }
    std::thread::scope(|s| {
        for (pod, _) in &pods {
            let cri = cri.clone();
            s.spawn(move || {
                if let Err(e) = cri.stop_and_remove_pod(pod) {
                    eprintln!("stop/remove {pod}: {e}");
                }
            });
        }
    });
    let clean = cri::wait_nothing_left(&c, &netns_before);
    assert!(
        failures.is_empty(),
        "pods failed: {failures:#?}\n{}",
        c.log_tail(80)
    );
    clean.unwrap();
}
