//! Running containers and execs: exit codes as runc reports them, exec into a running
//! container (output, a lingering daemon, a tty exec), signals to one process or all, twenty
//! execs in parallel, and the process list.

use std::time::Duration;

use husk_tests::agent::{self, client, code_of, cref, ctx, pref, stdio, Output};
use ttrpc::Code;

use crate::common::{chrooted, fixture};

pub(crate) async fn run_reports_exit_codes_as_runc() {
    let Some(f) = fixture().await else { return };
    let none = stdio(false, false, false, false);
    let cases: [(&[&str], u32); 2] = [(&["true"], 0), (&["sh", "-c", "exit 3"], 3)];
    for (i, (args, want)) in cases.iter().enumerate() {
        let id = format!("exit{i}");
        let (status, _, _) = agent::run(&f.agent.socket, &f.c, &id, &f.spec(args), none.clone())
            .await
            .unwrap();
        assert_eq!(status, *want, "{args:?}");
    }
    // Killed by signal 9 → 137. (A container's init ignores signals sent from inside its own
    // pid namespace, under runc too, so the kill comes from outside.)
    f.sleeper("exit9").await;
    f.signal("exit9", "", libc::SIGKILL, false).await.unwrap();
    let w = f.c.wait_process(ctx(), &pref("exit9", "")).await.unwrap();
    assert_eq!(w.exit_status, 137);
    assert!(w.exited_at_ns > 0);
    f.remove("exit9", false).await;
    f.assert_clean();
}

pub(crate) async fn exec_into_a_running_container_and_signals() {
    let Some(f) = fixture().await else { return };
    f.sleeper("ex1").await;
    // exec with output and an exit code
    let s = stdio(false, true, true, false);
    f.exec(
        "ex1",
        "e1",
        &["sh", "-c", "echo in-container; hostname; exit 5"],
        s.clone(),
    )
    .await
    .unwrap();
    let out = Output::attach(&f.agent.socket, "ex1", "e1", &s)
        .await
        .unwrap();
    f.c.start_process(ctx(), &pref("ex1", "e1")).await.unwrap();
    let w = f.c.wait_process(ctx(), &pref("ex1", "e1")).await.unwrap();
    let (o, _) = out.collect().await;
    assert_eq!(w.exit_status, 5);
    assert_eq!(String::from_utf8_lossy(&o), "in-container\nhusk-test\n");
    f.c.delete_process(ctx(), &pref("ex1", "e1")).await.unwrap();

    // an exec leaving a daemon that holds its stdout: the exit is reported after the bounded
    // drain grace (3 s), with what was written before it
    let s2 = stdio(false, true, false, false);
    f.exec(
        "ex1",
        "bg",
        &["sh", "-c", "sleep 1000 & echo bg"],
        s2.clone(),
    )
    .await
    .unwrap();
    let out = Output::attach(&f.agent.socket, "ex1", "bg", &s2)
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    f.c.start_process(ctx(), &pref("ex1", "bg")).await.unwrap();
    let w = f.c.wait_process(ctx(), &pref("ex1", "bg")).await.unwrap();
    let (o, _) = out.collect().await;
    assert_eq!((w.exit_status, o.as_slice()), (0, &b"bg\n"[..]));
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());

    // a tty exec that exits at once: its output still arrives. An exec joins the container's
    // mount namespace with setns(2), which puts it at the namespace's root mount: where this
    // process tree is chrooted (the test host runs commands in `chroot /newroot`), that is not
    // the container's rootfs, and its /dev has no devpts for the pty. The guest test covers tty
    // execs; here they run only where the agent's root is its namespace's root.
    if chrooted() {
        loud!(
            "\n*** SKIPPED (tty exec): this test runs chrooted (/ differs from /proc/1/root), where \
             an exec's setns(2) cannot reach the container's rootfs; agent_guest covers it ***\n"
        );
    } else {
        let t = stdio(false, true, false, true);
        f.exec("ex1", "t1", &["echo", "tty-exec"], t.clone())
            .await
            .unwrap();
        let out = Output::attach(&f.agent.socket, "ex1", "t1", &t)
            .await
            .unwrap();
        f.c.start_process(ctx(), &pref("ex1", "t1")).await.unwrap();
        let w = f.c.wait_process(ctx(), &pref("ex1", "t1")).await.unwrap();
        let (o, _) = out.collect().await;
        assert_eq!(
            (w.exit_status, String::from_utf8_lossy(&o).as_ref()),
            (0, "tty-exec\r\n")
        );
    }

    // signal one process: an exec'd sleep gets SIGTERM → 143
    let none = stdio(false, false, false, false);
    f.exec("ex1", "e2", &["sleep", "1000"], none.clone())
        .await
        .unwrap();
    f.c.start_process(ctx(), &pref("ex1", "e2")).await.unwrap();
    f.signal("ex1", "e2", libc::SIGTERM, false).await.unwrap();
    let w = f.c.wait_process(ctx(), &pref("ex1", "e2")).await.unwrap();
    assert_eq!(w.exit_status, 143);
    // a signal to the exited exec is refused
    let e = f
        .signal("ex1", "e2", libc::SIGTERM, false)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(Code::FAILED_PRECONDITION), "{e:?}");

    // signal all: another exec and the init die of SIGKILL
    f.exec("ex1", "e3", &["sleep", "1000"], none).await.unwrap();
    f.c.start_process(ctx(), &pref("ex1", "e3")).await.unwrap();
    f.signal("ex1", "", libc::SIGKILL, true).await.unwrap();
    let wi = f.c.wait_process(ctx(), &pref("ex1", "")).await.unwrap();
    let we = f.c.wait_process(ctx(), &pref("ex1", "e3")).await.unwrap();
    assert_eq!((wi.exit_status, we.exit_status), (137, 137));
    let e = f.signal("ex1", "", libc::SIGKILL, false).await.unwrap_err();
    assert_eq!(code_of(&e), Some(Code::FAILED_PRECONDITION), "{e:?}");
    f.remove("ex1", false).await;
    f.assert_clean();
}

