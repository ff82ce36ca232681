# husk's stable entry points; README.md documents each. Scripts under scripts/ do the work.
SHELL := /bin/bash
CARGO ?= cargo
GUEST_TARGET := x86_64-unknown-linux-gnu
# The host binaries' target, named for the one built static (husk-vmm, below).
HOST_TARGET := x86_64-unknown-linux-gnu
GUEST_BIN := target/$(GUEST_TARGET)/guest
IMAGES := target/images
HOSTBIN := target/release
BENCH ?=
PREFIX ?= /usr/local
CMD ?=
TIMEOUT ?= 600
# cargo-deny for `make lint`, built once from crates.io into the cache outside the work tree
# (keyed by its version; about two minutes on two cores).
HUSK_CACHE_DIR ?= /var/cache/husk
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := $(HUSK_CACHE_DIR)/tools/cargo-deny-$(CARGO_DENY_VERSION)/bin/cargo-deny
# The command reaches the recipe through the environment, so quotes, pipes and ';' in it survive.
export CMD

.PHONY: help deps build guest agent kernel image testhost lint deny unit e2e test bench demo install clean fuzz

help:
	@echo "make demo      set up everything and run a container in a husk VM through containerd (the main job)"
	@echo "make test      everything CI runs: lint, unit tests, end-to-end tests"
	@echo "make e2e       end-to-end tests only (in the nested test host where needed)"
	@echo "make kernel    build (or find cached) the guest kernel; prints the vmlinux path"
	@echo "make image     build the guest images; prints their paths and sizes"
	@echo "make testhost CMD='...'   run a command with hardware KVM (natively or nested)"
	@echo "make lint      rustfmt, clippy and cargo-deny (licenses, bans, sources: deny.toml)"
	@echo "make bench [BENCH=name]   benchmarks; results in target/bench/results.jsonl"
	@echo "make fuzz [FUZZ_SECONDS=60]   fuzz husk-vmm's guest-facing parsers (nightly cargo-fuzz)"
	@echo "make install PREFIX=/usr/local   install husk and register it with containerd (husk install)"

deps:
	@scripts/install-deps.sh

# husk-vmm is linked statically (glibc's static-pie): one process per pod, started on every pod's
# critical path, and a static binary skips the dynamic loader (in the nested test host an exec
# of it took 53 ms against 83 ms linked dynamically; docs/performance.md). It is built for the
# explicit host target, so that crt-static reaches only it and not the build scripts and
# proc-macros, and linked into target/release where everything looks for it.
build: deps
	$(CARGO) build --release --workspace --bins --exclude husk-hypervisor
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target $(HOST_TARGET) -p husk-hypervisor --bin husk-vmm
	@ln -f target/$(HOST_TARGET)/release/husk-vmm $(HOSTBIN)/husk-vmm

# Guest binaries are static: the guest has no libc.
guest: deps
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile guest --target $(GUEST_TARGET) -p husk-test-init
	$(MAKE) --no-print-directory agent

# husk-agent, static (it is the guest's /init; host-mode tests run the same binary). libseccomp
# links statically from Debian's libseccomp-dev.
agent: deps
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile guest --target $(GUEST_TARGET) -p husk-agent

kernel: deps
	@guest-kernel/build.sh

image: build guest
	@mkdir -p $(IMAGES)
	@$(HOSTBIN)/husk-image --init $(GUEST_BIN)/husk-test-init --output $(IMAGES)/test-init.cpio.gz
	@$(HOSTBIN)/husk-image --init $(GUEST_BIN)/husk-agent --output $(IMAGES)/husk-initrd.img
	@$(HOSTBIN)/husk-image --init $(GUEST_BIN)/husk-agent --busybox-rootfs /opt/husk/rootfs --output $(IMAGES)/husk-agent-test.img

testhost: build
	@$(HOSTBIN)/husk-testhost --timeout $(TIMEOUT) -- "$$CMD"

lint: deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Errors only: the duplicate versions the shim's dependencies bring are warnings (deny.toml);
# `$(CARGO_DENY) check` prints them. Advisories need GitHub's advisory database, which the
# development machines cannot reach.
deny: $(CARGO_DENY)
	$(CARGO_DENY) --log-level error check licenses bans sources

$(CARGO_DENY):
	$(CARGO) install cargo-deny@$(CARGO_DENY_VERSION) --locked --no-default-features \
		--root $(HUSK_CACHE_DIR)/tools/cargo-deny-$(CARGO_DENY_VERSION)

# The root-only unit tests (`#[ignore]`d: they create network namespaces) run when make runs as
# root, as CI does; otherwise they are announced as not run.
unit: deps kernel
	$(CARGO) test --workspace
	@if [ "$$(id -u)" = 0 ]; then $(CARGO) test -p husk-shim --lib -- --ignored && \
	  $(CARGO) test -p husk-hypervisor --lib -- --ignored; \
	else echo "*** NOT RUN: the root-only unit tests (husk-shim network, mounts and PID namespaces; husk-vmm's jail): run 'make unit' as root ***" >&2; fi

e2e: build image kernel
	@scripts/e2e.sh

test: lint unit e2e

bench: build image kernel
	@scripts/bench.sh $(BENCH)

demo: build image kernel
	@scripts/demo.sh

# Each fuzz target runs FUZZ_SECONDS; crashes land in hypervisor/fuzz/artifacts/<target>/.
fuzz:
	@FUZZ_SECONDS="$(FUZZ_SECONDS)" scripts/fuzz.sh

# `husk install` (cli/): copies the artifacts under PREFIX, writes /etc/husk/config.toml if
# absent, registers the `husk` handler in /etc/containerd/config.toml, links the shim into
# /usr/local/bin; INSTALL_ARGS adds flags (--restart-containerd, --containerd-config PATH, ...).
# `$(PREFIX)/bin/husk uninstall --prefix $(PREFIX)` undoes it.
install: build image kernel
	@HUSK_KERNEL=$$(guest-kernel/build.sh) $(HOSTBIN)/husk install --prefix "$(PREFIX)" $(INSTALL_ARGS)

clean:
	$(CARGO) clean