pub(crate) async fn twenty_parallel_execs_and_pids_listed() {
    let Some(f) = fixture().await else { return };
    f.sleeper("par1").await;
    let socket = f.agent.socket.clone();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let eid = format!("p{i}");
        let s = stdio(false, true, false, false);
        f.exec(
            "par1",
            &eid,
            &["sh", "-c", &format!("echo exec-{i}")],
            s.clone(),
        )
        .await
        .unwrap();
        let socket = socket.clone();
        tasks.push(tokio::spawn(async move {
            let c = client(&socket).await.unwrap();
            let out = Output::attach(&socket, "par1", &eid, &s).await.unwrap();
            c.start_process(ctx(), &pref("par1", &eid)).await.unwrap();
            let w = c.wait_process(ctx(), &pref("par1", &eid)).await.unwrap();
            let (o, _) = out.collect().await;
            (i, w.exit_status, String::from_utf8_lossy(&o).into_owned())
        }));
    }
    for t in tasks {
        let (i, status, out) = t.await.unwrap();
        assert_eq!((status, out), (0, format!("exec-{i}\n")));
    }
    // pids: the init and a running exec, named
    f.exec(
        "par1",
        "lister",
        &["sleep", "1000"],
        stdio(false, false, false, false),
    )
    .await
    .unwrap();
    let epid =
        f.c.start_process(ctx(), &pref("par1", "lister"))
            .await
            .unwrap()
            .pid;
    let list =
        f.c.list_processes(ctx(), &cref("par1"))
            .await
            .unwrap()
            .processes;
    assert!(
        list.iter().any(|p| p.pid == epid && p.exec_id == "lister"),
        "{list:?}"
    );
    assert!(list.len() >= 2, "{list:?}");
    f.remove("par1", true).await;
    f.assert_clean();
}
